"""Random sources (Mix32/Draw pipes, drawn values) against golden.units, and the
arithmetic helpers of hdl/arith.py (exhaustively, in Amaranth's simulator)."""

from __future__ import annotations

import itertools

import pytest
import torch
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator
from cocotb_build import SIMULATORS, run_cocotb
from hdl_harness import RandomHarness

from perturbo.config import Overflow, Rounding
from perturbo.golden import units as u
from perturbo.hdl.arith import narrow, round_shift, sign


@pytest.mark.parametrize("sim", SIMULATORS)
def test_random_source(sim: str) -> None:
    # 3 lanes: not a power of two
    run_cocotb(RandomHarness(3), "random_top", "tb_random", extra_env={"RANDOM_LANES": "3"},
               simulator=sim)


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
