"""MGD node-perturbation front end: the twin of ``golden.units.mgd_node_terms``.

For one perturbed copy (docs/numerics.md §6) the correlation lane adds, per synapse,

    G_ij += dC * (a * s_i) * x0_j

with ``s_i = +-1`` the neuron's perturbation sign (stream 1, bit 31 of the word), ``a``
the antithetic sign of the copy and ``x0_j`` the layer input of the *baseline* pass.
``dC * x0_j`` is the same for every lane, so one multiplier serves all lanes and each
lane only negates or passes it.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import Overflow

from .arith import narrow
from .frontend import DC_BITS, X_BITS, check_common, term_width, terms_layout, x_layout

__all__ = ["MgdNodeTerms"]


class MgdNodeTerms(wiring.Component):
    """MGD node perturbation for ``lanes`` neurons: ``term = dC * (a * s_i) * x0_j``.

    One context per (copy, neuron group) pass; then one baseline input per cycle in, the
    ``lanes`` terms out two cycles later (stage 1: the shared product ``dC * x0_j``;
    stage 2: per-lane sign and narrowing).  Throughput: one input per cycle, also across
    passes.

    Parameters
    ----------
    lanes
        Neurons processed in parallel; lane ``l`` holds neuron ``base + l``.
    grad_bits
        Width of the correlation accumulator ``G``; the terms are narrowed to
        ``min(40, grad_bits + 1)`` bits, which the lane's ``narrow_g(G + term)``
        cannot tell from the exact term (see :mod:`.frontend`).
    overflow
        How the terms are narrowed (``numerics.overflow``).

    Members
    -------
    i_ctx : In(stream.Signature(ctx_layout))
        One transfer per pass: ``dc`` (signed(32), the loss difference of the copy),
        ``antithetic`` (1: odd copy, ``a = -1``) and ``sign_bit`` (``lanes`` x 1: bit 31
        of each neuron's random word, 0 for ``s_i = +1``, 1 for ``s_i = -1``).
    i_x : In(stream.Signature(x_layout()))
        The baseline layer inputs ``x0_j``, ``last`` on the final one.
    o_terms : Out(stream.Signature(terms_layout))
        Per input: ``term`` (``lanes`` x signed(term_bits)) and ``last``.  Latency 2 cycles.

    Attributes
    ----------
    term_bits : int
        Width of the emitted terms.
    ctx_layout, terms_layout : data.StructLayout
        Payload layouts of ``i_ctx`` and ``o_terms``.
    """

    def __init__(self, *, lanes: int, grad_bits: int = 32,
                 overflow: Overflow | str = Overflow.SATURATE) -> None:
        self.overflow = check_common(lanes, grad_bits, overflow)
        self.lanes = lanes
        self.grad_bits = grad_bits
        self.term_bits = term_width(DC_BITS + X_BITS, grad_bits)
        self.ctx_layout = data.StructLayout({
            "dc": signed(DC_BITS),
            "antithetic": 1,
            "sign_bit": data.ArrayLayout(1, lanes),
        })
        self.terms_layout = terms_layout(lanes, self.term_bits)
        super().__init__({
            "i_ctx": In(stream.Signature(self.ctx_layout)),
            "i_x": In(stream.Signature(x_layout())),
            "o_terms": Out(stream.Signature(self.terms_layout)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        ctx, xin, out = self.i_ctx, self.i_x, self.o_terms
        tb = self.term_bits

        loaded = Signal()  # a pass's context is held
        dc = Signal(signed(DC_BITS))
        flip = Signal(self.lanes)  # a * s_i = -1

        advance = ~out.valid | out.ready  # the whole pipeline moves together
        take = xin.valid & xin.ready
        end = take & xin.payload.last
        m.d.comb += [
            xin.ready.eq(loaded & advance),
            ctx.ready.eq(~loaded | end),
        ]

        with m.If(ctx.valid & ctx.ready):
            m.d.sync += [
                loaded.eq(1),
                dc.eq(ctx.payload.dc),
                flip.eq(ctx.payload.sign_bit.as_value() ^ ctx.payload.antithetic.replicate(
                    self.lanes)),
            ]
        with m.Elif(end):
            m.d.sync += loaded.eq(0)

        # Stage 1: the product every lane shares; the lanes' signs travel with it, so
        # the next pass's context may load while this one drains.
        s1_valid = Signal()
        s1_product = Signal(signed(DC_BITS + X_BITS))
        s1_flip = Signal(self.lanes)
        s1_last = Signal()
        # Stage 2 (the output register): negate or pass per lane, then narrow.
        plus = narrow(s1_product, tb, self.overflow)
        minus = narrow(-s1_product, tb, self.overflow)
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(take),
                out.valid.eq(s1_valid),
            ]
            with m.If(take):
                m.d.sync += [
                    s1_product.eq(dc * xin.payload.x),
                    s1_flip.eq(flip),
                    s1_last.eq(xin.payload.last),
                ]
            with m.If(s1_valid):
                m.d.sync += out.payload.last.eq(s1_last)
                for lane in range(self.lanes):
                    m.d.sync += out.payload.term[lane].eq(Mux(s1_flip[lane], minus, plus))
        return m
