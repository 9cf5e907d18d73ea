"""What the three correlation front ends share: stream layouts, term widths, parameter checks.

The front ends (:mod:`.alr`, :mod:`.node`, :mod:`.projection`) turn per-synapse
information into the term the correlation lane adds (``G += term``, docs/numerics.md
§6).  They are lane-parallel like the forward engine: ``lanes`` neurons
``i = base + lane`` at a time, the layer inputs ``x_j`` streamed one per cycle.

Every front end has the same three streams:

``i_ctx``
    one transfer per *pass*: what is constant over the pass (the loss difference,
    the lanes' noise, signs or errors, ...);
``i_x``
    the layer inputs of the pass, one ``x_j`` per transfer, ``last`` on the final one
    (``j = n_in``, the bias input 127, in a whole layer pass);
``o_terms``
    one transfer per ``x_j``: the ``lanes`` terms for synapses ``(base + lane, j)``,
    with ``last`` copied from the input.

A context may be offered before, during or after the previous pass.  ALR and node
take it with the previous pass's ``last`` input (or at once when no pass is loaded);
the projection unit takes it into its setup stage as soon as that is free, during the
previous pass.  Either way back-to-back passes run without a bubble (for the
projection unit: passes at least as long as its setup).

The terms carry no synapse address: the consumer counts ``j`` from ``last`` to
``last`` and knows ``base`` from the context it sent, so it can form the
``correlation.row_layout`` rows (``row`` from the group and ``j``, ``mask`` clearing
the lanes at or beyond ``n_out`` in a layer's last group; those lanes' terms are
don't-care).

Term width.  The correlation lane computes ``G = narrow_g(G + term)`` with
``grad_bits``-bit ``G``.  For ``|term| >= 2^grad_bits`` the sum is out of range
whatever ``G`` is, so saturating the term to ``grad_bits + 1`` bits changes no
result under ``saturate``; under ``wrap`` the result depends only on ``term mod
2^grad_bits``.  Either way ``narrow(term, grad_bits + 1)`` is exact for the lane, so
each front end emits ``term_bits = min(natural width, grad_bits + 1)`` bits
(:func:`term_width`, the same rule as ``correlation.term_bits``), narrowed with the
configured overflow mode (``arith.narrow``).  With ``grad_bits`` of 32 or more the
ALR terms are the exact golden terms.
"""

from __future__ import annotations

from amaranth.hdl import Shape, signed
from amaranth.lib import data

from perturbo.config import Overflow

# One rule for the width of a correlation term, shared with the correlation unit.
from .correlation import term_bits as term_width

__all__ = [
    "DC_BITS",
    "X_BITS",
    "check_common",
    "term_width",
    "terms_layout",
    "x_layout",
]

#: Width of the loss difference ``dC`` (docs/numerics.md §2: exact, fits 32 bits).
DC_BITS = 32
#: Width of a layer input ``x_j`` (INT8).
X_BITS = 8


def check_common(lanes: int, grad_bits: int, overflow: Overflow) -> Overflow:
    """Validate the parameters every front end takes; return ``overflow`` as an :class:`Overflow`.

    Raises
    ------
    TypeError
        ``lanes`` or ``grad_bits`` is not an integer.
    ValueError
        ``lanes`` is not 1..128, ``grad_bits`` not 16..48 (the ranges of the
        configuration), or ``overflow`` not an overflow mode.
    """
    if not isinstance(lanes, int) or isinstance(lanes, bool):
        raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
    if not 1 <= lanes <= 128:
        raise ValueError(f"lanes must be 1..128, not {lanes!r}")
    if not isinstance(grad_bits, int) or isinstance(grad_bits, bool):
        raise TypeError(f"grad_bits must be an integer, not {grad_bits!r}")
    if not 16 <= grad_bits <= 48:
        raise ValueError(f"grad_bits must be 16..48, not {grad_bits!r}")
    try:
        return Overflow(overflow)
    except ValueError:
        raise ValueError(
            f"overflow must be one of {[o.value for o in Overflow]}, not {overflow!r}"
        ) from None


def x_layout() -> data.StructLayout:
    """Payload of ``i_x``: one INT8 layer input and the end-of-pass flag.

    Members
    -------
    x : signed(8)
        The layer input ``x_j`` (with the bias input 127 as the last one of a layer).
    last : unsigned(1)
        The final input of the pass.
    """
    return data.StructLayout({"x": signed(X_BITS), "last": 1})


def terms_layout(lanes: int, term_bits: int, extra: dict[str, Shape] | None = None
                 ) -> data.StructLayout:
    """Payload of ``o_terms``: ``lanes`` signed terms, ``last``, and front-end specific fields.

    Members
    -------
    term : ArrayLayout(signed(term_bits), lanes)
        The term of synapse ``(base + lane, j)`` for every lane.
    last : unsigned(1)
        The term of the pass's final input.
    """
    return data.StructLayout({
        "term": data.ArrayLayout(signed(term_bits), lanes),
        "last": 1,
        **(extra or {}),
    })
