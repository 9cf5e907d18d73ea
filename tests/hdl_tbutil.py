"""cocotb helpers shared by the datapath testbenches (tb_forward, tb_correlation, ...).

- :class:`Packer`: a ``data.StructLayout`` payload <-> Python values (nested structs,
  arrays, signed fields);
- :class:`Bench`: clock, reset, and a once-per-cycle loop that drives stream sources
  (with random idle cycles), stream sinks (with random back-pressure) and one-shot
  writes, all from one coroutine;
- :func:`config`: the :class:`~perturbo.config.Config` handed over by the pytest side;
- :func:`drive_inputs`: every input of the top driven to 0 (the Bench does it first), so
  that a four-state simulator (Icarus) sees no X/Z where Verilator's two-state start reads 0.

Timing: inputs change at the falling edge; handshakes are sampled in the ``ReadOnly``
phase of that time step, i.e. with the values the next rising edge sees.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cocotb
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from perturbo.config import Config


def config() -> Config:
    """The configuration the pytest side put in ``PERTURBO_CFG``."""
    return Config.model_validate(json.loads(os.environ["PERTURBO_CFG"]))


def ports(dut: Any, direction: str = "input") -> list[str]:
    """The top module's ``input`` or ``output`` ports, read from its Verilog (``PERTURBO_TOP_VERILOG``)."""
    text = Path(os.environ["PERTURBO_TOP_VERILOG"]).read_text()
    top = re.search(rf"^module \\?{re.escape(dut._name)}\s*\(.*?^endmodule", text, re.M | re.S)
    assert top is not None, f"module {dut._name} not found in {os.environ['PERTURBO_TOP_VERILOG']}"
    return re.findall(rf"^\s*{direction}\s+(?:\[[^\]]*\]\s*)?(\S+?)\s*;", top.group(0), re.M)


def undefined_outputs(dut: Any) -> list[str]:
    """Outputs of ``dut`` with an X or Z bit (only a four-state simulator can show one).

    Left out, because their value does not matter there: memory read data (``*__rdata``),
    undefined until the first read of an uninitialised memory, on the FPGA as on Icarus
    (Verilator reads 0); and a stream's payload while its ``valid`` is low (the stream
    transfer rules of ``amaranth.lib.stream``), for instance G rows read from memory.
    """
    names = ports(dut, "output")
    out = []
    for name in names:
        value = str(getattr(dut, name).value)
        if name.endswith("__rdata") or not any(c in "xXzZ" for c in value):
            continue
        valid = name.removesuffix("__payload") + "__valid"
        if name.endswith("__payload") and valid in names and str(getattr(dut, valid).value) == "0":
            continue
        out.append(f"{name} = {value}")
    return out


def drive_inputs(dut: Any, skip: tuple[str, ...] = ("clk",)) -> None:
    """Drive every input of ``dut`` (but ``skip``) to 0: nothing is left X or Z on Icarus."""
    for name in ports(dut, "input"):
        if name not in skip:
            getattr(dut, name).value = 0


def to_signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


class Packer:
    """Pack and unpack a payload of any layout as a Python integer.

    Struct fields are dicts, arrays lists, plain shapes ints (two's complement if signed).
    """

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        self.width = Shape.cast(layout).width

    def pack(self, value: Any) -> int:
        return self._pack(self.layout, value)

    def unpack(self, raw: int) -> Any:
        return self._unpack(self.layout, int(raw))

    def _pack(self, layout: Any, value: Any) -> int:
        if isinstance(layout, data.StructLayout):
            raw = 0
            for name, fld in layout:
                if name in value:
                    raw |= self._pack(fld.shape, value[name]) << fld.offset
            return raw
        if isinstance(layout, data.ArrayLayout):
            width = Shape.cast(layout.elem_shape).width
            raw = 0
            for k, v in enumerate(value):
                raw |= self._pack(layout.elem_shape, v) << (k * width)
            return raw
        width = Shape.cast(layout).width
        return int(value) & ((1 << width) - 1)

    def _unpack(self, layout: Any, raw: int) -> Any:
        if isinstance(layout, data.StructLayout):
            out = {}
            for name, fld in layout:
                width = Shape.cast(fld.shape).width
                out[name] = self._unpack(fld.shape, (raw >> fld.offset) & ((1 << width) - 1))
            return out
        if isinstance(layout, data.ArrayLayout):
            width = Shape.cast(layout.elem_shape).width
            return [self._unpack(layout.elem_shape, (raw >> (k * width)) & ((1 << width) - 1))
                    for k in range(layout.length)]
        shape = Shape.cast(layout)
        return to_signed(raw, shape.width) if shape.signed else raw


