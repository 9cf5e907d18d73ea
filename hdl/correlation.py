"""The correlation unit: ``G += term`` per synapse, narrowed after every addition.

docs/numerics.md §6.  All learning rules reduce to one operation on a synapse's
accumulator, ``G_ij = narrow_g(G_ij + term_ij)``; they differ only in the term.  So the
datapath has one generic accumulate-and-narrow :class:`CorrelationUnit` working on a row
of ``lanes`` accumulators at a time, and one :class:`CorrelationWalker` that produces the
row-addressed terms of every rule from a rule-independent job (the loss difference, the
antithetic sign, the banks its pass left its data in, and whether it is the step's last),
walking the layers from constant per-layer tables fixed at generation.

Term width.  With ``grad_bits``-bit ``G``, ``narrow(term, grad_bits + 1)`` changes no
result of ``narrow_g(G + term)`` (for ``|term| >= 2^grad_bits`` the sum saturates either
way; under wrap only ``term mod 2^grad_bits`` matters), so terms are ``grad_bits + 1``
bits at most (:func:`term_bits`).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, ShapeLike, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import TARGET_PROJECTION_RULES, Overflow, Rule

from .arith import narrow
from .forward import ACT_BANKS, BIAS_INPUT
from .geometry import Geometry
from .loss import DC_BITS
from .memories import LanePortSignature, ReadPortSignature, SignReadSignature, next_column

__all__ = ["term_bits", "row_layout", "signed_rules", "lane_term", "sums_layout", "CorrelationUnit",
           "CorrelationWalker"]

#: ``|g * x| <= 255 * 128 < 2^15``: a target-projection term is exact in 16 bits.
TP_TERM_BITS = 16


def term_bits(natural: int, grad_bits: int) -> int:
    """Bits of a correlation term: ``min(natural, grad_bits + 1)`` (see the module docstring)."""
    return min(natural, grad_bits + 1)


def row_layout(lanes: int, row_bits: int, tbits: int, signed_terms: bool = False) -> data.StructLayout:
    """Payload of a row of terms: ``row``, ``mask`` (lanes to update), the terms, and
    ``final`` (the last addition of the step: hand the sums on and clear ``G``).

    The terms are a ``term`` per lane, or with ``signed_terms`` (every layer's rule a sign
    rule, whose term is ``+dC`` or ``-dC``: :func:`signed_rules`) the two a lane can take,
    ``plus`` and ``minus``, once, and a bit per lane that picks ``minus`` (``negative``):
    a row then carries ``2 * tbits + lanes`` bits of terms instead of ``lanes * tbits``.
    :func:`lane_term` reads lane ``k``'s term from either.
    """
    terms: dict[str, ShapeLike | data.ArrayLayout] = (
        {"plus": signed(tbits), "minus": signed(tbits), "negative": lanes} if signed_terms
        else {"term": data.ArrayLayout(signed(tbits), lanes)})
    return data.StructLayout({"row": row_bits, "mask": lanes, **terms, "final": 1})


def signed_rules(rules: set[Rule] | frozenset[Rule]) -> bool:
    """Whether every rule's term is ``+dC`` or ``-dC`` (or 0: a lane left out of the mask),
    so that rows can carry them as :func:`row_layout`'s ``signed_terms``."""
    return set(rules) <= {Rule.MGD_WEIGHT, Rule.ALR}


def lane_term(row: Value, k: int) -> Value:
    """Lane ``k``'s term in ``row`` (a :func:`row_layout` payload of either kind)."""
    if "term" in row.shape().members:
        return row.term[k]
    return Mux(row.negative[k], row.minus, row.plus)


def sums_layout(lanes: int, row_bits: int, grad_bits: int) -> data.StructLayout:
    """Payload of the final sums of a row: ``row`` and ``g`` per lane."""
    return data.StructLayout({"row": row_bits, "g": data.ArrayLayout(signed(grad_bits), lanes)})


