"""cocotb: RegisteredProduct's MULT18X18D and its fabric registers, cycle by cycle."""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

CASES = json.loads(os.environ["PERTURBO_TB_CASES"])
CYCLES = 3000


def _draw(rng: random.Random, width: int, signed: bool) -> int:
    """A random operand, its extremes drawn often."""
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    return rng.choice([lo, hi, 0, rng.randint(lo, hi), rng.randint(lo, hi)])


@cocotb.test()
async def products(dut) -> None:
    """Random operands, enables (half the cycles) and resets (1 %): every pair's products
    equal the product of the operands of two enabled cycles before (0 after a reset)."""
    rng = random.Random(0)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    operands = [(0, 0)] * len(CASES)
    expected = [0] * len(CASES)
    for cycle in range(CYCLES):
        await FallingEdge(dut.clk)
        reset = cycle < 2 or rng.random() < 0.01
        en = rng.random() < 0.5
        dut.rst.value, dut.en.value = int(reset), int(en)
        drawn = []
        for i, case in enumerate(CASES):
            a, b = _draw(rng, *case["a"]), _draw(rng, *case["b"])
            getattr(dut, f"a{i}").value, getattr(dut, f"b{i}").value = a, b
            drawn.append((a, b))
        await ReadOnly()
        for i, case in enumerate(CASES):
            read = "to_signed" if case["a"][1] or case["b"][1] else "to_unsigned"  # the product's shape
            fabric = getattr(getattr(dut, f"fabric{i}").value, read)()
            ecp5 = getattr(getattr(dut, f"ecp5{i}").value, read)()
            assert fabric == ecp5 == expected[i], (
                f"RegisteredProduct {case}, cycle {cycle}: fabric {fabric}, MULT18X18D {ecp5}, "
                f"expected {expected[i]}")
            # the registers at the coming edge
            if reset:
                operands[i], expected[i] = (0, 0), 0
            elif en:
                expected[i] = operands[i][0] * operands[i][1]
                operands[i] = drawn[i]
