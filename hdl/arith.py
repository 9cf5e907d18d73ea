"""Integer helpers as logic, mirroring :mod:`perturbo.golden.units` (docs/numerics.md §1).

Each function builds an Amaranth expression; the golden function of the same name
computes the same value on tensors.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, ValueCastable, signed

from perturbo.config import Overflow, Rounding

__all__ = ["narrow", "round_shift", "requantise", "sign", "fits_signed", "at_least", "at_most", "logic_product"]


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
    if not shape.signed:
        return Mux(value[bits - 1:].any(), hi, low)
    return Mux(fits_signed(value, bits), low, Mux(value[-1], lo, hi))


# Comparisons against constants: yosys builds `value <= c` as a carry chain across the
# whole width of `value`; these test the bits above the constant's width with a few LUTs
# and compare only the bits below it (not at all when c is 2^k - 1 or 2^k).


def fits_signed(value: Value | ValueCastable, bits: int) -> Value:
    """Whether a signed ``value`` lies in ``-2^(bits-1) .. 2^(bits-1) - 1``: the bits from
    ``bits - 1`` up are all copies of its sign."""
    value = Value.cast(value)
    if value.shape().width <= bits:
        return Const(1, 1)
    top = value[bits - 1:]
    return ~top.any() | top.all()


def at_most(value: Value | ValueCastable, limit: int) -> Value:
    """``value <= limit`` for an unsigned ``value`` and a constant ``limit >= 0``."""
    value = Value.cast(value)
    width = value.shape().width
    if limit >= (1 << width) - 1:
        return Const(1, 1)
    k = limit.bit_length()
    if k == width:
        return value <= limit
    above = value[k:].any()
    if limit == (1 << k) - 1:
        return ~above
    return ~above & (value[:k] <= limit)


def at_least(value: Value | ValueCastable, limit: int) -> Value:
    """``value >= limit`` for an unsigned ``value`` and a constant ``limit >= 0``."""
    value = Value.cast(value)
    if limit <= 0:
        return Const(1, 1)
    k = (limit - 1).bit_length()  # 2^k >= limit
    if k >= value.shape().width:
        return value >= limit
    above = value[k:].any()
    if limit == 1 << k:
        return above
    return above | (value[:k] >= limit)


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


def requantise(value: Value | ValueCastable, shift: int, rounding: Rounding = Rounding.HALF_UP,
               overflow: Overflow = Overflow.SATURATE) -> Value:
    """``narrow(round_shift(value, shift, rounding), 8, overflow)`` (a signed value of at most
    eight bits), with no carry chain across ``value``'s width.

    Half-up rounding adds ``2^(shift-1)`` before the shift, which is the same as adding bit
    ``shift - 1`` after it: ``(v + 2^(s-1)) >> s == (v >> s) + v[s-1]``.  Only the eight
    bits kept need that increment; whether the sum fits eight bits is read from the bits
    above them (all copies of the sign) and from the one case the increment carries out of
    them (``127 + 1``).  The forward engine requantises every neuron this way (an ECP5 build's
    slowest path at 100 MHz went through the full-width rounding add and the saturation
    after it).
    """
    value = Value.cast(value)
    if not value.shape().signed:
        value = Cat(value, Const(0, 1)).as_signed()
    if shift == 0 or Rounding(rounding) == Rounding.FLOOR:
        return narrow(value >> shift, 8, overflow)
    top, half = value >> shift, value[shift - 1]
    if top.shape().width < 8:  # the sum fits: nothing to clamp or wrap
        return narrow(top + half, 8, overflow)
    low = top[:8]
    rounded = (low + half)[:8].as_signed()  # the low eight bits of top + half
    if Overflow(overflow) == Overflow.WRAP:
        return rounded
    fits = fits_signed(top, 8) & ~(half & (low == 127))
    return Mux(fits, rounded, Mux(top[-1], Const(-128, signed(8)), Const(127, signed(8))))


def sign(value: Value | ValueCastable) -> Value:
    """-1, 0 or +1 as ``signed(2)``; the sign of zero is zero."""
    value = Value.cast(value)
    negative = value[-1] if value.shape().signed else Const(0, 1)
    return Mux(value == 0, Const(0, signed(2)), Mux(negative, Const(-1, signed(2)), Const(1, signed(2))))


def logic_product(m: Module, a: Value, b: Value) -> Value:
    """``a * b`` as adders (no ``*``, so no block multiplier): ``a`` shifted by each bit of
    ``b``, gated by that bit (subtracted for the sign bit of a signed ``b``), summed in a
    balanced tree.  The gates are ``b``'s bits, which the forward engine's lanes share (and
    the update's lanes ``lr_mult``'s).

    Each sum of the tree is a ``keep`` signal of ``m``: left alone, yosys joins the tree
    into one multiply-accumulate cell and maps it to LUT full adders (a 9 x 8-bit product:
    321 LUT4, 9 carry cells), where kept sums each take a carry chain (73 LUT4, 39 carry
    cells).
    """
    a, b = Value.cast(a), Value.cast(b)
    top = len(b) - 1 if b.shape().signed else len(b)
    terms = [Mux(b[i], a, 0) << i for i in range(top)]
    if b.shape().signed:
        terms.append(-(Mux(b[top], a, 0) << top))
    while len(terms) > 1:
        pairs = []
        for i in range(0, len(terms), 2):
            if i + 1 < len(terms):
                total = Signal.like(terms[i] + terms[i + 1], attrs={"keep": 1})
                m.d.comb += total.eq(terms[i] + terms[i + 1])
                pairs.append(total)
            else:
                pairs.append(terms[i])
        terms = pairs
    return terms[0]