class Source:
    """Drives a stream (``<name>__valid``, ``__ready``, ``__payload``) from a queue, with
    random idle cycles (``idle``, a probability) and at least ``gap`` idle cycles after a
    transfer."""

    def __init__(self, dut: Any, name: str, layout: Any, idle: float, rng: random.Random,
                 gap: int = 0) -> None:
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.packer = Packer(layout)
        self.idle, self.rng, self.gap = idle, rng, gap
        self.quiet = 0  # idle cycles still owed to ``gap``
        self.items: deque[Any] = deque()
        self.holding = False
        self.sent = 0

    def send(self, item: Any) -> None:
        self.items.append(item)

    def drive(self) -> None:
        if self.holding:
            return
        if self.quiet:
            self.quiet -= 1
            self.valid.value = 0
        elif self.items and self.rng.random() >= self.idle:
            self.payload.value = self.packer.pack(self.items[0])
            self.valid.value = 1
            self.holding = True
        else:
            self.valid.value = 0

    def sample(self) -> None:
        if self.holding and int(self.ready.value):
            self.items.popleft()
            self.holding = False
            self.sent += 1
            self.quiet = self.gap

    @property
    def idle_now(self) -> bool:
        return not self.items and not self.holding


class Sink:
    """Takes a stream's transfers into ``received``, with random back-pressure."""

    def __init__(self, dut: Any, name: str, layout: Any, backpressure: float,
                 rng: random.Random) -> None:
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.packer = Packer(layout)
        self.bp, self.rng = backpressure, rng
        self.received: list[Any] = []

    def drive(self) -> None:
        self.ready.value = int(self.rng.random() >= self.bp)

    def sample(self) -> None:
        if int(self.valid.value) and int(self.ready.value):
            self.received.append(self.packer.unpack(self.payload.value.to_unsigned()))


async def send_bytes(dut: Any, stream: str, data: bytes, gap: Callable[[], int] | None = None) -> None:
    """Push ``data`` into the byte stream ``<stream>__valid`` / ``__payload`` / ``__ready`` one
    transfer at a time, ``gap()`` idle cycles before each byte (none by default)."""
    valid, payload, ready = (getattr(dut, f"{stream}__{name}") for name in ("valid", "payload", "ready"))
    for byte in data:
        idle = gap() if gap is not None else 0
        if idle:
            await ClockCycles(dut.clk, idle)
        valid.value = 1
        payload.value = byte
        while True:
            await RisingEdge(dut.clk)
            if int(ready.value):
                break
        valid.value = 0


class Bench:
    """Clock, reset and the per-cycle loop over sources, sinks and one-shot writes."""

    def __init__(self, dut: Any, seed: Any = 0) -> None:
        self.dut = dut
        self.rng = random.Random(repr(seed))
        self.sources: list[Source] = []
        self.sinks: list[Sink] = []
        self.cycles = 0
        drive_inputs(dut)
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    def source(self, name: str, layout: Any, idle: float = 0.0, gap: int = 0) -> Source:
        s = Source(self.dut, name, layout, idle, random.Random(self.rng.random()), gap)
        self.sources.append(s)
        return s

    def sink(self, name: str, layout: Any, backpressure: float = 0.0) -> Sink:
        s = Sink(self.dut, name, layout, backpressure, random.Random(self.rng.random()))
        self.sinks.append(s)
        return s

    async def reset(self) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 2)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await ReadOnly()
        undefined = undefined_outputs(self.dut)
        assert not undefined, f"outputs undefined after reset: {', '.join(undefined)}"
        await FallingEdge(self.dut.clk)

    async def write_cycles(self, writes: list[dict[str, int]]) -> None:
        """One cycle per entry: set the given signals at a falling edge, then clear ``*we*``."""
        dut = self.dut
        names: set[str] = set()
        for w in writes:
            await FallingEdge(dut.clk)
            for name, value in w.items():
                getattr(dut, name).value = value
                names.add(name)
        await FallingEdge(dut.clk)
        for name in names:
            if "we" in name.rsplit("__", 1)[-1]:
                getattr(dut, name).value = 0

    async def run(self, done: Callable[[], bool], max_cycles: int = 200_000,
                  what: str = "the test") -> None:
        """Run the per-cycle loop until ``done()`` (checked after each cycle's sampling)."""
        clk = self.dut.clk
        for _ in range(max_cycles):
            await FallingEdge(clk)
            for s in self.sources:
                s.drive()
            for k in self.sinks:
                k.drive()
            await ReadOnly()
            self.cycles += 1
            for s in self.sources:
                s.sample()
            for k in self.sinks:
                k.sample()
            if done():
                await RisingEdge(clk)
                return
        raise AssertionError(f"{what} did not finish in {max_cycles} cycles")


