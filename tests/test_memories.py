"""Memories declared free of read collisions (perturbo.hdl.memories.no_read_collision).

The simulation reports the first read of a word in the cycle it is written, on such a
memory only; the iCE40 board build marks exactly those memories' clocked read ports as
returning an undefined word then (perturbo.boards.build.undefine_read_collisions).  That
the accelerator's memories never collide is what the co-simulations check
(sim/cosim.py fails on the report).
"""

from __future__ import annotations

import re

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, signed
from amaranth.sim import Simulator

from perturbo.hdl.memories import COLLISION_MESSAGE, NO_READ_COLLISION, MemoryBlock

pytest.importorskip("amaranth_boards")

from perturbo.boards.build import undefine_read_collisions  # noqa: E402


def _run(dut: MemoryBlock, accesses: list[tuple[int, int, int, int]]) -> None:
    """Drive ``(raddr, ren, waddr, we)`` one cycle each."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx: object) -> None:
        port = dut.port
        for raddr, ren, waddr, we in accesses:
            ctx.set(port.raddr, raddr)
            ctx.set(port.ren, ren)
            ctx.set(port.waddr, waddr)
            ctx.set(port.wdata, waddr + 1)
            ctx.set(port.we, we)
            await ctx.tick()
        await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


def _reports(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(COLLISION_MESSAGE)]


def test_collision_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A read of the word written in that cycle is reported, with the memory, port and word,
    once however many follow."""
    dut = MemoryBlock(8, 8, no_collision="test_mem")
    _run(dut, [(1, 1, 2, 1), (3, 1, 3, 1), (4, 1, 4, 1), (5, 1, 5, 0)])
    reports = _reports(capsys)
    assert len(reports) == 1
    assert reports[0].startswith(f"{COLLISION_MESSAGE} in test_mem, read port 0, word")
    assert reports[0].split()[-1] == "3"


@pytest.mark.parametrize("accesses", [
    [(2, 1, 3, 1), (3, 1, 2, 1)],  # other words
    [(3, 0, 3, 1)],  # the read port disabled: its data is not used
    [(3, 1, 3, 0)],  # no write
])
def test_no_collision_not_reported(capsys: pytest.CaptureFixture[str],
                                   accesses: list[tuple[int, int, int, int]]) -> None:
    _run(MemoryBlock(8, 8, no_collision="test_mem"), accesses)
    assert _reports(capsys) == []


def test_undeclared_memory_not_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """A memory not declared (its reads of a word being written read the old word) is not
    checked."""
    _run(MemoryBlock(8, 8), [(3, 1, 3, 1)])
    assert _reports(capsys) == []


def test_second_read_port_checked(capsys: pytest.CaptureFixture[str]) -> None:
    dut = MemoryBlock(8, 8, second_read=True, no_collision="two_ports")
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx: object) -> None:
        ctx.set(dut.read.raddr, 6)
        ctx.set(dut.read.ren, 1)
        ctx.set(dut.port.waddr, 6)
        ctx.set(dut.port.we, 1)
        await ctx.tick()
        await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    reports = _reports(capsys)
    assert len(reports) == 1 and "two_ports, read port 1" in reports[0]


class _Board:
    """A stand-in platform: elaboration for a board (no simulation check)."""


def test_board_marks_only_declared_memories() -> None:
    """The build marks the clocked read ports of the declared memory as undefined on a
    collision (``COLLISION_X_MASK`` 1) and leaves the other memory's old-word reads alone."""
    m = Module()
    m.submodules.free = free = MemoryBlock(16, 8, no_collision="free")
    m.submodules.kept = kept = MemoryBlock(16, 8)
    ports = [getattr(mem.port, name) for mem in (free, kept)
             for name in ("raddr", "ren", "rdata", "waddr", "wdata", "we")]
    text = rtlil.convert(m, platform=_Board(), ports=ports)
    assert f'attribute \\{NO_READ_COLLISION} "free"' in text  # the declared name
    assert "$print" not in text  # the check is for simulation only
    patched = undefine_read_collisions(text)

    def masks(il: str) -> list[tuple[str, str]]:
        """(module, COLLISION_X_MASK) of every read port (both memories are ``mem``)."""
        out = []
        for name, body in re.findall(r"^module (\S+)\n(.*?)^end\n", il, re.M | re.S):
            out += [(name, mask) for mask in re.findall(r"COLLISION_X_MASK (\S+)", body)]
        return sorted(out)

    assert masks(text) == [("\\top.free", "1'0"), ("\\top.kept", "1'0")]
    assert masks(patched) == [("\\top.free", "1'1"), ("\\top.kept", "1'0")]
    # a board may name the declared memories it trusts
    assert masks(undefine_read_collisions(text, ("free",))) == masks(patched)
    assert masks(undefine_read_collisions(text, ("other",))) == masks(text)


