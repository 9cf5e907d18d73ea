"""RegisteredProduct: the ECP5's MULT18X18D instance against the same registers in the fabric
(the operand registers inside the multiplier, or in the fabric before it).

Both are built side by side in one top (the ECP5 one elaborated for an ECP5 platform, its
MULT18X18D simulated by :mod:`mult18x18d_model`) and driven with the same random operands,
enables and resets; ``tb_dsp`` compares both products with ``==`` every cycle, and with the
product of the operands two enables before.
"""

from __future__ import annotations

import json

import pytest
from amaranth.hdl import Elaboratable, Module, Shape, signed, unsigned
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


class _ECP5:
    """What RegisteredProduct asks of a platform to use the MULT18X18D."""

    family = "ecp5"


class _OnECP5(Elaboratable):
    """Elaborates ``inner`` for an ECP5 platform whatever the platform of the build."""

    def __init__(self, inner: RegisteredProduct) -> None:
        self.inner = inner

    def elaborate(self, platform: object) -> Module:
        return self.inner.elaborate(_ECP5())


class DspPair(wiring.Component):
    """The fabric and the ECP5 RegisteredProduct on the same inputs."""

    def __init__(self, a_shape: Shape, b_shape: Shape, operands_inside: bool) -> None:
        self.fabric = RegisteredProduct(a_shape, b_shape, operands_inside=operands_inside)
        self.ecp5 = RegisteredProduct(a_shape, b_shape, operands_inside=operands_inside)
        p_shape = self.fabric.p.shape()
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1),
                          "p_fabric": Out(p_shape), "p_ecp5": Out(p_shape)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.fabric = self.fabric
        m.submodules.ecp5 = _OnECP5(self.ecp5)
        for mult in (self.fabric, self.ecp5):
            m.d.comb += [mult.a.eq(self.a), mult.b.eq(self.b), mult.en.eq(self.en)]
        m.d.comb += [self.p_fabric.eq(self.fabric.p), self.p_ecp5.eq(self.ecp5.p)]
        return m


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("inside", [True, False], ids=["operands-inside", "operands-outside"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_registered_product(name: str, inside: bool, sim: str) -> None:
    a_shape, b_shape = SHAPES[name]
    shapes = {"a": [a_shape.width, a_shape.signed], "b": [b_shape.width, b_shape.signed]}
    run_cocotb(DspPair(a_shape, b_shape, inside), "dsp_top", "tb_dsp", simulator=sim,
               extra_env={"PERTURBO_TB_SHAPES": json.dumps(shapes)}, library=mult18x18d_verilog())


def test_operand_too_wide() -> None:
    with pytest.raises(ValueError, match="b_shape must fit a signed 18-bit operand"):
        RegisteredProduct(signed(8), unsigned(18))
