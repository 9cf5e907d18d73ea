"""A multiplier with its operands and its product registered, inside the ECP5's block multiplier.

Every slowest path left in the 16- and 32-lane ECP5 builds of session 17 ran from a
register in the logic fabric, through a MULT18X18D, into another register in the fabric:
the placer keeps those registers beside the logic that feeds or uses them, so a path
paid the routing to the multiplier's column and back besides the multiplier's own delay
(docs/boards.md, "Registers inside the multipliers").  The MULT18X18D has registers of
its own on both operands and on the product; :class:`RegisteredProduct` puts the
registers that the RTL already has there on an ECP5 platform (the product's always, the
operands' where they come from registers), so that the fabric paths end, or start, at
the multiplier's pins.
Elsewhere (simulation, the iCE40, whose ``synth_ice40 -dsp`` packs the registers into its
SB_MAC16 itself, and products in logic) it is the same three registers in the fabric, so
the cycle-by-cycle behaviour is identical everywhere.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Shape, ShapeLike, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arith import logic_product

__all__ = ["RegisteredProduct", "MULT_WIDTH"]

#: Operand width of the ECP5's MULT18X18D (signed).
MULT_WIDTH = 18


def _is_ecp5(platform: object) -> bool:
    return getattr(platform, "family", None) == "ecp5"


class RegisteredProduct(wiring.Component):
    """``p = a * b`` two clock enables after ``a`` and ``b``: both operands registered, then
    their product (three registers, each loading when ``en`` is high).

    Parameters
    ----------
    a_shape, b_shape
        Shapes of the operands: at most :data:`MULT_WIDTH` bits signed, one fewer unsigned.
    logic
        Multiply with adders (:func:`~.arith.logic_product`) instead of a block multiplier.
    operands_inside
        On the ECP5, the operand registers too are the block multiplier's (else only the
        product's): for operands that come from registers, so that the paths into the
        multiplier are routing alone.  Operands computed by logic (the forward engine's
        perturbed weight) keep their registers in the fabric: the logic is placed by the
        block RAMs it reads, often far from the multiplier's row, and the register lets
        the placer split that distance (inside, the 8- and 16-lane builds fell from 94 and
        96 MHz to 78: the logic's output crossed the chip to the multiplier's pins).

    Members
    -------
    a : ``In(a_shape)``
    b : ``In(b_shape)``
    en : ``In(1)``
        The registers load (all three at once: the operands and the product of the
        previous operands).
    p : ``Out(shape of a * b)``
        The registered product.
    """

    def __init__(self, a_shape: ShapeLike, b_shape: ShapeLike, *, logic: bool = False,
                 operands_inside: bool = True) -> None:
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        for name, shape in (("a_shape", a_shape), ("b_shape", b_shape)):
            if shape.width + (not shape.signed) > MULT_WIDTH:
                raise ValueError(f"{name} must fit a signed {MULT_WIDTH}-bit operand, not {shape!r}")
        self.logic = logic
        self.operands_inside = operands_inside
        product = (Signal(a_shape) * Signal(b_shape)).shape()
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1), "p": Out(product)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        block = _is_ecp5(platform) and not self.logic
        a, b = self.a, self.b
        if not (block and self.operands_inside):
            a, b = Signal.like(self.a, name="a_reg"), Signal.like(self.b, name="b_reg")
            with m.If(self.en):
                m.d.sync += [a.eq(self.a), b.eq(self.b)]
        if block:
            self._mult18x18d(m, a, b)
            return m
        with m.If(self.en):
            m.d.sync += self.p.eq(logic_product(m, a, b) if self.logic else a * b)
        return m

    def _mult18x18d(self, m: Module, a: Value, b: Value) -> None:
        """The MULT18X18D with its output register (and with :attr:`operands_inside` its A
        and B registers) on the ``sync`` clock, its clock enable and its synchronous reset
        (as the fabric registers)."""
        pins = {}
        for port, operand in (("A", a), ("B", b)):
            value = Value.cast(operand)  # extended to the multiplier's width, signed
            top = value[-1] if value.shape().signed else Const(0, 1)
            pins |= {f"i_{port}{i}": value[i] if i < len(value) else top for i in range(MULT_WIDTH)}
        pins |= {f"i_C{i}": Const(0, 1) for i in range(MULT_WIDTH)}
        product = Signal(2 * MULT_WIDTH)
        pins |= {f"o_P{i}": product[i] for i in range(2 * MULT_WIDTH)}
        registered = {"CLK": "CLK0", "CE": "CE0", "RST": "RST0"}
        inside = ["OUTPUT", *(("INPUTA", "INPUTB") if self.operands_inside else ())]
        params = {}
        for reg in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT"):
            if reg in inside:
                params |= {f"p_REG_{reg}_{what}": value for what, value in registered.items()}
            else:
                params[f"p_REG_{reg}_CLK"] = "NONE"
        m.submodules.mult = Instance(
            "MULT18X18D",
            **params,
            p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
            i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1), i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
            i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=ResetSignal("sync", allow_reset_less=True),
            **pins,
        )
        m.d.comb += self.p.eq(product[:len(self.p)])
