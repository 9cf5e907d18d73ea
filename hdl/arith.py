"""Integer helpers as logic, mirroring :mod:`perturbo.golden.units` (docs/numerics.md §1).

Each function builds an Amaranth expression; the golden function of the same name
computes the same value on tensors.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Value, ValueCastable, signed

from perturbo.config import Overflow, Rounding

__all__ = ["narrow", "round_shift", "sign"]


def narrow(value: Value | ValueCastable | int, bits: int,
           overflow: Overflow = Overflow.SATURATE) -> Value:
    """Fit a value into ``bits`` signed bits: clamp (saturate) or keep the low bits (wrap).

    Parameters
    ----------
    value
        A signed or unsigned value of any width.
    bits
        Width of the result, which is ``signed(bits)``.
    overflow
        :attr:`Overflow.SATURATE` clamps to ``-2^(bits-1) .. 2^(bits-1) - 1``;
        :attr:`Overflow.WRAP` keeps the low ``bits`` bits read as signed.
    """
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive integer, not {bits!r}")
    value = Value.cast(value)
    shape = value.shape()
    # Already fits: extend (a signed value of width <= bits, or unsigned of width < bits).
    if (shape.signed and shape.width <= bits) or (not shape.signed and shape.width < bits):
        return value.as_signed() if shape.signed else value.as_unsigned()
    low = value[:bits].as_signed()
    if Overflow(overflow) == Overflow.WRAP:
        return low
    hi = Const((1 << (bits - 1)) - 1, signed(bits))
    lo = Const(-(1 << (bits - 1)), signed(bits))
    # The value fits when the bits from bits-1 up are all copies of its sign: tests of
    # those bits (a few LUTs) instead of comparisons against hi and lo, which yosys builds
    # as carry chains across the whole width.
    top = value[bits - 1:]
    if not shape.signed:
        return Mux(top.any(), hi, low)
    fits = ~top.any() | top.all()
    return Mux(fits, low, Mux(value[-1], lo, hi))


def round_shift(value: Value | ValueCastable, shift: int,
                rounding: Rounding = Rounding.HALF_UP) -> Value:
    """Arithmetic right shift by a constant ``shift``; half-up adds ``2^(shift-1)`` first.

    The result keeps the sign of ``value`` and is wide enough for the addition (no
    overflow), so ``round_shift(-3, 1) == -1`` and ``round_shift(3, 1) == 2``.
    """
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be a non-negative integer, not {shift!r}")
    value = Value.cast(value)
    if shift == 0:
        return value
    if Rounding(rounding) == Rounding.HALF_UP:
        value = value + (1 << (shift - 1))
    return value >> shift


def sign(value: Value | ValueCastable) -> Value:
    """-1, 0 or +1 as ``signed(2)``; the sign of zero is zero."""
    value = Value.cast(value)
    negative = value[-1] if value.shape().signed else Const(0, 1)
    return Mux(value == 0, Const(0, signed(2)), Mux(negative, Const(-1, signed(2)), Const(1, signed(2))))
