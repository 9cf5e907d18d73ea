"""The loss unit: ``L = sum_k (y_k - t_k)^2`` against the one-hot target, and ``dC = L - L0``.

docs/numerics.md §2: the target is ``target_on`` at the label and 0 elsewhere; the loss
is exact; ``dC`` is the loss of a perturbed copy minus the loss of the baseline pass of
the same sample, which the unit keeps from the last baseline pass it saw.

It takes the output layer's neuron groups as the forward engine delivers them and works
through the lanes of a group one per cycle (stopping at the first empty lane), so a
group costs at most ``lanes + 1`` cycles; the output layer's groups arrive
``n_in + 1`` cycles apart.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, ShapeLike, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .geometry import Geometry

__all__ = ["LossUnit", "DC_BITS"]

#: Width of the loss difference ``dC``.
DC_BITS = 32


def take_group(m: Module, i: stream.Interface, cur: Signal, k: Signal) -> None:
    """The idle state of a unit that walks a result group of the forward engine lane by
    lane (the loss unit, the inference output writer): take the next group into ``cur``,
    restart the lane counter ``k`` and go to state ``LANES``."""
    m.d.comb += i.ready.eq(1)
    with m.If(i.valid):
        m.d.sync += [cur.eq(i.payload), k.eq(0)]
        m.next = "LANES"


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
        m = Module()
        geo, lanes = self.geometry, self.geometry.lanes
        cur = Signal(self.group_layout)
        k = Signal(range(max(lanes, 2)))  # one bit even for one lane: no [-1:0] vector
        total = Signal(geo.loss_bits)
        base_loss = Signal(geo.loss_bits)

        index = cur.group * lanes + k
        target = Mux(index == cur.label, self.target_on, 0)
        diff = Signal(signed(9))
        m.d.comb += diff.eq(cur.y[k] - target)
        square = diff * diff  # at most 255^2
        total_next = (total + square)[: geo.loss_bits]

        res = self.o.payload
        with m.FSM():
            with m.State("IDLE"):
                take_group(m, self.i, cur, k)
            with m.State("LANES"):
                lane_on = cur.mask.bit_select(k, 1)
                with m.If(lane_on):
                    m.d.sync += total.eq(total_next)
                end = ~lane_on | (k == lanes - 1)
                m.d.sync += k.eq(k + 1)
                with m.If(end):
                    with m.If(cur.last):
                        loss = Mux(lane_on, total_next, total)
                        m.d.sync += [
                            res.loss.eq(loss),
                            res.dc.eq(Mux(cur.baseline, 0, loss - base_loss)),
                            res.baseline.eq(cur.baseline),
                            res.tag.eq(cur.tag),
                            total.eq(0),
                        ]
                        with m.If(cur.baseline):
                            m.d.sync += base_loss.eq(loss)
                        m.next = "OUT"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("OUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m