def test_banks_answer_two_reads_later() -> None:
    """A banked MemoryBlock (20 words in banks of 8: three banks, the last partly used)
    answers two cycles after a read (``raddr`` with ``ren``) with its word, holding it
    while ``ren`` is low, and keeps every bank's writes apart; written words read back."""
    import random

    rng = random.Random(7)
    dut = MemoryBlock(20, 8, bank_words=8)
    assert dut.banks == 3 and dut.read_latency == 2
    model = [0] * 20
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    wrong = []

    async def bench(ctx: object) -> None:
        port = dut.port
        reads = []  # (cycle, word) of the reads presented with ren, in order
        for cycle in range(600):
            waddr, we = rng.randrange(20), rng.random() < 0.5
            raddr, ren = rng.randrange(20), rng.random() < 0.7
            due = [word for at, word in reads if at <= cycle - 2]
            if due and due[-1] != ctx.get(port.rdata):
                wrong.append((cycle, due[-1], ctx.get(port.rdata)))
            ctx.set(port.raddr, raddr)
            ctx.set(port.ren, ren)
            ctx.set(port.waddr, waddr)
            ctx.set(port.wdata, (cycle * 7) & 0xFF)
            ctx.set(port.we, we and (waddr != raddr or not ren))  # (no read of a word being written)
            if ren:
                reads.append((cycle, model[raddr]))
            if we and (waddr != raddr or not ren):
                model[waddr] = (cycle * 7) & 0xFF
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert wrong == [], f"banked reads wrong at (cycle, expected, got) {wrong[:5]}"


def test_narrow_second_read_holds_the_top_bits() -> None:
    """A LaneMemory's second read port with ``second_read_bits`` (the forward engine's
    copy of the weights) reads each lane's top bits of every word written, lane by lane,
    as the first port reads the whole word; the declaration covers the copy too."""
    import random

    from perturbo.hdl.memories import LaneMemory

    rng = random.Random(3)
    lanes, depth = 3, 8
    dut = LaneMemory(lanes, depth, signed(16), second_read=True, second_read_bits=8, no_collision="weights")
    model = [[0] * lanes for _ in range(depth)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    wrong = []

    async def bench(ctx: object) -> None:
        port, read = dut.port, dut.read
        for _ in range(300):
            waddr, we = rng.randrange(depth), rng.randrange(1 << lanes)
            raddr = rng.choice([a for a in range(depth) if a != waddr])
            words = [rng.randrange(-(1 << 15), 1 << 15) for _ in range(lanes)]
            for port_addr in (port.raddr, read.raddr):
                ctx.set(port_addr, raddr)
            ctx.set(port.ren, 1)
            ctx.set(read.ren, 1)
            ctx.set(port.waddr, waddr)
            ctx.set(port.we, we)
            for k in range(lanes):
                ctx.set(port.wdata[k], words[k])
            await ctx.tick()
            whole = [ctx.get(port.rdata[k]) for k in range(lanes)]
            top = [ctx.get(read.rdata[k]) for k in range(lanes)]
            if whole != model[raddr] or top != [w >> 8 for w in model[raddr]]:
                wrong.append((raddr, model[raddr], whole, top))
            for k in range(lanes):
                if we >> k & 1:
                    model[waddr][k] = words[k]

    sim.add_testbench(bench)
    sim.run()
    assert not wrong, wrong[:3]
    assert dut.read_shape == signed(8)
    with pytest.raises(ValueError, match="second_read_bits"):
        LaneMemory(lanes, depth, signed(16), second_read_bits=8)
