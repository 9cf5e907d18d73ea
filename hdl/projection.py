"""Target projection's error and gate as logic: what the forward engine forms per neuron.

docs/numerics.md §6, target projection.  On the bias token of each neuron group of a
target-projection pass the forward engine (:meth:`~.forward.ForwardEngine._factors`)
turns each neuron's ``y``, ``q`` and local target ``tl = B_l[label, i]`` (drawn from the
random source, §4) into the gated error

    g_i = activation_gate(q_i, e_i)     (§3: e * phi'(q))
    e_i = projection_error(y_i, tl_i)   drtp: tl; tpsgd-l1: sign(y - tl), 0 where
                                        |y - tl| <= rule.dead_zone; tpsgd-l2: y - tl;
                                        the output layer (delta rule): y - t

and stores it in the factor memory, where the :class:`~.correlation.CorrelationWalker`
reads it to form ``G_ij += g_i * x_j``.  The functions are the twins of
``golden.units.projection_error`` and ``golden.units.activation_gate``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Value
from amaranth.lib import enum

from .arith import sign

__all__ = ["ErrorKind", "Gate", "activation_gate", "projection_error"]


class ErrorKind(enum.Enum, shape=2):
    """Which error a pass uses: a hidden-layer rule, or the output layer's delta rule."""

    #: ``e = tl`` (DRTP)
    DRTP = 0
    #: ``e = sign(y - tl)`` (tpSGD-l1)
    TPSGD_L1 = 1
    #: ``e = y - tl`` (tpSGD-l2)
    TPSGD_L2 = 2
    #: ``e = y - t`` with ``t = target_on`` at the label and 0 elsewhere (the output layer)
    DELTA = 3


class Gate(enum.Enum, shape=2):
    """The ``phi'`` gate of docs/numerics.md §3 (``NONE``: the linear output layer)."""

    NONE = 0
    RELU = 1
    LEAKY_RELU = 2
    HARD_SIGMOID = 3


def projection_error(kind: Value, y: Value, local_target: Value, target: Value, dead_zone: int = 0) -> Value:
    """The error ``e`` of one neuron as logic (twin of ``golden.units.projection_error``).

    Parameters
    ----------
    kind
        An :class:`ErrorKind` value.
    y
        The neuron's INT8 activation output.
    local_target
        ``tl = B_l[label, i]`` (INT8), used by the hidden-layer rules.
    target
        ``t`` of an output neuron (``target_on`` or 0), used by :attr:`ErrorKind.DELTA`.
    dead_zone
        ``rule.dead_zone``, fixed at generation: :attr:`ErrorKind.TPSGD_L1` gives 0 where
        ``|y - tl| <= dead_zone`` (two compares against constants; 0 generates the plain sign).

    Returns
    -------
    Value
        -255..255 (nine bits, ``geometry.FACTOR_BITS_PROJECTION``).
    """
    diff = y - local_target
    l1 = sign(diff)
    if dead_zone:
        l1 = Mux((diff > dead_zone) | (diff < -dead_zone), l1, Const(0, l1.shape()))
    return Mux(kind == ErrorKind.DRTP, local_target,
               Mux(kind == ErrorKind.TPSGD_L1, l1,
                   Mux(kind == ErrorKind.TPSGD_L2, diff, y - target)))


def activation_gate(kind: Value, q: Value, e: Value) -> Value:
    """``e * phi'(q)`` as logic (twin of ``golden.units.activation_gate``): a bit gate or a shift.

    Parameters
    ----------
    kind
        A :class:`Gate` value.
    q
        The neuron's requantised INT8 pre-activation.
    e
        The error (signed).
    """
    zero = Const(0, e.shape())
    return Mux(kind == Gate.RELU, Mux(q > 0, e, zero),
               Mux(kind == Gate.LEAKY_RELU, Mux(q >= 0, e, e >> 3),
                   Mux(kind == Gate.HARD_SIGMOID, Mux((q > -64) & (q < 63), e, zero), e)))