class CorrelationUnit(wiring.Component):
    """``G[row][k] = narrow_g(G[row][k] + term[k])`` for every lane ``k`` in ``mask``.

    One row per cycle, a read-modify-write in four stages: R presents the row's read
    address; D registers what the G memories return, and each lane's term (0 for a lane
    not in ``mask``, so that X adds and narrows without a multiplexer after: ``narrow_g(G +
    0)`` is ``G``); X adds the terms and narrows into a register; W writes it.  No cycle
    holds more than one of the block RAM's output, the add and narrowing, and the
    write-port multiplexer (the three shared one cycle before, a 19 ns path on the ECP5),
    so a row is written 3 cycles after it is taken (it was 1).
    With a ``read_latency`` of 2 (a G memory whose output is registered,
    ``hardware.register_grads``) a stage H between R and D waits for the answer, and a
    row is written 4 cycles after it is taken (:attr:`latency`).

    A row of G is in the pipe for :attr:`latency` cycles before it is written, and the
    memory's read is not transparent, so a row taken fewer than :attr:`depth` (4, or 5)
    cycles after the same row would read a stale G.  Given no ``min_spacing``, the unit
    forwards: D takes the value of a row 2 back (in W), 3 back (written in the last
    cycle) or, with H, 4 back (written two cycles before) instead of the memory's; X
    takes the value of the row just before (in W) instead of D's.  So any sequence of
    rows, the same row back to back included, accumulates in order.  Given a
    ``min_spacing`` of at least :attr:`depth` cycles (the rows' source guarantees that a
    row comes again no sooner: :attr:`CorrelationWalker.min_row_spacing`), no row can be
    in flight when it comes again, and the unit generates no forwarding (about 96 LC on
    the iCE40 for one lane).

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
    signed_terms
        The rows carry ``plus``, ``minus`` and a sign bit per lane instead of a term per
        lane (:func:`row_layout`; the source's rules all :func:`signed_rules`).
    overflow
        ``numerics.overflow`` for the narrowing.
    min_spacing
        The fewest cycles between two rows of the same address taken, as the source of
        the rows guarantees; None (any sequence) by default.  Forwarding is generated
        only when it is None or below :attr:`depth`.
    read_latency
        Cycles from the G memories' read address to their data: 1, or 2 with their output
        registered (:attr:`~.memories.LaneMemory.read_latency`).

    Members
    -------
    i : ``In(stream.Signature(row_layout(lanes, row_bits, term_bits, signed_terms)))``
        Rows of terms; always ready.
    grads : ``Out(LanePortSignature(lanes, row_bits, signed(grad_bits)))``
        The G memories.
    sums : ``Out(stream.Signature(sums_layout(...), always_ready=True))``
        The sums of every ``final`` row (``G`` of the unmasked lanes as it was), in the
        cycle they are written (:attr:`latency` cycles after the row was taken).
    busy : ``Out(1)``
        A row is still in the pipe.
    """

    #: Cycles from taking a row to writing it with a G memory that answers a read the next
    #: cycle (the stages D, X and W); one more for each further cycle of the read (H).
    LATENCY = 3

    def __init__(self, lanes: int, row_bits: int, grad_bits: int, term_bits: int,
                 overflow: Overflow = Overflow.SATURATE, min_spacing: int | None = None,
                 read_latency: int = 1, signed_terms: bool = False) -> None:
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if not isinstance(grad_bits, int) or grad_bits < 2:
            raise ValueError(f"grad_bits must be an integer >= 2, not {grad_bits!r}")
        if read_latency not in (1, 2):
            raise ValueError(f"read_latency must be 1 or 2, not {read_latency!r}")
        self.lanes, self.row_bits, self.grad_bits, self.term_bits = lanes, row_bits, grad_bits, term_bits
        self.overflow = Overflow(overflow)
        self.read_latency = read_latency
        #: cycles from taking a row to writing it (the sums go out in the cycle it is written)
        self.latency = self.latency_for(read_latency)
        #: stages a row goes through (R, H, D, X, W): a row taken this many cycles or more
        #: after the same row reads what that one wrote (the write lands at the end of W; the
        #: read in R of the same cycle does not see it)
        self.depth = self.latency + 1
        if min_spacing is not None and (not isinstance(min_spacing, int) or min_spacing < 1):
            raise ValueError(f"min_spacing must be a positive integer or None, not {min_spacing!r}")
        self.min_spacing = min_spacing
        #: whether the unit forwards the rows in flight (see the class docstring)
        self.forwarding = min_spacing is None or min_spacing < self.depth
        self.layout = row_layout(lanes, row_bits, term_bits, signed_terms)
        #: a row from stage X on: a term per lane, 0 where the lane is not in the mask
        self.lane_layout = row_layout(lanes, row_bits, term_bits)
        super().__init__({
            "i": In(stream.Signature(self.layout)),
            "grads": Out(LanePortSignature(lanes, row_bits, signed(grad_bits))),
            "sums": Out(stream.Signature(sums_layout(lanes, row_bits, grad_bits),
                                         always_ready=True)),
            "busy": Out(1),
        })

    @classmethod
    def latency_for(cls, read_latency: int) -> int:
        """Cycles from taking a row to writing it, given the G memory's read latency."""
        return cls.LATENCY + read_latency - 1

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lanes, gb = self.lanes, self.grad_bits
        g_row = data.ArrayLayout(signed(gb), lanes)
        inp = self.i.payload
        # R: the read of the row taken
        m.d.comb += [
            self.i.ready.eq(1),
            self.grads.raddr.eq(inp.row),
            self.grads.ren.eq(1),
        ]
        # H (a G memory that answers two cycles later): the row waits for its read
        before_d_valid, before_d = self.i.valid, inp  # the stage before D: R, or H
        in_pipe = []  # the valid bits of the stages after R
        if self.read_latency == 2:
            h_valid, h = Signal(), Signal(self.layout)
            m.d.sync += h_valid.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += h.eq(inp)
            before_d_valid, before_d = h_valid, h
            in_pipe.append(h_valid)
        d_valid, x_valid, w_valid = Signal(), Signal(), Signal()
        in_pipe += [d_valid, x_valid, w_valid]
        d, x = Signal(self.layout), Signal(self.lane_layout)
        w_row, w_final, w_we = Signal(self.row_bits), Signal(), Signal(lanes)
        w_new = Signal(g_row)  # the sums (unmasked lanes: G as it was)
        # what the memory holds after W's write: 0 after a final row
        w_after = Signal(g_row)
        m.d.comb += w_after.eq(Mux(w_final, 0, w_new))

        # A stage's registers load only while the stage before holds a row (free clock
        # enables on the FPGAs): an idle unit's cycles then skip the sums in the
        # co-simulation.  Nothing reads them without their valid bit: the write enables,
        # the sums' valid and the forwarding's hits are made of the valid bits.
        m.d.sync += d_valid.eq(before_d_valid)
        with m.If(before_d_valid):
            m.d.sync += d.eq(before_d)
        x_old = Signal(g_row)
        x_from_w = Signal()
        m.d.sync += x_valid.eq(d_valid)
        with m.If(d_valid):
            m.d.sync += [x.row.eq(d.row), x.mask.eq(d.mask), x.final.eq(d.final)]
            m.d.sync += [x.term[k].eq(Mux(d.mask[k], lane_term(d, k), 0)) for k in range(lanes)]
        if self.forwarding:
            self._forward(m, before_d.row, d_valid, x_valid, x.row, w_valid, w_row, w_after, x_old)
            # X: the row just before (now in X, next cycle in W) overrides D's value
            m.d.sync += x_from_w.eq(x_valid & (x.row == d.row))
        else:  # no row is in flight when it comes again: the memory's answer is current
            with m.If(d_valid):
                m.d.sync += x_old.eq(self.grads.rdata)
        m.d.sync += [
            w_valid.eq(x_valid),
            w_we.eq(Mux(x_valid, Mux(x.final, (1 << lanes) - 1, x.mask), 0)),
        ]
        with m.If(x_valid):
            m.d.sync += [w_row.eq(x.row), w_final.eq(x.final)]
            for k in range(lanes):
                old = Mux(x_from_w, w_after[k], x_old[k])
                m.d.sync += w_new[k].eq(narrow(old + x.term[k], gb, self.overflow))
        # W: the write, and the final sums
        m.d.comb += [
            self.grads.waddr.eq(w_row),
            self.grads.wdata.eq(w_after),
            self.grads.we.eq(w_we),
            self.sums.valid.eq(w_valid & w_final),
            self.sums.payload.row.eq(w_row),
            self.sums.payload.g.eq(w_new),
            self.busy.eq(functools.reduce(operator.or_, in_pipe)),
        ]
        return m

    def _forward(self, m: Module, row: Value, d_valid: Value, x_valid: Value, x_row: Value, w_valid: Value,
                 w_row: Value, w_after: Value, x_old: Signal) -> None:
        """D: ``x_old`` takes the memory's answer, or a row in flight that the read did not
        see: 2 back (in X the cycle before D, in W with D), 3 back (written the cycle before
        D) and, with a read of two cycles, 4 back (written two cycles before D).  ``row`` is
        the row of the stage before D, where the comparisons are made, so that D only
        multiplexes."""
        # (row, value with D) of each candidate, the most recent first: W's row, and the
        # rows written one and (read_latency 2) two cycles before D
        candidates = [(x_valid, x_row, w_after)]
        valid, row_written, after = w_valid, w_row, w_after
        for back in range(self.read_latency):
            held = Signal.like(after, name=f"written{back + 1}_after")
            m.d.sync += held.eq(after)
            candidates.append((valid, row_written, held))
            if back + 1 < self.read_latency:
                next_valid = Signal(name=f"written{back + 1}_valid")
                next_row = Signal.like(w_row, name=f"written{back + 1}_row")
                m.d.sync += [next_valid.eq(valid), next_row.eq(row_written)]
                valid, row_written, after = next_valid, next_row, held
        value: Value = self.grads.rdata
        for back, (cand_valid, cand_row, cand_value) in reversed(list(enumerate(candidates))):
            hit = Signal(name=f"d_from_{back + 2}_back")
            m.d.sync += hit.eq(cand_valid & (cand_row == row))
            value = Mux(hit, cand_value, value)
        with m.If(d_valid):  # (X's register: loaded as D's row moves on)
            m.d.sync += x_old.eq(value)


