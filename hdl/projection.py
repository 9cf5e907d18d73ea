"""Target-projection front end: the twin of ``golden.units.target_projection_terms``.

For one sample (docs/numerics.md §6, target projection) the correlation lane adds, per
synapse, ``G_ij += g_i * x_j`` with the gated error

    g_i = activation_gate(q_i, e_i)     (§3: e * phi'(q))
    e_i = projection_error(y_i, tl_i)   drtp: tl; tpsgd-l1: sign(y - tl); tpsgd-l2: y - tl;
                                        the output layer (delta rule): y - t

and the local target ``tl_i = B_l[label, i]`` regenerated from the random source
(§4: stream 2, event 0, ``projection_value(draw(pass_key(seed, 2, 0), index))`` with
``index = projection_offset_l + label * n_out + i``) instead of being stored.

Per pass a setup stage turns the context into the ``lanes`` gated errors, sharing one
pipelined ``mix32`` (:class:`.random.Mix32`) between the lanes, while the previous pass
streams; the stream stage multiplies each ``x_j`` by every lane's ``g_i``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import Overflow

from .arith import narrow, sign
from .frontend import X_BITS, check_common, term_width, terms_layout, x_layout
from .random import MIX32_LATENCY, STREAM_PROJECTION, Mix32, mix32_int
from .random import projection_value as _projection_value

__all__ = [
    "ERROR_BITS",
    "TERM_BITS",
    "ErrorKind",
    "Gate",
    "TargetProjectionTerms",
    "activation_gate",
    "projection_error",
]

#: Width of the error ``e`` and the gated error ``g``: ``y - tl`` spans -255..255.
ERROR_BITS = 9
#: ``|g * x| <= 255 * 128 < 2^15``: the exact term fits 16 bits.
TERM_BITS = 16

# What travels through the shared hash pipe with each word.
_EMPTY, _KEY, _FIRST, _SECOND = 0, 1, 2, 3


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


def projection_error(kind: Value, y: Value, local_target: Value, target: Value) -> Value:
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

    Returns
    -------
    Value
        ``signed(ERROR_BITS)``: -255..255.
    """
    diff = y - local_target
    return Mux(kind == ErrorKind.DRTP, local_target,
               Mux(kind == ErrorKind.TPSGD_L1, sign(diff),
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


class TargetProjectionTerms(wiring.Component):
    """Target projection for ``lanes`` neurons: ``term = activation_gate(q_i, e_i) * x_j``.

    Setup, per pass and overlapping the previous pass's stream: the projection key
    ``pass_key(seed, 2, 0) = mix32(seed ^ mix32(2))`` is cached until ``seed`` changes;
    each lane's word ``draw(key, index) = mix32(mix32(key ^ index))`` goes through the
    shared :class:`.random.Mix32` twice (the second round re-enters the pipe ahead of
    new draws), and on its way out becomes ``tl``, ``e`` and ``g``.  A context is
    ready for streaming at most ``2 * lanes + 2 * MIX32_LATENCY`` cycles after it was
    taken (``lanes + 2 * MIX32_LATENCY + 1`` for up to ``MIX32_LATENCY`` lanes;
    ``MIX32_LATENCY`` more when the key is recomputed), so passes at least that long
    follow each other without a bubble.

    Stream: one ``x_j`` per cycle in, the ``lanes`` terms out one cycle later.

    Parameters
    ----------
    lanes
        Neurons processed in parallel; lane ``l`` holds neuron ``base + l``.
    classes
        Number of classes (the output layer width): sizes ``label``.
    max_width
        Largest layer width ``n_out``: sizes ``base`` and ``n_out``.
    grad_bits, overflow
        As for the other front ends.  The exact terms fit :data:`TERM_BITS` (16) bits,
        no more than ``grad_bits + 1`` for any allowed ``grad_bits``: never narrowed.

    Members
    -------
    seed : In(32)
        The configuration's seed (quasi-static: change it only while no context is
        being set up).
    target_on : In(7)
        One-hot target value of the label's output (quasi-static).
    i_ctx : In(stream.Signature(ctx_layout))
        One transfer per (sample, layer, neuron group) pass: ``error``
        (:class:`ErrorKind`), ``gate`` (:class:`Gate`), ``label``, ``base`` (the neuron of
        lane 0), ``n_out`` (the layer width), ``offset`` (the layer's
        ``projection_offset``, 32 bits), ``y`` and ``q`` (``lanes`` x signed(8): the
        lanes' activation outputs and requantised pre-activations).
    i_x : In(stream.Signature(x_layout()))
        The layer inputs ``x_j``, ``last`` on the final one.
    o_terms : Out(stream.Signature(terms_layout))
        Per input: ``term`` (``lanes`` x signed(16)) and ``last``.  Latency 1 cycle.

    Attributes
    ----------
    term_bits : int
        Width of the emitted terms (16).
    ctx_layout, terms_layout : data.StructLayout
        Payload layouts of ``i_ctx`` and ``o_terms``.
    """

    def __init__(self, *, lanes: int, classes: int, max_width: int, grad_bits: int = 32,
                 overflow: Overflow | str = Overflow.SATURATE) -> None:
        self.overflow = check_common(lanes, grad_bits, overflow)
        for name, value in (("classes", classes), ("max_width", max_width)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"{name} must be an integer 1..4096, not {value!r}")
        self.lanes = lanes
        self.classes = classes
        self.max_width = max_width
        self.grad_bits = grad_bits
        self.term_bits = term_width(TERM_BITS, grad_bits)
        self.ctx_layout = data.StructLayout({
            "error": ErrorKind,
            "gate": Gate,
            "label": unsigned(max(1, (classes - 1).bit_length())),
            "base": unsigned(max(1, (max_width - 1).bit_length())),
            "n_out": unsigned(max_width.bit_length()),
            "offset": unsigned(32),
            "y": data.ArrayLayout(signed(X_BITS), lanes),
            "q": data.ArrayLayout(signed(X_BITS), lanes),
        })
        self.terms_layout = terms_layout(lanes, self.term_bits)
        super().__init__({
            "seed": In(32),
            "target_on": In(7),
            "i_ctx": In(stream.Signature(self.ctx_layout)),
            "i_x": In(stream.Signature(x_layout())),
            "o_terms": Out(stream.Signature(self.terms_layout)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        ctx, xin, out = self.i_ctx, self.i_x, self.o_terms
        lanes = self.lanes
        p = ctx.payload

        # -- the shared hash pipe and what travels with each word ----------------------
        m.submodules.mix = mix = Mix32()  # free-running
        pipe_in = Signal(32)
        tag_in = Signal(2)
        tags = [Signal(2, name=f"tag{k}") for k in range(MIX32_LATENCY)]
        m.d.sync += [t.eq(prev) for t, prev in zip(tags, [tag_in, *tags[:-1]], strict=True)]
        m.d.comb += mix.i.eq(pipe_in)
        word, tag_out = mix.o, tags[-1]
        recirculate = tag_out == _FIRST  # a first round is back: hash it again

        # -- setup: context -> the lanes' gated errors ---------------------------------
        key = Signal(32)
        key_seed = Signal(32)
        key_ok = Signal()
        kind = Signal(ErrorKind)
        gate = Signal(Gate)
        hot = Signal(signed(max(len(p.label), len(p.base)) + 1))  # label - base: the hot lane
        index = Signal(32)  # projection index of the next lane to draw
        feed = Signal(range(lanes))  # lanes sent into the pipe
        lane = Signal(range(lanes))  # lanes whose word came out
        y_queue = Signal(X_BITS * lanes)  # lane `lane` at the bottom
        q_queue = Signal(X_BITS * lanes)
        gated = Signal(data.ArrayLayout(signed(ERROR_BITS), lanes))  # shifts in at the top
        gated_full = Signal()  # `gated` holds a finished context

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctx.ready.eq(~gated_full)
                with m.If(ctx.valid & ~gated_full):
                    m.d.sync += [
                        kind.eq(p.error),
                        gate.eq(p.gate),
                        hot.eq(p.label - p.base),
                        index.eq(p.offset + p.label * p.n_out + p.base),
                        feed.eq(0),
                        lane.eq(0),
                        y_queue.eq(p.y.as_value()),
                        q_queue.eq(p.q.as_value()),
                    ]
                    with m.If(key_ok & (key_seed == self.seed)):
                        m.next = "FEED"
                    with m.Else():  # the pipe is empty here
                        m.d.comb += [
                            pipe_in.eq(self.seed ^ mix32_int(STREAM_PROJECTION)),
                            tag_in.eq(_KEY),
                        ]
                        m.d.sync += key_seed.eq(self.seed)
                        m.next = "KEY"
            with m.State("KEY"):
                m.d.sync += key.eq(word)  # the last write, with the key's tag, is the key
                with m.If(tag_out == _KEY):
                    m.d.sync += key_ok.eq(1)
                    m.next = "FEED"
            with m.State("FEED"):
                with m.If(recirculate):
                    m.d.comb += [pipe_in.eq(word), tag_in.eq(_SECOND)]
                with m.Else():
                    m.d.comb += [pipe_in.eq(key ^ index), tag_in.eq(_FIRST)]
                    m.d.sync += [index.eq(index + 1), feed.eq(feed + 1)]
                    with m.If(feed == lanes - 1):
                        m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(recirculate):
                    m.d.comb += [pipe_in.eq(word), tag_in.eq(_SECOND)]
                with m.If((tag_out == _SECOND) & (lane == lanes - 1)):
                    m.next = "IDLE"

        # A word out of its second round is lane `lane`'s B entry.
        local_target = _projection_value(word)
        y = y_queue[:X_BITS].as_signed()
        q = q_queue[:X_BITS].as_signed()
        target = Mux(hot == lane, self.target_on, 0)
        e = Signal(signed(ERROR_BITS))
        g = Signal(signed(ERROR_BITS))
        m.d.comb += [
            e.eq(projection_error(kind, y, local_target, target)),
            g.eq(activation_gate(gate, q, e)),
        ]
        with m.If(tag_out == _SECOND):
            m.d.sync += [
                y_queue.eq(y_queue >> X_BITS),
                q_queue.eq(q_queue >> X_BITS),
                gated.eq(Cat(gated.as_value()[ERROR_BITS:], g)),
                lane.eq(lane + 1),
            ]
            with m.If(lane == lanes - 1):
                m.d.sync += gated_full.eq(1)

        # -- stream stage: take over the next context, then term = g_i * x_j -----------
        current = Signal(data.ArrayLayout(signed(ERROR_BITS), lanes))
        loaded = Signal()
        advance = ~out.valid | out.ready
        take = xin.valid & xin.ready
        end = take & xin.payload.last
        m.d.comb += xin.ready.eq(loaded & advance)

        with m.If(gated_full & (~loaded | end)):
            m.d.sync += [current.eq(gated), loaded.eq(1), gated_full.eq(0)]
        with m.Elif(end):
            m.d.sync += loaded.eq(0)

        with m.If(advance):
            m.d.sync += out.valid.eq(take)
            with m.If(take):
                m.d.sync += out.payload.last.eq(xin.payload.last)
                for k in range(lanes):
                    product = (current[k] * xin.payload.x)[:TERM_BITS].as_signed()  # exact
                    m.d.sync += out.payload.term[k].eq(
                        narrow(product, self.term_bits, self.overflow))
        return m
