"""ALR INT8 sign units: the twin of ``golden.units.alr_sign_terms``.

For one noisy copy (docs/numerics.md §6) the correlation lane adds, per synapse,

    G_ij += dC * s_ij,    s_ij = sign(a * n_i) * sign(x_j)

with ``n_i`` the neuron's integer noise (stream 1), ``a`` the antithetic sign of the
copy and ``x_j`` the layer input of this noisy copy.  The sign product is -1, 0 or +1,
kept as INT8 (the paper's "sign unit"); the term is a conditional add, subtract or
zero of the loss difference: no multiplier.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import Overflow

from .arith import narrow, sign
from .frontend import DC_BITS, check_common, term_width, terms_layout, x_layout

__all__ = ["NOISE_BITS", "AlrSignTerms"]

#: Width of the integer noise ``n`` (range -510..510, docs/numerics.md §4).
NOISE_BITS = 10


class AlrSignTerms(wiring.Component):
    """ALR sign units for ``lanes`` neurons: ``term = dC * sign(a * n_i) * sign(x_j)``.

    One context per (copy, neuron group) pass; then one layer input per cycle in, the
    ``lanes`` sign products and terms of that input out one cycle later.  Throughput:
    one input per cycle, also across passes.

    Parameters
    ----------
    lanes
        Neurons processed in parallel; lane ``l`` holds neuron ``base + l``.
    grad_bits
        Width of the correlation accumulator ``G``; the terms are narrowed to
        ``min(33, grad_bits + 1)`` bits, which the lane's ``narrow_g(G + term)``
        cannot tell from the exact term (see :mod:`.frontend`).
    overflow
        How the terms are narrowed (``numerics.overflow``).

    Members
    -------
    i_ctx : In(stream.Signature(ctx_layout))
        One transfer per pass: ``dc`` (signed(32), the loss difference of the copy),
        ``antithetic`` (1: odd copy, ``a = -1``) and ``noise`` (``lanes`` x
        signed(10): the neurons' integer noise ``n_i`` before the antithetic sign).
    i_x : In(stream.Signature(x_layout()))
        The layer inputs ``x_j`` of the noisy copy, ``last`` on the final one.
    o_terms : Out(stream.Signature(terms_layout))
        Per input: ``sign`` (``lanes`` x signed(8), the INT8 sign products ``s_ij``),
        ``term`` (``lanes`` x signed(term_bits)) and ``last``.  Latency 1 cycle.

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
        self.term_bits = term_width(DC_BITS + 1, grad_bits)
        self.ctx_layout = data.StructLayout({
            "dc": signed(DC_BITS),
            "antithetic": 1,
            "noise": data.ArrayLayout(signed(NOISE_BITS), lanes),
        })
        self.terms_layout = terms_layout(lanes, self.term_bits,
                                         {"sign": data.ArrayLayout(signed(8), lanes)})
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
        plus = Signal(signed(tb))  # narrow(+dC): the term of s_ij = +1
        minus = Signal(signed(tb))  # narrow(-dC): the term of s_ij = -1
        unit = Signal(data.ArrayLayout(signed(2), self.lanes))  # sign(a * n_i) per lane

        advance = ~out.valid | out.ready
        take = xin.valid & xin.ready
        end = take & xin.payload.last
        m.d.comb += [
            xin.ready.eq(loaded & advance),
            ctx.ready.eq(~loaded | end),
        ]

        with m.If(ctx.valid & ctx.ready):
            m.d.sync += [
                loaded.eq(1),
                plus.eq(narrow(ctx.payload.dc, tb, self.overflow)),
                minus.eq(narrow(-ctx.payload.dc, tb, self.overflow)),
            ]
            for lane in range(self.lanes):
                s = sign(ctx.payload.noise[lane])
                m.d.sync += unit[lane].eq(Mux(ctx.payload.antithetic, -s, s))
        with m.Elif(end):
            m.d.sync += loaded.eq(0)

        x = xin.payload.x
        x_zero = x == 0
        x_negative = x[-1]
        with m.If(advance):
            m.d.sync += out.valid.eq(take)
            with m.If(take):
                m.d.sync += out.payload.last.eq(xin.payload.last)
                for lane in range(self.lanes):
                    u = unit[lane]
                    zero = x_zero | (u == 0)
                    negative = x_negative ^ u[-1]
                    m.d.sync += [
                        out.payload.sign[lane].eq(Mux(zero, 0, Mux(negative, -1, 1))),
                        out.payload.term[lane].eq(Mux(zero, 0, Mux(negative, minus, plus))),
                    ]
        return m
