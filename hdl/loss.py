"""The loss unit: ``L = sum_k (y_k - t_k)^2`` against the one-hot target, and ``dC = L - L0``.

docs/numerics.md §2: the target is ``target_on`` at the label and 0 elsewhere; the loss
is exact; ``dC`` is the loss of a perturbed copy minus the loss of the baseline pass of
the same sample, which the unit keeps from the last baseline pass it saw.

It takes the output layer's neuron groups as the forward engine delivers them and works
through the lanes of a group one per cycle (from 16 lanes by shifting the group down a
lane a cycle, :func:`next_lane`), stopping at the first empty lane, so a
group costs at most ``lanes + 1`` cycles; the output layer's groups arrive
``n_in + 1`` cycles apart.

Each lane goes through a pipeline of three registers (the difference ``y - t``, its
square, the running sum), and ``dC`` is formed in a cycle of its own, so no cycle holds
more than one of the lane select, the multiplier and an adder (one 19-20 ns path on the
ECP5 when they shared a cycle).  The pipeline drains while the unit waits for the pass's
next group; after the pass's last lane the result is valid 4 cycles later (it was 1).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, ShapeLike, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp import RegisteredProduct
from .geometry import Geometry

__all__ = ["LossUnit", "DC_BITS", "take_group", "lane_of", "next_lane"]

#: Width of the loss difference ``dC``.
DC_BITS = 32


def take_group(m: Module, i: stream.Interface, cur: Signal, k: Signal) -> None:
    """The idle state of a unit that walks a result group of the forward engine lane by
    lane (the loss unit, the inference output writer): take the next group into ``cur``,
    restart the lane counter ``k`` and go to state ``LANES``."""
    m.d.comb += i.ready.eq(1)
    # ``cur`` follows the payload while idle and keeps the one taken: its enable is the
    # state's, not ``i.valid``'s (a group is 600 bits at 64 lanes, and the valid, through
    # the forward engine's skid select, onto their enables was a slowest path there)
    m.d.sync += [cur.eq(i.payload), k.eq(0)]
    with m.If(i.valid):
        m.next = "LANES"


#: From this many lanes a walk through a group shifts the group down a lane a cycle and
#: reads lane 0 (:func:`next_lane`); with fewer it selects lane ``k``.  The select is a
#: ``lanes``-way multiplexer, the slowest path of a 16-lane ECP5 build (``k`` into the loss
#: unit's difference), where the shift costs fewer LUT4 (yosys, loss unit and output
#: writer: 392 against 462 at 16 lanes); at 8 lanes it would cost 34 LUT4 more, and at
#: 2 lanes 19, more than the 2-lane DRTP iCEBreaker example has to spare.
SHIFTED_WALK_LANES = 16


def lane_of(cur: data.View, k: Value) -> tuple[Value, Value]:
    """Lane ``k``'s value and mask bit in the group ``cur`` being walked (see :func:`next_lane`)."""
    if len(cur.mask) >= SHIFTED_WALK_LANES:
        return cur.y[0], cur.mask[0]
    return cur.y[k], cur.mask.bit_select(k, 1)


def next_lane(m: Module, cur: data.View) -> None:
    """Move the walk through the group ``cur`` on a lane: with :data:`SHIFTED_WALK_LANES`
    or more, shift ``y`` and ``mask`` down a lane (the counter ``k`` moves on anyway)."""
    if len(cur.mask) >= SHIFTED_WALK_LANES:
        m.d.sync += [cur.y.as_value().eq(cur.y.as_value() >> Shape.cast(cur.y.shape().elem_shape).width),
                     cur.mask.eq(cur.mask >> 1)]


