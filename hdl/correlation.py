"""The correlation unit: ``G += term`` per synapse, narrowed after every addition.

docs/numerics.md §6.  All learning rules reduce to one operation on a synapse's
accumulator, ``G_ij = narrow_g(G_ij + term_ij)``; they differ only in the term.  So the
datapath has one generic accumulate-and-narrow :class:`CorrelationUnit` working on a row
of ``lanes`` accumulators at a time, and per-rule *front ends* that produce row-addressed
terms:

- :class:`MgdWeightFrontEnd` (here): ``term = dC * (a * s_ij)``, ``s_ij`` read back from
  the :class:`~.memories.SignMemory` the forward engine wrote while it drew them;
- node perturbation ``dC * (a * s_i) * x0_j``, ALR ``dC * sign * sign`` and target
  projection ``g_i * x_j`` (:mod:`.node`, :mod:`.alr`, :mod:`.projection`) produce one
  ``lanes``-wide term per layer input; giving each the weight-memory row of its
  ``(group, j)`` (:class:`~perturbo.hdl.geometry.Geometry`) makes the same stream.

Term width.  With ``grad_bits``-bit ``G``, ``narrow(term, grad_bits + 1)`` changes no
result of ``narrow_g(G + term)`` (for ``|term| >= 2^grad_bits`` the sum saturates either
way; under wrap only ``term mod 2^grad_bits`` matters), so terms are ``grad_bits + 1``
bits at most (:func:`term_bits`).
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import Overflow, Rule

from .arith import narrow
from .geometry import Geometry
from .memories import LanePortSignature, SignReadSignature

__all__ = ["DC_BITS", "term_bits", "row_layout", "sums_layout", "CorrelationUnit", "MgdWeightFrontEnd"]

#: Width of the loss difference ``dC`` (exact; docs/numerics.md §2).
DC_BITS = 32


def term_bits(natural: int, grad_bits: int) -> int:
    """Bits of a correlation term: ``min(natural, grad_bits + 1)`` (see the module docstring)."""
    return min(natural, grad_bits + 1)


def row_layout(lanes: int, row_bits: int, tbits: int) -> data.StructLayout:
    """Payload of a row of terms: ``row``, ``mask`` (lanes to update), ``term`` per lane,
    and ``final`` (the last addition of the step: hand the sums on and clear ``G``)."""
    return data.StructLayout({
        "row": row_bits,
        "mask": lanes,
        "term": data.ArrayLayout(signed(tbits), lanes),
        "final": 1,
    })


def sums_layout(lanes: int, row_bits: int, grad_bits: int) -> data.StructLayout:
    """Payload of the final sums of a row: ``row`` and ``g`` per lane."""
    return data.StructLayout({"row": row_bits, "g": data.ArrayLayout(signed(grad_bits), lanes)})


class CorrelationUnit(wiring.Component):
    """``G[row][k] = narrow_g(G[row][k] + term[k])`` for every lane ``k`` in ``mask``.

    One row per cycle, read-modify-write over the G memories' read and write ports
    (read in the cycle a row is taken, write one cycle later).  A row that follows the
    same row directly takes the just-written sums (bypass), so any sequence of rows
    accumulates in order.

    A ``final`` row (the step's last addition to it) writes 0 instead and hands the sums
    to ``sums``, so the update unit applies them while the last correlation runs,
    instead of sweeping G once more after it.

    Parameters
    ----------
    lanes, row_bits
        Memory geometry.
    grad_bits
        Width of ``G``.
    term_bits
        Width of the terms.
    overflow
        ``numerics.overflow`` for the narrowing.

    Members
    -------
    i : ``In(stream.Signature(row_layout(lanes, row_bits, term_bits)))``
        Rows of terms; always ready.
    grads : ``Out(LanePortSignature(lanes, row_bits, signed(grad_bits)))``
        The G memories.
    sums : ``Out(stream.Signature(sums_layout(...), always_ready=True))``
        The sums of every ``final`` row (``G`` of the unmasked lanes as it was), in the
        cycle they would have been written.
    busy : ``Out(1)``
        A row is still being written.
    """

    def __init__(self, lanes: int, row_bits: int, grad_bits: int, term_bits: int,
                 overflow: Overflow = Overflow.SATURATE) -> None:
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if not isinstance(grad_bits, int) or grad_bits < 2:
            raise ValueError(f"grad_bits must be an integer >= 2, not {grad_bits!r}")
        self.lanes, self.row_bits, self.grad_bits, self.term_bits = lanes, row_bits, grad_bits, term_bits
        self.overflow = Overflow(overflow)
        self.layout = row_layout(lanes, row_bits, term_bits)
        super().__init__({
            "i": In(stream.Signature(self.layout)),
            "grads": Out(LanePortSignature(lanes, row_bits, signed(grad_bits))),
            "sums": Out(stream.Signature(sums_layout(lanes, row_bits, grad_bits),
                                         always_ready=True)),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lanes, gb = self.lanes, self.grad_bits
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(1),
            take.eq(self.i.valid),
            self.grads.raddr.eq(self.i.payload.row),
            self.grads.ren.eq(1),
        ]
        b_valid = Signal()
        b = Signal(self.layout)
        m.d.sync += [b_valid.eq(take), b.eq(self.i.payload)]
        # the write of the previous cycle, for the bypass
        last_row = Signal(self.row_bits)
        last_we = Signal(lanes)
        last_data = Signal(data.ArrayLayout(signed(gb), lanes))
        we = Signal(lanes)
        m.d.comb += [
            self.grads.waddr.eq(b.row),
            we.eq(Mux(b_valid, Mux(b.final, (1 << lanes) - 1, b.mask), 0)),
            self.grads.we.eq(we),
            self.sums.valid.eq(b_valid & b.final),
            self.sums.payload.row.eq(b.row),
        ]
        for k in range(lanes):
            bypass = last_we[k] & (last_row == b.row)
            old = Mux(bypass, last_data[k], self.grads.rdata[k])
            new = Mux(b.mask[k], narrow(old + b.term[k], gb, self.overflow), old)
            m.d.comb += [
                self.grads.wdata[k].eq(Mux(b.final, 0, new)),
                self.sums.payload.g[k].eq(new),
            ]
        m.d.sync += [last_row.eq(b.row), last_we.eq(we), last_data.eq(self.grads.wdata)]
        m.d.comb += self.busy.eq(b_valid)
        return m


class MgdWeightFrontEnd(wiring.Component):
    """MGD weight perturbation: rows of ``dC * (a * s_ij)`` for every weight of one event.

    Per command it walks the rows of every ``mgd-weight`` layer in memory order, reads
    the signs ``s_ij`` of all lanes of a row from the :class:`~.memories.SignMemory` bank
    the forward engine wrote them to in the event's perturbed pass, and emits ``+dC`` or
    ``-dC`` per lane.  One row per cycle; a command is taken when the previous one has
    left the front end.

    Parameters
    ----------
    geometry
        Sizes and layouts.

    Members
    -------
    cmd : ``In(stream.Signature(StructLayout({"sign_bank": 1, "negate": 1, "dc": signed(32), "final": 1})))``
        One event: the sign bank of its perturbed pass, the antithetic sign (``negate``:
        ``a = -1``), ``dC``, and ``final`` for the last event of a training step.
    signs : ``Out(SignReadSignature(lanes, row_bits))``
        Read port of the sign memory.
    o : ``Out(stream.Signature(row_layout(...)))``
        Rows of terms for :class:`CorrelationUnit`.
    busy : ``Out(1)``
        A command is being worked on (while it is, its sign bank is being read).
    """

    def __init__(self, geometry: Geometry) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        self.geometry = geo = geometry
        self.term_bits = term_bits(DC_BITS + 1, geo.grad_bits)
        self.cmd_layout = data.StructLayout({"sign_bank": 1, "negate": 1,
                                             "dc": signed(DC_BITS), "final": 1})
        self.layout = row_layout(geo.lanes, geo.row_bits, self.term_bits)
        self.layers = [lay for lay in geo.layers if lay.rule == Rule.MGD_WEIGHT]
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "signs": Out(SignReadSignature(geo.lanes, geo.row_bits)),
            "o": Out(stream.Signature(self.layout)),
            "busy": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        geo, lanes = self.geometry, self.geometry.lanes
        layers = self.layers or [geo.layers[0]]  # no mgd-weight layer: never commanded
        n = len(layers)
        max_cols = max(lay.cols for lay in layers)
        max_groups = max(lay.groups for lay in layers)

        def table(values: list[int], width: int) -> Array:
            return Array(Const(v, width) for v in values)

        t_last_col = table([lay.n_in for lay in layers], max_cols.bit_length())
        t_last_group = table([lay.groups - 1 for lay in layers], max(1, max_groups.bit_length()))
        t_row = table([lay.row_base for lay in layers] + [0], geo.row_bits)
        t_mask = Array(
            Array(Const((1 << lay.lane_count(g, lanes)) - 1, lanes) for g in range(max_groups))
            for lay in layers
        )

        # the walk: one row per cycle into the sign memory's read port
        active = Signal()
        li = Signal(range(max(2, n)))
        group = Signal(range(max(2, max_groups)))
        col = Signal(range(max(2, max_cols)))
        row = Signal(geo.row_bits)
        bank = Signal()
        negate = Signal()
        dc = Signal(signed(DC_BITS))
        final = Signal()
        # the output stage: the row whose signs the memory returns
        out_valid = Signal()
        out_row = Signal(geo.row_bits)
        out_mask = Signal(lanes)

        en = Signal()  # the walk and the output stage advance
        m.d.comb += en.eq(~out_valid | self.o.ready)
        issued = active & en
        is_last = col == t_last_col[li]
        group_done = is_last & (group == t_last_group[li])
        all_done = group_done & (li == n - 1)
        m.d.comb += [
            self.signs.bank.eq(bank),
            self.signs.row.eq(row),
            self.signs.en.eq(en),
        ]
        with m.If(en):
            m.d.sync += [out_valid.eq(active), out_row.eq(row), out_mask.eq(t_mask[li][group])]
        with m.If(issued):
            m.d.sync += row.eq(row + 1)
            with m.If(~is_last):
                m.d.sync += col.eq(col + 1)
            with m.Else():
                m.d.sync += col.eq(0)
                with m.If(~group_done):
                    m.d.sync += group.eq(group + 1)
                with m.Elif(~all_done):
                    m.d.sync += [group.eq(0), li.eq(li + 1), row.eq(t_row[li + 1])]
                with m.Else():
                    m.d.sync += active.eq(0)

        cmd = self.cmd
        # the output stage uses dc, negate and final: the next event waits until it is empty
        m.d.comb += cmd.ready.eq(~active & ~out_valid)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [
                active.eq(1), li.eq(0), group.eq(0), col.eq(0), row.eq(layers[0].row_base),
                bank.eq(cmd.payload.sign_bank), negate.eq(cmd.payload.negate),
                dc.eq(cmd.payload.dc), final.eq(cmd.payload.final),
            ]

        tb = self.term_bits
        plus = Signal(signed(tb))
        minus = Signal(signed(tb))
        m.d.comb += plus.eq(narrow(dc, tb, geo.overflow))
        # narrow(-dc) from narrow(dc) with a tb-bit negation instead of a 33-bit one: it is
        # -plus, except where -dc saturates (dc above the range, or at or below its bottom),
        # where it is -plus - 1 = ~plus; under wrap-around always -plus (mod 2^tb)
        if geo.overflow == Overflow.SATURATE and tb < DC_BITS + 1:
            top = (1 << (tb - 1)) - 1
            clipped = (dc > top) | (dc <= -(top + 1))
            m.d.comb += minus.eq(Mux(clipped, ~plus, -plus))
        else:
            m.d.comb += minus.eq(-plus)
        m.d.comb += [
            self.o.valid.eq(out_valid),
            self.o.payload.row.eq(out_row),
            self.o.payload.mask.eq(out_mask),
            self.o.payload.final.eq(final),
            self.busy.eq(active | out_valid),
        ]
        for k in range(lanes):
            flip = self.signs.data[k] ^ negate  # a * s = -1
            m.d.comb += self.o.payload.term[k].eq(Mux(flip, minus, plus))
        return m