class BusMaster:
    """Transaction-level driver of the accelerator's host bus (:mod:`perturbo.hdl.bus`)."""

    def __init__(self, dut: Any, prefix: str = "bus") -> None:
        self.dut = dut
        self.addr = getattr(dut, f"{prefix}__addr")
        self.wdata = getattr(dut, f"{prefix}__wdata")
        self.we = getattr(dut, f"{prefix}__we")
        self.stb = getattr(dut, f"{prefix}__stb")
        self.ack = getattr(dut, f"{prefix}__ack")
        self.rdata = getattr(dut, f"{prefix}__rdata")
        self.err = getattr(dut, f"{prefix}__err")
        self.stb.value = 0
        self.transactions = 0

    async def _request(self, space: int, word: int, we: int, value: int) -> tuple[int, bool]:
        clk = self.dut.clk
        await FallingEdge(clk)
        self.addr.value = (space << 24) | word
        self.wdata.value = value & 0xFFFF_FFFF
        self.we.value = we
        self.stb.value = 1
        for _ in range(64):
            await RisingEdge(clk)
            await ReadOnly()
            if int(self.ack.value):
                rdata, err = self.rdata.value.to_unsigned(), bool(int(self.err.value))
                await FallingEdge(clk)
                self.stb.value = 0
                self.transactions += 1
                return rdata, err
        raise AssertionError(f"no ack for space {space} word {word}")

    async def read(self, space: int, word: int, *, signed: bool = True,
                   expect_err: bool = False) -> int:
        rdata, err = await self._request(space, word, 0, 0)
        assert err == expect_err, f"read space {space} word {word}: err {err}, expected {expect_err}"
        return to_signed(rdata, 32) if signed else rdata

    async def write(self, space: int, word: int, value: int, *, expect_err: bool = False) -> None:
        _, err = await self._request(space, word, 1, value)
        assert err == expect_err, (f"write space {space} word {word} value {value}: err {err}, "
                                   f"expected {expect_err}")

    async def try_write(self, space: int, word: int, value: int) -> bool:
        """Write, where either answer is expected: whether the bus took it (False: ``err``)."""
        _, err = await self._request(space, word, 1, value)
        return not err


async def write_rows(dut: Any, prefix: str, rows: list[list[int]], bits: int) -> None:
    """Write whole rows of a lane memory through a test port ``<prefix>__waddr/wdata/we``."""
    lanes = len(rows[0])
    for r, vals in enumerate(rows):
        await FallingEdge(dut.clk)
        getattr(dut, f"{prefix}__waddr").value = r
        getattr(dut, f"{prefix}__wdata").value = sum(
            (v & ((1 << bits) - 1)) << (k * bits) for k, v in enumerate(vals))
        getattr(dut, f"{prefix}__we").value = (1 << lanes) - 1
    await FallingEdge(dut.clk)
    getattr(dut, f"{prefix}__we").value = 0


async def read_rows(dut: Any, prefix: str, depth: int, lanes: int, bits: int,
                    latency: int = 1) -> list[list[int]]:
    """Read rows ``0 .. depth - 1`` of a lane memory through ``<prefix>__raddr/ren/rdata``,
    which answers ``latency`` cycles after the address (2: ``LaneMemory(registered=True)``)."""
    rows = []
    for r in range(depth):
        await FallingEdge(dut.clk)
        getattr(dut, f"{prefix}__ren").value = 1
        getattr(dut, f"{prefix}__raddr").value = r
        for _ in range(latency):
            await RisingEdge(dut.clk)
        await ReadOnly()
        raw = getattr(dut, f"{prefix}__rdata").value.to_unsigned()
        rows.append([to_signed(raw >> (k * bits), bits) for k in range(lanes)])
    await FallingEdge(dut.clk)  # leave the read-only phase
    getattr(dut, f"{prefix}__ren").value = 0
    return rows