class LossUnit(wiring.Component):
    """Squared error of the output layer against the one-hot target, per pass.

    Parameters
    ----------
    geometry
        Sizes (lanes, classes, groups of the output layer).
    tag_shape
        A tag that goes through with each pass (taken from its last group).

    Members
    -------
    i : ``In(stream.Signature(group_layout))``
        The output layer's groups: ``y`` (``lanes`` INT8), ``mask`` (lanes holding a
        neuron: a prefix), ``group``, ``last`` (the pass's last group), ``label``,
        ``baseline`` (the pass is a baseline pass) and ``tag``.
    target_on : ``In(7)``
        The target value at the label.
    o : ``Out(stream.Signature(result_layout))``
        One transfer per pass: ``loss`` (exact, unsigned), ``dc`` (``L - L0``, 0 for a
        baseline pass), ``baseline`` and ``tag``.
    """

    #: Pipeline stages a lane goes through before its square is in the sum (D, S, T): the
    #: unit stays in ``DRAIN`` this many cycles after the pass's last lane, so its result
    #: is offered ``STAGES`` cycles later than an unpipelined unit's.
    STAGES = 3

    def __init__(self, geometry: Geometry, tag_shape: ShapeLike = 1) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        self.geometry = geo = geometry
        out = geo.layers[-1]
        self.group_layout = data.StructLayout({
            "y": data.ArrayLayout(signed(8), geo.lanes),
            "mask": geo.lanes,
            "group": range(max(2, out.groups)),
            "last": 1,
            "label": geo.label_bits,
            "baseline": 1,
            "tag": tag_shape,
        })
        self.result_layout = data.StructLayout({
            "loss": geo.loss_bits,
            "dc": signed(DC_BITS),
            "baseline": 1,
            "tag": tag_shape,
        })
        super().__init__({
            "i": In(stream.Signature(self.group_layout)),
            "target_on": In(7),
            "o": Out(stream.Signature(self.result_layout)),
        })

    def elaborate(self, platform: object) -> Module:
        """The lane walk (state ``LANES``) feeds three pipeline stages: D the difference
        ``y - t``, S its square, T the running sum; state ``DRAIN`` waits for the pass's
        last lane to reach the sum and forms ``loss`` and ``dC``; ``OUT`` hands them on."""
        m = Module()
        geo, lanes = self.geometry, self.geometry.lanes
        cur = Signal(self.group_layout)
        k = Signal(range(max(lanes, 2)))  # one bit even for one lane: no [-1:0] vector
        index = Signal(range(max(2, geo.layers[-1].groups * lanes)))  # lane k's neuron
        total = Signal(geo.loss_bits)
        base_loss = Signal(geo.loss_bits)

        # stage D: lane k's difference from the target; ``on`` (a neuron: add its square)
        # and ``end`` (the pass's last lane) go along with it
        d_on, d_end = Signal(), Signal()
        diff = Signal(signed(9))  # the difference stage D registers (0 outside the lane walk)
        target = Mux(index == cur.label, self.target_on, 0)
        # stage S: the square (at most 255^2), a multiplier with a register on either side;
        # the product's inside an ECP5's multiplier (the difference's register through the
        # multiplier into a fabric register was a slowest path of the 100 MHz builds, 10.4 ns
        # with 5.2 of routing to the multiplier and back)
        m.submodules.square = square = RegisteredProduct(signed(9), signed(9), operands_inside=False)
        m.d.comb += [square.a.eq(diff), square.b.eq(diff), square.en.eq(1)]
        s_on, s_end = Signal(), Signal()
        s_square = square.p[:16]
        m.d.sync += [s_on.eq(d_on), s_end.eq(d_end)]
        # stage T: the running sum; ``t_end``: it holds the pass's loss
        t_end = Signal()
        m.d.sync += t_end.eq(s_end)
        with m.If(s_on):
            m.d.sync += total.eq((total + s_square)[: geo.loss_bits])

        m.d.sync += [d_on.eq(0), d_end.eq(0)]
        res = self.o.payload
        with m.FSM():
            with m.State("IDLE"):
                take_group(m, self.i, cur, k)
                m.d.sync += index.eq(self.i.payload.group * lanes)
            with m.State("LANES"):
                y, lane_on = lane_of(cur, k)
                end = ~lane_on | (k == lanes - 1)
                next_lane(m, cur)
                m.d.comb += diff.eq(y - target)
                m.d.sync += [
                    d_on.eq(lane_on),
                    d_end.eq(end & cur.last),
                    k.eq(k + 1),
                    index.eq(index + 1),
                ]
                with m.If(end & cur.last):
                    m.next = "DRAIN"
                with m.Elif(end):
                    m.next = "IDLE"
            with m.State("DRAIN"), m.If(t_end):
                m.d.sync += [
                    res.loss.eq(total),
                    res.dc.eq(Mux(cur.baseline, 0, total - base_loss)),
                    res.baseline.eq(cur.baseline),
                    res.tag.eq(cur.tag),
                    total.eq(0),
                ]
                with m.If(cur.baseline):
                    m.d.sync += base_loss.eq(total)
                m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m
