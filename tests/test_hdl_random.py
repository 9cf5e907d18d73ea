"""The arithmetic helpers of hdl/arith.py against golden.units (and logic_product against
``*``), exhaustively, and the hash pipe's alternate key, in Amaranth's simulator.  (The
random source's pipes and drawn values are checked where the forward engine uses them:
tests/tb_forward.py compares its signs, injections, factors and pass keys with
golden.units.)"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from perturbo.config import Overflow, Rounding
from perturbo.golden import units as u
from perturbo.hdl.arith import logic_product, narrow, requantise, round_shift, sign
from perturbo.hdl.random import Draw


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("rounding", list(Rounding))
def test_arith(overflow: Overflow, rounding: Rounding) -> None:
    """narrow, round_shift and sign on every 9-bit signed and 8-bit unsigned value."""
    m = Module()
    v = Signal(signed(9))
    uv = Signal(unsigned(8))
    outs = {}
    for bits, shift in itertools.product((4, 6, 9, 12), (0, 1, 3)):
        a = Signal(signed(bits), name=f"n{bits}_{shift}")
        r = Signal(signed(12), name=f"r{bits}_{shift}")
        m.d.comb += [a.eq(narrow(v, bits, overflow)), r.eq(round_shift(v, shift, rounding))]
        outs[(bits, shift)] = (a, r)
    un = Signal(signed(6))
    sg = Signal(signed(2))
    m.d.comb += [un.eq(narrow(uv, 6, overflow)), sg.eq(sign(v))]
    sim = Simulator(m)

    async def bench(ctx) -> None:
        for x in range(-256, 256):
            ctx.set(v, x)
            ctx.set(uv, x & 0xFF)
            t = torch.tensor(x)
            for (bits, shift), (a, r) in outs.items():
                assert ctx.get(a) == int(u.narrow(t, bits, overflow)), (x, bits)
                assert ctx.get(r) == int(u.round_shift(t, shift, rounding)), (x, shift)
            assert ctx.get(un) == int(u.narrow(torch.tensor(x & 0xFF), 6, overflow)), x
            assert ctx.get(sg) == int(u.sign(t)), x

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("rounding", list(Rounding))
def test_requantise(overflow: Overflow, rounding: Rounding) -> None:
    """requantise against golden.units.requantise on every 13-bit signed and 12-bit unsigned
    value, at shifts that leave 13 to 8 bits above the point (the clamp after the rounding's
    increment, 127 + 1, included) and fewer than 8."""
    m = Module()
    v = Signal(signed(13))
    uv = Signal(unsigned(12))
    outs = {}
    for shift in (0, 1, 3, 5, 6):
        q, uq = Signal(signed(8), name=f"q{shift}"), Signal(signed(8), name=f"uq{shift}")
        m.d.comb += [q.eq(requantise(v, shift, rounding, overflow)), uq.eq(requantise(uv, shift, rounding, overflow))]
        outs[shift] = (q, uq)
    sim = Simulator(m)

    async def bench(ctx) -> None:
        for x in range(-4096, 4096):
            ctx.set(v, x)
            ctx.set(uv, x & 0xFFF)
            for shift, (q, uq) in outs.items():
                assert ctx.get(q) == int(u.requantise(torch.tensor(x), shift, rounding, overflow)), (x, shift)
                want = int(u.requantise(torch.tensor(x & 0xFFF), shift, rounding, overflow))
                assert ctx.get(uq) == want, (x & 0xFFF, shift)

    sim.add_testbench(bench)
    sim.run()


def test_logic_product_is_the_product() -> None:
    """logic_product (``hardware.lane_products: logic``) of every pair of INT8 values, of
    an INT8 by a 5-bit and a 3-bit signed value (an odd count of terms in the tree), and of
    an INT8 by an unsigned 8-bit value (``hardware.update_products: dsp-low``'s ``lr_mult``,
    whose top bit is a bit like the others, not a sign)."""
    m = Module()
    a, b = Signal(signed(8)), Signal(signed(8))
    p = Signal(signed(16))
    narrow_b = {bits: Signal(signed(bits), name=f"b{bits}") for bits in (3, 5)}
    narrow_p = {bits: Signal(signed(8 + bits), name=f"p{bits}") for bits in (3, 5)}
    unsigned_b, unsigned_p = Signal(8), Signal(signed(17))
    m.d.comb += p.eq(logic_product(m, a, b))
    m.d.comb += [narrow_p[bits].eq(logic_product(m, a, narrow_b[bits])) for bits in narrow_b]
    m.d.comb += unsigned_p.eq(logic_product(m, a, unsigned_b))
    sim = Simulator(m)

    async def bench(ctx) -> None:
        for x in range(-128, 128):
            ctx.set(a, x)
            for y in range(-128, 128):
                ctx.set(b, y)
                ctx.set(unsigned_b, y + 128)
                for bits, nb in narrow_b.items():
                    ctx.set(nb, y >> (8 - bits))
                assert ctx.get(p) == x * y, (x, y)
                assert ctx.get(unsigned_p) == x * (y + 128), (x, y + 128)
                for bits, np_ in narrow_p.items():
                    assert ctx.get(np_) == x * (y >> (8 - bits)), (x, y, bits)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("stages_per_register", [1, 2, 3, 6])
def test_draw_alternate_key(stages_per_register: int) -> None:
    """``Draw(alternate=True)`` (the forward engine's key pipe on the ECP5): each cycle a
    token's ``(key, index)`` or, where ``alt_take`` is high, a pass-key request's key, and
    every word out :attr:`latency` cycles later equals golden.units' ``draw`` or
    ``pass_key`` of what went in."""
    dut = Draw(stages_per_register, alternate=True)
    seed = 0x1234_5678
    rng = random.Random(stages_per_register)
    inputs = [(rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32), rng.random() < 0.4)
              for _ in range(60)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    def expected(key: int, index: int, alt_key: int, take: bool) -> int:
        if take:  # the request's key is e << 2 | stream
            return int(u.pass_key(seed, alt_key & 3, alt_key >> 2)) & 0xFFFF_FFFF
        return int(u.draw(torch.tensor(key), torch.tensor(index))) & 0xFFFF_FFFF

    async def bench(ctx) -> None:
        taken = []
        for cycle in range(len(inputs) + dut.latency):
            if cycle < len(inputs):
                key, index, alt_key, take = inputs[cycle]
                ctx.set(dut.key, key)
                ctx.set(dut.index, index)
                ctx.set(dut.alt_key, alt_key)
                ctx.set(dut.alt_take, take)
            taken.append(cycle < len(inputs) and inputs[cycle][3])
            # the tweak (the seed) where a request's word leaves the first round
            back = cycle - dut.latency // 2
            ctx.set(dut.tweak, seed if back >= 0 and taken[back] else 0)
            if cycle >= dut.latency:
                assert ctx.get(dut.o) == expected(*inputs[cycle - dut.latency]), cycle
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
