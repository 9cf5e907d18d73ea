"""cocotb harness shared by the correlation front-end testbenches (tb_alr, tb_node, tb_projection).

Every front end has the same streams: ``i_ctx`` (one context per pass), ``i_x`` (one
layer input per beat, ``last`` on the pass's final one) and ``o_terms`` (one beat of
``lanes`` terms per input).  :class:`StreamBench` drives both input streams with
optional valid gaps, drains the output with optional backpressure, and returns the
output beats; the testbenches compare them with the golden units.

Timing: inputs are written at the falling edge and the handshakes are sampled in the
``ReadOnly`` phase of that time step, i.e. with the values the next rising edge sees
(the design is clocked on rising edges only).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import cocotb
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

#: The (idle, backpressure) probabilities every random test is crossed with.
IDLE = [cocotb.Param(0.0, "none"), cocotb.Param(0.35, "gaps")]
BACKPRESSURE = [cocotb.Param(0.0, "none"), cocotb.Param(0.4, "random")]


def config() -> dict[str, Any]:
    """The front end's configuration, handed over by the pytest side as JSON."""
    return json.loads(os.environ["FRONTEND_CFG"])


def rng_for(*parts: object) -> random.Random:
    """A deterministic generator per test (and per configuration)."""
    return random.Random(repr((config(), parts)))


