"""cocotb: RegisteredProduct's MULT18X18D and its fabric registers, cycle by cycle."""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

SHAPES = json.loads(os.environ["PERTURBO_TB_SHAPES"])
CYCLES = 3000


def _draw(rng: random.Random, width: int, signed: bool) -> int:
    """A random operand, its extremes drawn often."""
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    return rng.choice([lo, hi, 0, rng.randint(lo, hi), rng.randint(lo, hi)])


@cocotb.test()
async def products(dut) -> None:
    """Random operands, enables (half the cycles) and resets (1 %): both products equal the
    product of the operands of two enabled cycles before (0 after a reset)."""
    rng = random.Random(json.dumps(SHAPES))
    (aw, a_signed), (bw, b_signed) = SHAPES["a"], SHAPES["b"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    operands = product = 0, 0
    expected = 0
    for cycle in range(CYCLES):
        await FallingEdge(dut.clk)
        reset = cycle < 2 or rng.random() < 0.01
        en = rng.random() < 0.5
        a, b = _draw(rng, aw, a_signed), _draw(rng, bw, b_signed)
        dut.rst.value, dut.en.value, dut.a.value, dut.b.value = int(reset), int(en), a, b
        await ReadOnly()
        read = "to_signed" if a_signed or b_signed else "to_unsigned"  # the product's shape
        fabric = getattr(dut.p_fabric.value, read)()
        ecp5 = getattr(dut.p_ecp5.value, read)()
        assert fabric == ecp5 == expected, (
            f"RegisteredProduct {SHAPES}, cycle {cycle}: fabric {fabric}, MULT18X18D {ecp5}, "
            f"expected {expected}")
        # the registers at the coming edge
        if reset:
            operands, product = (0, 0), 0
        elif en:
            operands, product = (a, b), operands[0] * operands[1]
        expected = product
