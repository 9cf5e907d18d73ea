"""RegisteredProduct: the ECP5's MULT18X18D instance against the same registers in the fabric
(the operand registers inside the multiplier, or in the fabric before it).

For every operand shape the accelerator multiplies and both places of the operand
registers, the ECP5 variant (elaborated for an ECP5 platform, its MULT18X18D simulated by
:mod:`mult18x18d_model`) and the fabric variant sit side by side in one top on the same
random operands, enables and resets; ``tb_dsp`` compares both products with ``==`` every
cycle, and with the product of the operands two enables before.
"""

from __future__ import annotations

import json

import pytest
from amaranth.hdl import Elaboratable, Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from cocotb_build import SIMULATORS, run_cocotb
from mult18x18d_model import mult18x18d_verilog

from perturbo.hdl.dsp import RegisteredProduct

#: The operand shapes the accelerator multiplies: the forward engine's INT8 weight and
#: input, and the update's 17-bit slices of ``U`` (the top one signed) by ``lr_mult``.
SHAPES = {
    "int8": (signed(8), signed(8)),
    "low-slice": (unsigned(17), unsigned(8)),
    "top-slice": (signed(15), unsigned(8)),
    "one-slice": (signed(16), unsigned(8)),
    "widest": (signed(18), signed(18)),
}
#: (shape name, operand registers inside the multiplier) for each pair in the top.
CASES = [(name, inside) for name in SHAPES for inside in (True, False)]


class _ECP5:
    """What RegisteredProduct asks of a platform to use the MULT18X18D."""

    family = "ecp5"


class _OnECP5(Elaboratable):
    """Elaborates ``inner`` for an ECP5 platform whatever the platform of the build."""

    def __init__(self, inner: RegisteredProduct) -> None:
        self.inner = inner

    def elaborate(self, platform: object) -> Module:
        return self.inner.elaborate(_ECP5())


class DspPairs(wiring.Component):
    """For each of :data:`CASES`, the fabric and the ECP5 RegisteredProduct on the same
    inputs ``a<i>``, ``b<i>``, with the shared ``en``; their products ``fabric<i>`` and
    ``ecp5<i>``."""

    def __init__(self) -> None:
        self.pairs = []
        members = {"en": In(1)}
        for i, (name, inside) in enumerate(CASES):
            a_shape, b_shape = SHAPES[name]
            pair = [RegisteredProduct(a_shape, b_shape, operands_inside=inside) for _ in range(2)]
            self.pairs.append(pair)
            p_shape = pair[0].p.shape()
            members |= {f"a{i}": In(a_shape), f"b{i}": In(b_shape),
                        f"fabric{i}": Out(p_shape), f"ecp5{i}": Out(p_shape)}
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for i, (fabric, ecp5) in enumerate(self.pairs):
            m.submodules[f"fabric{i}"] = fabric
            m.submodules[f"ecp5{i}"] = _OnECP5(ecp5)
            for mult in (fabric, ecp5):
                m.d.comb += [mult.a.eq(getattr(self, f"a{i}")), mult.b.eq(getattr(self, f"b{i}")),
                             mult.en.eq(self.en)]
            m.d.comb += [getattr(self, f"fabric{i}").eq(fabric.p), getattr(self, f"ecp5{i}").eq(ecp5.p)]
        return m


@pytest.mark.parametrize("sim", SIMULATORS)
def test_registered_product(sim: str) -> None:
    cases = [{"name": name, "inside": inside, "a": [SHAPES[name][0].width, SHAPES[name][0].signed],
              "b": [SHAPES[name][1].width, SHAPES[name][1].signed]} for name, inside in CASES]
    run_cocotb(DspPairs(), "dsp_top", "tb_dsp", simulator=sim,
               extra_env={"PERTURBO_TB_CASES": json.dumps(cases)}, library=mult18x18d_verilog())


def test_operand_too_wide() -> None:
    with pytest.raises(ValueError, match="b_shape must fit a signed 18-bit operand"):
        RegisteredProduct(signed(8), unsigned(18))