@dataclass(frozen=True)
class _Walk:
    """Stage A of :class:`CorrelationWalker`: the job being walked and where the walk is
    (``li`` the layer, ``group``, ``col``, the input activation ``word`` and ``byte``, the
    sign and term ``row``); ``is_last`` (the bias column) and ``mask`` (the lanes of the
    group that hold a neuron) are expressions of them, and ``advance`` says the row moves
    on after this cycle (always, but on a final job's rows with an update narrower than
    the lanes only on each row's last cycle)."""

    job: Signal
    active: Signal
    li: Signal
    group: Signal
    col: Signal
    word: Signal
    byte: Signal
    row: Signal
    is_last: Value
    mask: Value
    advance: Value


class CorrelationWalker(wiring.Component):
    """Rows of terms for one *job* (an event): every synapse of every layer, one row a cycle.

    The front end of the :class:`CorrelationUnit` for every rule.  A job is
    rule-independent: the loss difference ``dC`` (1 for target projection), the
    antithetic sign, the banks the job's pass left its data in, and ``final`` (the step's
    last job).  The walker visits the rows of every layer in memory order, layer by layer
    from constant per-layer tables fixed at generation (each layer's rule), and forms the
    term of each lane (docs/numerics.md §6):

    ==============  ============================================================  =========
    layer rule      term of synapse ``(i, j)``                                     reads
    ==============  ============================================================  =========
    ``mgd-weight``  ``dC * (a * s_ij)``: ``+dC`` or ``-dC``                        sign memory
    ``mgd-node``    ``dC * (a * s_i) * x0_j`` (baseline input; one product per row) factors, x0
    ``alr``         ``dC * sign(a * n_i) * sign(x_j)`` (the noisy copy's input)     factors, x
    TP rules        ``g_i * x_j`` (the baseline pass's input)                       factors, x
    ==============  ============================================================  =========

    The per-neuron factors (``a * s_i``, ``sign(a * n_i)``, ``g_i``) are what the forward
    engine stored beside the pass's activations (:meth:`~.forward.ForwardEngine._factors`);
    ``x_j`` is the bias input 127, a sample feature (layer 0) or an activation byte.

    Pipeline: A issues the memory reads of a row, B selects ``x`` from what they return,
    C forms the terms into the output register; a job is taken when the pipe is empty.
    With an update unit narrower than the lanes (``hardware.update_lanes``), a ``final``
    job's rows are ``update_ratio`` cycles apart, the rate the update takes them.
    The consumer (:class:`CorrelationUnit`) is always ready.

    Members
    -------
    cmd : ``In(stream.Signature(job_layout))``
        Jobs: ``dc``, ``negate`` (``a = -1``), ``sign_bank`` (the pass's sign-memory bank),
        ``bank`` (its activation and factor bank), ``base_bank`` (the bank of its sample's
        baseline pass), ``sample_base`` (the sample's first feature) and ``final``.
    signs : ``Out(SignReadSignature)``
        With an ``mgd-weight`` layer.
    act_read, factor_read : ``Out(...)``
        ``addr`` and ``en`` (high while the walk runs) out, ``data`` in one cycle later
        (the forward engine's read ports).
    samples : ``Out(...)``
        ``raddr``, ``ren`` out and ``rdata`` in: the sample buffer's second read port.
    o : ``Out(stream.Signature(row_layout(...)))``
    busy : ``Out(1)``
    done : ``Out(1)``
        Pulse: every read of the job is done (its banks may be overwritten).
    """

    #: Cycles without a row on ``o`` between the last row of a job and the first of the
    #: next, at the least: a job is taken only when stages A, B and C are empty
    #: (:meth:`_take_job`), i.e. in the cycle the last row is on ``o``; its first row is
    #: in A the cycle after, on ``o`` three cycles later.
    JOB_GAP = 3

    def __init__(self, geometry: Geometry) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        self.geometry = geo = geometry
        # The fewest cycles between two rows of one address on ``o``.  A job visits every
        # row of every layer once, one a cycle or slower (``row`` counts up; the layers' rows do not
        # overlap), so a row comes again only in a later job.  From row r of one job to
        # row r of the next there are the job's rows after r, the gap, and the next
        # job's rows before r: (rows - 1 - i) + JOB_GAP + i + 1 = rows + JOB_GAP cycles
        # for every r (more when the next job comes late).  The final rows of a step are
        # a job like any other, and the next step's jobs follow through the same intake.
        # A layer has at least 2 columns (an input and the bias), so this is at least
        # 2 + JOB_GAP = 5 cycles: the correlation unit (depth 4, or 5) never needs to forward
        # rows from this walker, whatever the network.
        self.min_row_spacing = geo.rows + self.JOB_GAP
        rules = {lay.rule for lay in geo.layers}
        natural = max(
            DC_BITS + 8 if rule == Rule.MGD_NODE else TP_TERM_BITS if geo.projection else DC_BITS + 1
            for rule in rules
        )
        self.term_bits = term_bits(natural, geo.grad_bits)
        self.act_addr_bits = act_addr_bits = geo.act_addr_bits
        self.factor_layout = factor_layout = geo.factor_layout()
        self.sample_addr_bits = sample_addr_bits = geo.sample_addr_bits
        #: rows carry plus, minus and a sign bit per lane (every layer's term is +-dC)
        self.signed_terms = signed_rules(rules)
        self.layout = row_layout(geo.lanes, geo.row_bits, self.term_bits, self.signed_terms)
        self.uses_signs = geo.walker_reads_signs
        self.uses_acts = geo.walker_reads_acts
        self.uses_samples = geo.walker_reads_samples
        # a job has only the fields this configuration's layers read: the pass tag carries
        # them through the forward engine's tag FIFO and the loss unit, where unread bits
        # would still cost flip-flops (Sequencer.tag_layout takes them from here)
        fields: dict[str, ShapeLike] = {"dc": signed(DC_BITS)}
        if self.uses_signs:
            fields |= {"negate": 1, "sign_bank": 1}
        if any(lay.rule in (Rule.ALR, *TARGET_PROJECTION_RULES) for lay in geo.layers[1:]) \
                or geo.factor_bits:
            fields["bank"] = range(ACT_BANKS)
        if any(lay.rule == Rule.MGD_NODE for lay in geo.layers[1:]):
            fields["base_bank"] = range(ACT_BANKS)
        if self.uses_samples:
            fields["sample_base"] = sample_addr_bits
        self.job_layout = data.StructLayout({**fields, "final": 1})
        int8s = data.ArrayLayout(signed(8), geo.lanes)
        members = {
            "cmd": In(stream.Signature(self.job_layout)),
            "o": Out(stream.Signature(self.layout)),
            "busy": Out(1),
            "done": Out(1),
        }
        if self.uses_signs:
            members["signs"] = Out(SignReadSignature(geo.lanes, geo.row_bits))
        if self.uses_acts:
            members["act_read"] = Out(wiring.Signature({"addr": Out(act_addr_bits), "en": Out(1),
                                                        "data": In(int8s)}))
        if geo.factor_bits:
            members["factor_read"] = Out(wiring.Signature({"addr": Out(act_addr_bits), "en": Out(1),
                                                           "data": In(factor_layout)}))
        if self.uses_samples:
            members["samples"] = Out(ReadPortSignature(sample_addr_bits, signed(8)))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """A pipeline of three stages (A: the walk issues the reads, B: the memories answer
        and ``x`` is selected, C: the terms), then the job intake, which waits for the
        pipe to drain."""
        m = Module()
        walk = self._walk(m)
        b, c, c_x, c_signs, c_factor = self._select_input(m, walk)
        plus, minus = self._terms(m, walk.job, c, c_x, c_signs, c_factor)
        m.d.comb += self.busy.eq(walk.active | b.valid | c.valid | self.o.valid)
        self._take_job(m, walk, b, c, plus, minus)
        return m

    def _walk(self, m: Module) -> _Walk:
        """Stage A: walk the job's rows (layer, group, column; one row per cycle) and issue
        the reads of its signs, the input ``x`` (activation or sample) and the factors."""
        geo, lanes = self.geometry, self.geometry.lanes
        layers = geo.layers
        n = len(layers)
        max_groups = geo.max_groups

        def table(values: list[int], width: int) -> Array:
            return Array(Const(v, width) for v in values)

        word_bits = geo.act_bank_bits
        t_last_col = table([lay.tokens - 1 for lay in layers], geo.max_tokens.bit_length())
        t_last_group = table([lay.groups - 1 for lay in layers], max(1, max_groups.bit_length()))
        t_row = table([lay.row_base for lay in layers] + [0], geo.row_bits)
        t_in_base = table([layers[i - 1].act_base if i else 0 for i in range(n)], word_bits)
        t_out_base = table([lay.act_base for lay in layers], word_bits)
        t_x_base = table([int(lay.rule == Rule.MGD_NODE) for lay in layers], 1)
        t_mask = Array(
            Array(Const(lay.synapse_mask(g, 0), lanes) for g in range(max_groups))
            for lay in layers
        )
        # the last token's: without the padding past the bias, where a layer splits its inputs
        t_last_mask = Array(
            Array(Const(lay.synapse_mask(g, lay.tokens - 1), lanes) for g in range(max_groups))
            for lay in layers
        ) if geo.max_split > 1 else t_mask

        job = Signal(self.job_layout)
        active = Signal()
        li = Signal(range(max(2, n)))
        group = Signal(range(max(2, max_groups)))
        col = Signal(range(max(2, geo.max_tokens)))
        word = Signal(range(max(2, -(-geo.max_cols // lanes) + 1)))
        byte = Signal(range(max(2, lanes)))
        row = Signal(geo.row_bits)
        is_last = col == t_last_col[li]
        group_done = is_last & (group == t_last_group[li])
        all_done = group_done & (li == n - 1)
        advance, walking = Const(1, 1), active
        if geo.update_ratio > 1:
            # a final job's rows go to the update unit, which takes update_ratio cycles a row
            # (hardware.update_lanes): each row is held that many cycles, and goes on to stage
            # B in its last (so ``done`` still comes with the last row in B)
            pace = Signal(range(geo.update_ratio))
            last_beat = pace == geo.update_ratio - 1
            advance = ~job.final | last_beat
            walking = active & advance
            with m.If(active & job.final):
                m.d.sync += pace.eq(Mux(last_beat, 0, pace + 1))
        with m.If(walking):
            m.d.sync += row.eq(row + 1)
            next_column(m, is_last, col, byte, word, lanes)
            with m.If(is_last):
                with m.If(~group_done):
                    m.d.sync += group.eq(group + 1)
                with m.Elif(~all_done):
                    m.d.sync += [group.eq(0), li.eq(li + 1), row.eq(t_row[li + 1])]
                with m.Else():
                    m.d.sync += active.eq(0)
        if self.uses_signs:
            m.d.comb += [self.signs.bank.eq(job.sign_bank), self.signs.row.eq(row),
                         self.signs.en.eq(1)]
        if self.uses_acts:
            x_bank = (Mux(t_x_base[li], job.base_bank, job.bank)
                      if "base_bank" in self.job_layout.members else job.bank)
            m.d.comb += [self.act_read.addr.eq(Cat((t_in_base[li] + word)[:word_bits], x_bank)),
                         self.act_read.en.eq(active)]
        if geo.factor_bits:
            m.d.comb += [self.factor_read.addr.eq(Cat((t_out_base[li] + group)[:word_bits], job.bank)),
                         self.factor_read.en.eq(active)]
        if self.uses_samples:
            m.d.comb += [self.samples.raddr.eq(job.sample_base + col), self.samples.ren.eq(active)]
        return _Walk(job=job, active=active, li=li, group=group, col=col, word=word, byte=byte,
                     row=row, is_last=is_last, advance=advance,
                     mask=Mux(is_last, t_last_mask[li][group], t_mask[li][group]) if geo.max_split > 1
                     else t_mask[li][group])

    def _select_input(self, m: Module, walk: _Walk) -> tuple[Signal, Signal, Signal, Signal,
                                                             Signal | None]:
        """Stage B: the memories answer; ``x`` is selected (bias input, sample or activation
        byte) and registered with the signs and factors for stage C.

        Returns the control at B and at C, and C's ``x``, signs and factors (None without
        factors).
        """
        geo, lanes = self.geometry, self.geometry.lanes
        n = len(geo.layers)
        ctrl = data.StructLayout({"valid": 1, "layer": range(max(2, n)), "row": geo.row_bits,
                                  "mask": lanes, "bias": 1, "byte": range(max(2, lanes))})
        b = Signal(ctrl)
        # (with a final job held for the update's beats, only in each row's last cycle)
        b_valid = walk.active if geo.update_ratio == 1 else walk.active & walk.advance
        m.d.sync += [
            b.valid.eq(b_valid), b.layer.eq(walk.li), b.row.eq(walk.row), b.mask.eq(walk.mask),
            b.bias.eq(walk.is_last), b.byte.eq(walk.byte),
        ]
        m.d.comb += self.done.eq(b.valid & ~walk.active)
        x = Signal(signed(8))
        with m.If(b.bias):
            m.d.comb += x.eq(BIAS_INPUT)
        if self.uses_samples:
            with m.Elif(b.layer == 0):
                m.d.comb += x.eq(self.samples.rdata)
        if self.uses_acts:
            with m.Else():
                m.d.comb += x.eq(self.act_read.data[b.byte])
        c = Signal(ctrl)
        c_x = Signal(signed(8))
        c_signs = Signal(lanes)
        c_factor = Signal(self.factor_layout) if geo.factor_bits else None
        m.d.sync += [c.eq(b), c_x.eq(x)]
        if self.uses_signs:
            m.d.sync += c_signs.eq(self.signs.data)
        if geo.factor_bits:
            m.d.sync += c_factor.eq(self.factor_read.data)
        return b, c, c_x, c_signs, c_factor

    def _terms(self, m: Module, job: Signal, c: Signal, c_x: Signal, c_signs: Signal,
               c_factor: Signal | None) -> tuple[Signal, Signal]:
        """Stage C: each lane's term into the output register, by the rule of the row's
        layer (with :attr:`signed_terms`, ``plus`` and ``minus`` and each lane's sign, an
        ALR lane whose term is 0 left out of the mask).  Returns ``plus`` and ``minus``
        (``narrow(dC)`` and ``narrow(-dC)``), which the job intake sets."""
        geo, lanes = self.geometry, self.geometry.lanes
        layers = geo.layers
        tb = self.term_bits
        plus = Signal(signed(tb))  # narrow(dC) and narrow(-dC), set when the job is taken
        minus = Signal(signed(tb))
        out = self.o.payload
        x_zero, x_negative = c_x == 0, c_x[-1]
        # one case per rule, not per layer (layers of one rule form their terms alike), and
        # no case at all when every layer has the same rule
        layers_of: dict[Rule, list[int]] = {}
        for lay in layers:
            layers_of.setdefault(lay.rule, []).append(lay.index)
        zero = Const(0, lanes)  # the lanes whose signed term is 0 (ALR), left out of the mask
        if self.signed_terms and Rule.ALR in layers_of:
            in_alr = c.layer.matches(*layers_of[Rule.ALR]) if len(layers_of) > 1 else Const(1)
            zero = Cat(in_alr & (x_zero | c_factor[k][1]) for k in range(lanes))
        m.d.sync += [self.o.valid.eq(c.valid), out.row.eq(c.row), out.mask.eq(c.mask & ~zero),
                     out.final.eq(job.final)]
        product = Signal(signed(DC_BITS + 8))  # dC * x0_j, shared by the lanes (MGD node)
        if Rule.MGD_NODE in layers_of:  # (declared and left unread otherwise)
            m.d.comb += product.eq(job.dc * c_x)

        def terms(rule: Rule) -> list:
            if self.signed_terms:
                return [out.negative[k].eq(self._negative(rule, k, x_negative, c_signs, c_factor, job))
                        for k in range(lanes)]
            return [out.term[k].eq(self._term(rule, k, plus, minus, product, x_zero, x_negative,
                                              c_x, c_signs, c_factor, job)) for k in range(lanes)]

        # the terms load only with a row (the unit takes them only then), so that an idle
        # walker's cycles skip them in the co-simulation; the row and the mask load every
        # cycle, as before: the correlation unit reads G at the row it is given, valid or
        # not (its read enable is always high), so its reads keep their addresses
        with m.If(c.valid):
            if self.signed_terms:
                m.d.sync += [out.plus.eq(plus), out.minus.eq(minus)]
            if len(layers_of) == 1:
                m.d.sync += terms(layers[0].rule)
            else:
                with m.Switch(c.layer):
                    for rule, indices in layers_of.items():
                        with m.Case(*indices):
                            m.d.sync += terms(rule)
        return plus, minus

    def _take_job(self, m: Module, walk: _Walk, b: Signal, c: Signal, plus: Signal,
                  minus: Signal) -> None:
        """Take the next job once the pipe is empty: start the walk and set ``plus`` and
        ``minus`` from its ``dC``."""
        geo = self.geometry
        tb = self.term_bits
        cmd = self.cmd
        dc = cmd.payload.dc
        narrow_dc = narrow(dc, tb, geo.overflow)
        # narrow(-dC) from narrow(dC) with a term-wide negation instead of a 33-bit one: it
        # is -narrow(dC), except where -dC saturates (dC above the range, or at or below
        # its bottom), where it is -narrow(dC) - 1 = ~narrow(dC); under wrap-around always
        # -narrow(dC)
        narrow_minus_dc = -narrow_dc
        if geo.overflow == Overflow.SATURATE and tb < DC_BITS + 1:
            top = (1 << (tb - 1)) - 1
            narrow_minus_dc = Mux((dc > top) | (dc <= -(top + 1)), ~narrow_dc, -narrow_dc)
        m.d.comb += cmd.ready.eq(~walk.active & ~b.valid & ~c.valid)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [
                walk.job.eq(cmd.payload), walk.active.eq(1), walk.li.eq(0), walk.group.eq(0),
                walk.col.eq(0), walk.word.eq(0), walk.byte.eq(0), walk.row.eq(geo.layers[0].row_base),
                plus.eq(narrow_dc), minus.eq(narrow_minus_dc),
            ]

    def _term(self, rule: Rule, k: int, plus: Value, minus: Value, product: Value, x_zero: Value,
              x_negative: Value, x: Value, signs: Value, factor: Value | None, job: Value) -> Value:
        """The term of lane ``k`` in a layer of ``rule`` (see the class docstring)."""
        ovf = self.geometry.overflow
        if rule == Rule.MGD_WEIGHT:
            return Mux(signs[k] ^ job.negate, minus, plus)
        if rule == Rule.MGD_NODE:  # factor bit 0: a * s_i = -1
            return Mux(factor[k][0], narrow(-product, self.term_bits, ovf),
                       narrow(product, self.term_bits, ovf))
        if rule == Rule.ALR:  # factor bits: sign(a * n_i) negative, zero
            zero = x_zero | factor[k][1]
            return Mux(zero, 0, Mux(x_negative ^ factor[k][0], minus, plus))
        return narrow(factor[k] * x, self.term_bits, ovf)  # target projection: g_i * x_j (exact)

    @staticmethod
    def _negative(rule: Rule, k: int, x_negative: Value, signs: Value, factor: Value | None,
                  job: Value) -> Value:
        """Whether lane ``k``'s term in a layer of a sign rule is ``-dC`` (``minus``); an ALR
        term of 0 is left out of the mask instead (:meth:`_terms`)."""
        if rule == Rule.MGD_WEIGHT:
            return signs[k] ^ job.negate
        return x_negative ^ factor[k][0]  # ALR: sign(a * n_i) * sign(x_j) negative