class Packer:
    """Pack and unpack a ``data.StructLayout`` payload as a Python integer.

    Array fields take and give lists; signed fields are two's complement.
    """

    def __init__(self, layout: data.StructLayout) -> None:
        self.width = layout.size
        self.fields: dict[str, tuple[int, int, bool, int | None]] = {}
        for name, fld in layout:
            shape = fld.shape
            if isinstance(shape, data.ArrayLayout):
                elem = Shape.cast(shape.elem_shape)
                self.fields[name] = (fld.offset, elem.width, elem.signed, shape.length)
            else:
                s = Shape.cast(shape)
                self.fields[name] = (fld.offset, s.width, s.signed, None)

    def pack(self, values: dict[str, Any]) -> int:
        raw = 0
        for name, (offset, width, _, count) in self.fields.items():
            value = values.get(name, 0)
            items = [value] if count is None else list(value) + [0] * (count - len(value))
            for k, v in enumerate(items):
                raw |= (int(v) & ((1 << width) - 1)) << (offset + k * width)
        return raw

    def unpack(self, raw: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (offset, width, signed, count) in self.fields.items():
            vals = []
            for k in range(1 if count is None else count):
                v = (raw >> (offset + k * width)) & ((1 << width) - 1)
                if signed and v >> (width - 1):
                    v -= 1 << width
                vals.append(v)
            out[name] = vals[0] if count is None else vals
        return out


@dataclass
class Pass:
    """One pass: a context and its layer inputs, plus where it sits (for messages)."""

    ctx: dict[str, Any]
    xs: list[int]
    layer: int
    event: int  #: copy or sample number
    base: int  #: neuron of lane 0
    info: dict[str, Any] = field(default_factory=dict)


async def start(dut: Any) -> None:
    """Start the clock, reset, and leave every input idle."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.i_ctx__valid.value = 0
    dut.i_x__valid.value = 0
    dut.o_terms__ready.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


class StreamBench:
    """Drive ``i_ctx`` and ``i_x`` and drain ``o_terms`` of one front end.

    Parameters
    ----------
    dut
        The cocotb handle of the front end.
    ctx_packer, x_packer, out_packer
        Payload packers of the three streams.
    idle
        Probability that a free input stream stays idle in a cycle (valid gaps).
    backpressure
        Probability that ``o_terms.ready`` is low in a cycle.
    rng
        The test's random generator.
    """

    def __init__(self, dut: Any, ctx_packer: Packer, x_packer: Packer, out_packer: Packer, *,
                 idle: float, backpressure: float, rng: random.Random) -> None:
        self.dut = dut
        self.ctx_packer, self.x_packer, self.out_packer = ctx_packer, x_packer, out_packer
        self.idle, self.backpressure, self.rng = idle, backpressure, rng
        self.cycles = 0  #: cycles spent in :meth:`run`
        self.narrowed = 0  #: terms the testbench saw narrowed (set by the testbench)

    async def run(self, passes: list[Pass], unit: str) -> list[list[dict[str, Any]]]:
        """Send ``passes``; return, per pass, its output beats (unpacked).

        Raises
        ------
        AssertionError
            The unit stalls (no output for a long time) or breaks a stream rule.
        """
        dut, rng = self.dut, self.rng
        ctxs = [self.ctx_packer.pack(p.ctx) for p in passes]
        xs = [self.x_packer.pack({"x": x, "last": k == len(p.xs) - 1})
              for p in passes for k, x in enumerate(p.xs)]
        expected = len(xs)
        ci = xi = 0
        ctx_on = x_on = False
        ready: bool | None = None  # o_terms.ready as last written
        raw_out: list[int] = []
        quiet = 0
        clk = dut.clk
        ctx_valid, ctx_payload, ctx_ready = dut.i_ctx__valid, dut.i_ctx__payload, dut.i_ctx__ready
        x_valid, x_payload, x_ready = dut.i_x__valid, dut.i_x__payload, dut.i_x__ready
        o_valid, o_payload, o_ready = dut.o_terms__valid, dut.o_terms__payload, dut.o_terms__ready
        idle, bp = self.idle, self.backpressure
        while len(raw_out) < expected:
            await FallingEdge(clk)
            self.cycles += 1
            if not ctx_on and ci < len(ctxs) and (idle == 0 or rng.random() >= idle):
                ctx_on = True
                ctx_payload.value = ctxs[ci]
                ctx_valid.value = 1
            elif not ctx_on:
                ctx_valid.value = 0
            if not x_on and xi < len(xs) and (idle == 0 or rng.random() >= idle):
                x_on = True
                x_payload.value = xs[xi]
                x_valid.value = 1
            elif not x_on:
                x_valid.value = 0
            want = bp == 0 or rng.random() >= bp
            if want != ready:
                ready = want
                o_ready.value = int(ready)
            await ReadOnly()
            if ctx_on and ctx_ready.value:
                ci += 1
                ctx_on = False
            if x_on and x_ready.value:
                xi += 1
                x_on = False
            if o_valid.value:
                quiet = 0
                if ready:
                    raw_out.append(int(o_payload.value))
            else:
                quiet += 1
                assert quiet < 200, (
                    f"{unit}: stalled: {len(raw_out)} of {expected} output beats after "
                    f"{ci} contexts and {xi} inputs taken"
                )
        await FallingEdge(clk)
        ctx_valid.value = 0
        x_valid.value = 0
        assert ci == len(ctxs) and xi == len(xs), (
            f"{unit}: all {expected} outputs arrived but only {ci}/{len(ctxs)} contexts "
            f"and {xi}/{len(xs)} inputs were taken"
        )
        out: list[list[dict[str, Any]]] = []
        k = 0
        for p in passes:
            out.append([self.out_packer.unpack(r) for r in raw_out[k:k + len(p.xs)]])
            k += len(p.xs)
        return out

    async def assert_drained(self, unit: str, cycles: int = 16) -> None:
        """Nothing in flight: with ``ready`` high no output appears, no pass is loaded."""
        dut = self.dut
        dut.o_terms__ready.value = 1
        for _ in range(cycles):
            await RisingEdge(dut.clk)
            await ReadOnly()
            assert not dut.o_terms__valid.value, (
                f"{unit}: an output beat appeared after the last one")
        assert dut.i_ctx__ready.value, f"{unit}: does not take a new context after draining"
        assert not dut.i_x__ready.value, f"{unit}: still takes inputs: a pass is left loaded"
        await FallingEdge(dut.clk)
        dut.o_terms__ready.value = 0


def check_last(unit: str, p: Pass, beats: list[dict[str, Any]]) -> None:
    """``last`` is set exactly on the final beat of each pass."""
    for j, beat in enumerate(beats):
        want = int(j == len(p.xs) - 1)
        assert beat["last"] == want, (
            f"{unit}: layer {p.layer}, event {p.event}, neurons {p.base}..: "
            f"input j={j}: last={beat['last']}, expected {want}"
        )


def int8_edge(rng: random.Random) -> int:
    """An INT8 value biased to the edges and zero."""
    r = rng.random()
    if r < 0.25:
        return rng.choice([0, 0, 1, -1, 127, -128, 126, -127])
    return rng.randint(-128, 127)


def dc_value(rng: random.Random) -> int:
    """A 32-bit loss difference: extremes, small values, and the full range."""
    r = rng.random()
    if r < 0.15:
        return rng.choice([-(1 << 31), (1 << 31) - 1, 0, 1, -1, -(1 << 31) + 1])
    if r < 0.5:
        return rng.randint(-5000, 5000)
    return rng.randint(-(1 << 31), (1 << 31) - 1)
