"""The update unit: ``W = narrow_w(W - round_shift(U * lr_mult, lr_shift_l))`` and ``G = 0``.

docs/numerics.md §6, "Update".  ``U = G`` (sgd), or with ``optimizer: momentum``
``M = narrow_g(M - round_shift(M, momentum_shift) + G)`` and ``U = M``.  One row of
``lanes`` weights per cycle over every row the network uses, in three stages: read
``W``, ``G`` (and ``M``); clear ``G`` and write ``M``; write ``W``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arith import narrow, round_shift
from .geometry import Geometry
from .memories import LanePortSignature

__all__ = ["UpdateUnit"]


class UpdateUnit(wiring.Component):
    """Applies the accumulated ``G`` to the master weights once per training step.

    Parameters
    ----------
    geometry
        Sizes, widths, learning-rate shifts, rounding and overflow.

    Members
    -------
    start : ``In(1)``
        Pulse: sweep every row once.
    busy : ``Out(1)``
        High from the cycle after ``start`` until the last row is written.
    lr_mult : ``In(8)``
        Learning-rate numerator (1..255).
    weights : ``Out(LanePortSignature(lanes, row_bits, signed(weight_bits)))``
    grads : ``Out(LanePortSignature(lanes, row_bits, signed(grad_bits)))``
    momentum : ``Out(LanePortSignature(lanes, row_bits, signed(grad_bits)))``
        Only with ``optimizer: momentum``.
    """

    def __init__(self, geometry: Geometry) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        self.geometry = geo = geometry
        members = {
            "start": In(1),
            "busy": Out(1),
            "lr_mult": In(8),
            "weights": Out(LanePortSignature(geo.lanes, geo.row_bits, signed(geo.weight_bits))),
            "grads": Out(LanePortSignature(geo.lanes, geo.row_bits, signed(geo.grad_bits))),
        }
        if geo.momentum:
            members["momentum"] = Out(LanePortSignature(geo.lanes, geo.row_bits,
                                                        signed(geo.grad_bits)))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        geo, lanes = self.geometry, self.geometry.lanes
        gb, wb = geo.grad_bits, geo.weight_bits
        layers = geo.layers
        n = len(layers)
        layer_shape = range(max(2, n))

        # stage A: read
        active = Signal()
        row = Signal(geo.row_bits)
        layer = Signal(layer_shape)
        last_row = row == geo.rows - 1
        next_layer_row = [lay.row_base + lay.rows - 1 for lay in layers]
        with m.If(self.start):
            m.d.sync += [active.eq(1), row.eq(0), layer.eq(0)]
        with m.Elif(active):
            m.d.sync += row.eq(row + 1)
            with m.Switch(layer):
                for lay in layers[:-1]:
                    with m.Case(lay.index):
                        with m.If(row == next_layer_row[lay.index]):
                            m.d.sync += layer.eq(layer + 1)
            with m.If(last_row):
                m.d.sync += active.eq(0)
        ports = [self.weights, self.grads] + ([self.momentum] if geo.momentum else [])
        for p in ports:
            m.d.comb += [p.raddr.eq(row), p.ren.eq(1)]

        # stage B: momentum, clear G
        b_valid = Signal()
        b_row = Signal(geo.row_bits)
        b_layer = Signal(layer_shape)
        m.d.sync += [b_valid.eq(active), b_row.eq(row), b_layer.eq(layer)]
        c_valid = Signal()
        c_row = Signal(geo.row_bits)
        c_layer = Signal(layer_shape)
        c_w = Signal(data.ArrayLayout(signed(wb), lanes))
        c_u = Signal(data.ArrayLayout(signed(gb), lanes))
        m.d.sync += [c_valid.eq(b_valid), c_row.eq(b_row), c_layer.eq(b_layer),
                     c_w.eq(self.weights.rdata)]
        m.d.comb += [
            self.grads.waddr.eq(b_row),
            self.grads.we.eq(b_valid.replicate(lanes)),
        ]
        for k in range(lanes):
            m.d.comb += self.grads.wdata[k].eq(0)
            g = self.grads.rdata[k]
            if geo.momentum:
                mom = self.momentum.rdata[k]
                new_m = narrow(mom - round_shift(mom, geo.momentum_shift, geo.rounding) + g,
                               gb, geo.overflow)
                m.d.comb += self.momentum.wdata[k].eq(new_m)
                m.d.sync += c_u[k].eq(new_m)
            else:
                m.d.sync += c_u[k].eq(g)
        if geo.momentum:
            m.d.comb += [
                self.momentum.waddr.eq(b_row),
                self.momentum.we.eq(b_valid.replicate(lanes)),
            ]

        # stage C: the weight update
        m.d.comb += [
            self.weights.waddr.eq(c_row),
            self.weights.we.eq(c_valid.replicate(lanes)),
        ]
        lr = self.lr_mult
        with m.Switch(c_layer):
            for lay in layers:
                with m.Case(lay.index):
                    for k in range(lanes):
                        step = round_shift(c_u[k] * lr, lay.lr_shift, geo.rounding)
                        m.d.comb += self.weights.wdata[k].eq(narrow(c_w[k] - step, wb, geo.overflow))

        m.d.comb += self.busy.eq(active | b_valid | c_valid)
        return m
