"""The update unit: ``W = narrow_w(W - round_shift(U * lr_mult, lr_shift_l))``.

docs/numerics.md §6, "Update".  ``U = G`` (sgd), or with ``optimizer: momentum``
``M = narrow_g(M - round_shift(M, momentum_shift) + G)`` and ``U = M``.  One row of
``lanes`` weights per cycle, pipelined: read ``W`` (and ``M``); update ``M``; multiply
by ``lr_mult`` (slices of ``U``, then their sum); round, shift and subtract; write ``W``.
With ``hardware.update_lanes`` narrower than the lanes, a row takes ``lanes /
update_lanes`` cycles (*beats*), ``update_lanes`` weights each, through a pipe that wide.
``G`` is each row's final sums from the correlation unit
(:attr:`~.correlation.CorrelationUnit.sums`), taken while the step's last correlation
runs (the correlation unit clears ``G`` itself), so the update costs no extra pass and
never reads the G memory.  (An earlier unit could also *sweep* the G memory; no rule's
sequence used it, and it cost every lane a multiplexer and G's port a source: session 30.)
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, replace
from itertools import pairwise

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import logic_product, narrow, round_shift
from .correlation import sums_layout
from .dsp import RegisteredProduct
from .geometry import Geometry
from .memories import LanePortSignature

__all__ = ["PRODUCT_SLICE", "UpdateUnit", "memory_ports", "operand_bits", "product_slices"]

#: Bits of ``U`` per multiplier in the product ``U * lr_mult`` (an 18 x 18 signed block
#: multiplier takes 17 unsigned bits and the 8-bit ``lr_mult``).
PRODUCT_SLICE = 17


def product_slices(bits: int) -> int:
    """The slices of a ``bits``-bit ``U`` the update multiplies (a multiplier each)."""
    return -(-bits // PRODUCT_SLICE)


def operand_bits(geo: Geometry) -> int:
    """The bits of ``U`` the update multiplies: ``weight_bits + max(lr_shift) + 2``, or all
    of ``grad_bits`` where that is fewer.

    ``U`` narrowed to them (saturated or wrapped, as ``numerics.overflow``) gives every
    weight the golden model gives it.  With ``B = 2^weight_bits`` and ``S`` a layer's
    ``lr_shift`` (at most the largest): saturated, a ``U`` beyond ``B * 2^S`` either way
    stays beyond it (``lr_mult >= 1``), so its step is ``B`` or more in size under either
    rounding and takes any weight to the end of its range, as the whole ``U`` does; wrapped,
    only the step modulo ``B`` matters, which ``U`` modulo ``B * 2^S`` decides.  For the
    digits example (16-bit weights, ``lr_shift`` 8, 32-bit G) ``U`` is 26 bits: its top slice
    is 9 bits, not 15, which ``hardware.update_products: dsp-low`` makes in logic.
    """
    return min(geo.grad_bits, geo.weight_bits + max(lay.lr_shift for lay in geo.layers) + 2)


@dataclass(frozen=True)
class _Stage:
    """The registers of one stage of :class:`UpdateUnit`'s pipe: ``valid``, the ``row``, its
    ``layer``, the weights ``w`` and the lanes' ``value`` (``U``, then ``U * lr_mult``; none in
    stage P, whose product is in slices), and with an update narrower than the lanes the
    ``beat``: which of the row's slices of lanes the stage holds."""

    valid: Signal
    row: Signal
    layer: Signal
    w: Signal
    value: Signal | None
    beat: Signal | None = None


def memory_ports(geo: Geometry) -> dict[str, LanePortSignature]:
    """The memories the update unit reads and writes, by name: the weights and, with
    ``optimizer: momentum``, the momentum."""
    ports = {"weights": LanePortSignature(geo.lanes, geo.row_bits, signed(geo.weight_bits))}
    if geo.momentum:
        ports["momentum"] = LanePortSignature(geo.lanes, geo.row_bits, signed(geo.grad_bits))
    return ports


class UpdateUnit(wiring.Component):
    """Applies the accumulated ``G`` to the master weights once per training step.

    Parameters
    ----------
    geometry
        Sizes, widths, learning-rate shifts, rounding and overflow.

    Members
    -------
    sums : ``In(stream.Signature(sums_layout(...), always_ready=True))``
        One row's final ``G`` per transfer (any row order).
    busy : ``Out(1)``
        A row is in progress (combinationally high with ``sums.valid``, so a memory
        multiplexer hands the unit the weight port in the cycle it reads).
    first_write : ``Out(1)``
        The weights of the network's first row are written in this cycle: the first row of
        the step's final correlation walk, after which the rows follow one a cycle in
        ascending order (where the sequencer may start the next step).  With ``ratio``
        beats a row (``hardware.update_lanes``) the rows follow a row every ``ratio``
        cycles, so it comes ``(ratio - 1) * rows`` cycles after the first write instead,
        from which on every row is written before a reader going a row a cycle from the
        first row gets to it.
    lr_mult : ``In(8)``
        Learning-rate numerator (1..255).
    weights : ``Out(LanePortSignature(lanes, row_bits, signed(weight_bits)))``
    momentum : ``Out(LanePortSignature(lanes, row_bits, signed(grad_bits)))``
        Only with ``optimizer: momentum``.
    """

    def __init__(self, geometry: Geometry) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        self.geometry = geo = geometry
        #: weights the unit writes a cycle, and the cycles (beats) it takes a row
        self.width, self.ratio = geo.update_width, geo.update_ratio
        members = {
            "sums": In(stream.Signature(sums_layout(geo.lanes, geo.row_bits, geo.grad_bits),
                                        always_ready=True)),
            "busy": Out(1),
            "first_write": Out(1),
            "lr_mult": In(8),
            **{name: Out(port) for name, port in memory_ports(geo).items()},
        }
        super().__init__(members)

    @staticmethod
    def latency(geometry: Geometry) -> int:
        """Cycles from a row's stage A to the write of its weights (stages B to E): 4, 5
        where the product takes stage P (``U`` of more than one slice), and with
        ``hardware.register_grads`` 1 more (stage I), 2 with stage P (and Q)."""
        slices = product_slices(operand_bits(geometry)) > 1
        return 4 + slices + geometry.register_grads * (1 + slices)

    def elaborate(self, platform: object) -> Module:
        """Six stages (five with a ``U`` of one slice, :meth:`latency`): A the fused row and
        its reads, B momentum, C and P the product ``U * lr_mult`` (P also rounds and shifts
        it), D subtract, E the write of the weights.

        With ``hardware.register_grads`` I holds ``U`` (and ``lr_mult``) in the multipliers'
        operand registers (:class:`~.dsp.RegisteredProduct`: inside the block
        multipliers on the ECP5; at 32 lanes ``U`` crossed the chip to them, docs/boards.md)
        before C multiplies it; Q narrows the step after P (:meth:`_narrow_step`); and where the
        weight memories' output is registered (``Geometry.weights_read_latency``) the weights
        read in A arrive in C, whose next stage I takes them (no stage more: they are
        needed only in D)."""
        m = Module()
        geo = self.geometry
        valid, row, sums_g = self.sums.valid, self.sums.payload.row, self.sums.payload.g
        in_pipe: list[Value] = [valid]  # the stages' valid bits (busy)
        if self.ratio == 1:
            # (read only when the row is used; the weights and the momentum arrive in B, the
            # weights in C where their reads are registered)
            momentum = [self.momentum] if geo.momentum else []
            for port in (self.weights, *momentum):
                m.d.comb += [port.raddr.eq(row), port.ren.eq(valid)]
            b_valid, c = self._momentum(m, valid, row, sums_g)
        else:
            b_valid, c = self._beats(m, valid, row, sums_g)
        in_pipe += [b_valid, c.valid]
        u, u_valid = c.value, c.valid
        if geo.register_grads:
            # I's U is the multipliers' operand registers (RegisteredProduct), fed with C's;
            # a registered weight read (Geometry.weights_read_latency) answers in C, into I
            w_in_c = self._beat_lanes(self.weights.rdata, c.beat) if geo.weights_registered else None
            c = self._stage_after(m, c, "i", value=None, w=w_in_c)
            in_pipe.append(c.valid)
        p_valid, d = self._multiply(m, c, u, u_valid, operands_registered=geo.register_grads)
        if self._narrows_step():
            in_pipe.append(d.valid)
            d = self._narrow_step(m, d)
        e_valid, e_beat = self._subtract_and_write(m, d)
        in_pipe += [p_valid, d.valid, e_valid]
        m.d.comb += [
            self.busy.eq(functools.reduce(operator.or_, in_pipe)),
            self.first_write.eq(self._first_write(e_valid, e_beat)),
        ]
        return m

    def _first_write(self, e_valid: Value, e_beat: Value | None) -> Value:
        """:attr:`first_write`: the write of the first row, or with ``ratio`` beats a row the
        write ``(ratio - 1) * rows`` cycles after it: row ``q`` after the first, beat ``s``,
        where ``ratio * q + s = (ratio - 1) * rows``.  From there, a row ``r`` rows on is
        written by its last beat at most ``r`` cycles later."""
        first = self.geometry.layers[0].row_base
        if self.ratio == 1:
            return e_valid & (self.weights.waddr == first)
        q, s = divmod((self.ratio - 1) * self.geometry.rows, self.ratio)
        return e_valid & (self.weights.waddr == first + q) & (e_beat == s)

    def _layer_of(self, r: Value) -> Value:
        """The layer a row belongs to (rows are laid out layer after layer)."""
        value = 0
        for lay in self.geometry.layers[1:]:
            value = value + (r >= lay.row_base)
        return value

    def _momentum(self, m: Module, valid: Value, row: Value, sums_g: Value) -> tuple[Signal, _Stage]:
        """Stage B: ``U`` = the new momentum (or ``G``), narrowed to :func:`operand_bits`.

        Takes the stage before B's ``valid``, row and sums; returns B's ``valid`` and the
        registers of stage C (``value`` = U).
        """
        geo, lanes = self.geometry, self.geometry.lanes
        gb = geo.grad_bits
        b_valid = Signal()
        b_row = Signal(geo.row_bits)
        b_g = Signal(data.ArrayLayout(signed(gb), lanes))
        m.d.sync += b_valid.eq(valid)
        with m.If(valid):
            m.d.sync += [b_row.eq(row), b_g.eq(sums_g)]
        c = self._stage_registers("c")
        c_u = Signal(data.ArrayLayout(signed(operand_bits(geo)), lanes))
        m.d.sync += c.valid.eq(b_valid)
        with m.If(b_valid):
            m.d.sync += [c.row.eq(b_row), c.layer.eq(self._layer_of(b_row))]
            if not geo.weights_registered:
                m.d.sync += c.w.eq(self.weights.rdata)
        for k in range(lanes):
            u = b_g[k]  # G
            if geo.momentum:  # the new momentum
                u = self._new_momentum(self.momentum.rdata[k], u)
                m.d.comb += self.momentum.wdata[k].eq(u)
            with m.If(b_valid):
                m.d.sync += c_u[k].eq(narrow(u, len(c_u[k]), geo.overflow))
        if geo.momentum:
            m.d.comb += [
                self.momentum.waddr.eq(b_row),
                self.momentum.we.eq(b_valid.replicate(lanes)),
            ]
        return b_valid, replace(c, value=c_u)

    def _new_momentum(self, mom: Value, g: Value) -> Value:
        """``narrow_g(M - round_shift(M, momentum_shift) + G)``."""
        geo = self.geometry
        return narrow(mom - round_shift(mom, geo.momentum_shift, geo.rounding) + g, geo.grad_bits, geo.overflow)

    def _beats(self, m: Module, valid: Value, row: Value, sums_g: Value) -> tuple[Signal, _Stage]:
        """Stage B with ``ratio`` beats a row: B holds the row's ``G`` for ``ratio`` cycles
        and hands stage C a slice of ``width`` lanes in each, with the weights (and the new
        momentum, written back then) of those lanes.

        The weights and the momentum are read at the row in each cycle from A's to B's last
        but one (a beat uses the read of the cycle before; where the weights' reads are
        registered, the weights' read of two cycles before, which stage C selects for the
        stage after it); each lane is written once a row,
        in its own beat or later, and no beat reads a lane of another, so the reads need no
        forwarding.  Rows come at least ``ratio`` cycles apart (the correlation walker's
        final rows, :class:`~.correlation.CorrelationWalker`).  Returns B's ``valid`` and the
        registers of stage C (``value`` = U)."""
        geo, lanes, width, ratio = self.geometry, self.geometry.lanes, self.width, self.ratio
        ub = operand_bits(geo)
        # Without momentum U is G narrowed: B narrows it as it takes the row, so that the
        # beat's select feeds C's registers directly (the beat's select and then the
        # narrowing were 15 logic steps, the slowest path of 16 and 32 lanes at some seeds).
        narrow_first = not geo.momentum
        b_valid, b_row, b_beat = Signal(), Signal(geo.row_bits), Signal(range(ratio))
        b_g = Signal(data.ArrayLayout(signed(ub if narrow_first else geo.grad_bits), lanes))
        b_last = b_beat == ratio - 1
        with m.If(valid):
            m.d.sync += [b_valid.eq(1), b_beat.eq(0), b_row.eq(row)]
            m.d.sync += ([b_g[k].eq(narrow(sums_g[k], ub, geo.overflow)) for k in range(lanes)]
                         if narrow_first else b_g.eq(sums_g))
        with m.Elif(b_valid & b_last):
            m.d.sync += b_valid.eq(0)
        with m.Elif(b_valid):
            m.d.sync += b_beat.eq(b_beat + 1)
        momentum = [self.momentum] if geo.momentum else []
        for port in (self.weights, *momentum):
            m.d.comb += [port.raddr.eq(Mux(valid, row, b_row)), port.ren.eq(valid | (b_valid & ~b_last))]

        c = self._stage_registers("c")
        c_u = Signal(data.ArrayLayout(signed(ub), width))
        m.d.sync += c.valid.eq(b_valid)
        with m.If(b_valid):
            m.d.sync += [c.row.eq(b_row), c.layer.eq(self._layer_of(b_row)), c.beat.eq(b_beat)]
            if not geo.weights_registered:
                m.d.sync += [c.w[i].eq(w) for i, w in enumerate(self._beat_lanes(self.weights.rdata, b_beat))]
        g_lanes = self._beat_lanes(b_g, b_beat)
        mom_lanes = self._beat_lanes(self.momentum.rdata, b_beat) if geo.momentum else None
        for i in range(width):
            u = g_lanes[i]  # G
            if geo.momentum:  # the new momentum, written to every beat's lane i (enabled in its own)
                u = self._new_momentum(mom_lanes[i], u)
                m.d.comb += [self.momentum.wdata[beat * width + i].eq(u) for beat in range(ratio)]
            with m.If(b_valid):
                m.d.sync += c_u[i].eq(u if narrow_first else narrow(u, ub, geo.overflow))
        if geo.momentum:
            m.d.comb += [
                self.momentum.waddr.eq(b_row),
                self.momentum.we.eq(self._beat_enables(b_valid, b_beat)),
            ]
        return b_valid, replace(c, value=c_u)

    def _beat_lanes(self, row_value: Value, beat: Value | None) -> list[Value]:
        """The lanes of ``beat``'s slice of a row: lane ``i`` is the row's lane
        ``beat * width + i`` (with one beat a row, the row's lanes)."""
        if self.ratio == 1:
            return [row_value[i] for i in range(self.width)]
        return [Array(row_value[b * self.width + i] for b in range(self.ratio))[beat] for i in range(self.width)]

    def _multiply(self, m: Module, c: _Stage, u: Value, u_valid: Value, *,
                  operands_registered: bool) -> tuple[Value, _Stage]:
        """Stage C, and P where ``U`` takes more than one multiplier: the product
        ``U * lr_mult``.

        C multiplies each :data:`PRODUCT_SLICE`-bit slice of ``U`` (the top one signed) by
        ``lr_mult``, a multiplier a slice (with ``hardware.update_products: dsp-low`` all
        but the lowest by adders in logic), into registers; P adds the shifted slices.  The
        whole product of a 32-bit ``G`` in one cycle was the slowest path of the ECP5
        builds (``LR_MULT`` through two multipliers and their 41-bit join).  P also rounds
        and shifts the product by its layer's ``lr_shift``, which leaves D only the
        subtraction and the narrowing (D's whole work in one cycle was next, at 100 MHz).
        A ``U`` of one slice is multiplied in C alone and shifted in D (the iCEBreaker's
        16-bit ``G``: no logic cells for a stage that joins nothing).

        ``u`` is ``U`` as ``c`` holds it, or with ``operands_registered`` (stage I) as the
        stage before ``c`` holds it (valid with ``u_valid``): the multipliers' operand
        registers take it (and ``lr_mult``) as ``c``'s, and load only while either stage is
        valid.  Returns P's ``valid`` (0 without it) and the registers of
        stage D, or Q (:meth:`_narrow_step`) (``value`` = the product, shifted where P
        exists: :meth:`_shifted_product`)."""
        geo, width = self.geometry, self.width
        ub = operand_bits(geo)

        def product(piece: Value, name: str, logic: bool = False) -> Value:
            """``piece * lr_mult`` in the next stage's registers (made by adders with
            ``logic``)."""
            if operands_registered:
                mult = m.submodules[name] = RegisteredProduct(piece.shape(), self.lr_mult.shape(),
                                                              logic=logic)
                m.d.comb += [mult.a.eq(piece), mult.b.eq(self.lr_mult), mult.en.eq(u_valid | c.valid)]
                return mult.p
            part = Signal.like(piece * self.lr_mult, name=name)
            with m.If(c.valid):
                m.d.sync += part.eq(logic_product(m, piece, self.lr_mult) if logic else piece * self.lr_mult)
            return part

        product_shape = data.ArrayLayout(signed(ub + 9), width)
        if product_slices(ub) == 1:
            d = self._stage_after(m, c, "d", value=Signal(product_shape))
            m.d.comb += [d.value[k].eq(product(u[k], f"product_{k}")) for k in range(width)]
            return Const(0), d
        p = self._stage_after(m, c, "p", value=None)
        d = self._stage_after(m, p, "q" if self._narrows_step() else "d", value=Signal(product_shape))
        bounds = [*range(0, ub, PRODUCT_SLICE), ub]
        in_logic = geo.update_products == "dsp-low"
        for k in range(width):
            whole = 0
            for lo, hi in pairwise(bounds):
                piece = u[k][lo:hi] if hi < ub else u[k][lo:hi].as_signed()
                whole = whole + (product(piece, f"part{lo}_{k}", logic=in_logic and lo > 0) << lo)
            with m.If(p.valid):
                self._round_by_layer(m, p.layer, d.value[k], whole)
        return p.valid, d

    def _shifted_product(self) -> bool:
        """Whether stage D's ``value`` is already rounded and shifted (stage P did it)."""
        return product_slices(operand_bits(self.geometry)) > 1

    def _narrows_step(self) -> bool:
        """Whether stage Q narrows the rounded step before D (``hardware.register_grads``,
        where stage P exists)."""
        return self.geometry.register_grads and self._shifted_product()

    def _narrow_step(self, m: Module, q: _Stage) -> _Stage:
        """Stage Q: the rounded and shifted step narrowed to ``weight_bits + 2`` bits into the
        registers of stage D, whose subtraction is then that wide instead of ``grad_bits +
        9`` bits (its carry chain into the saturation was the ECP5 8-lane build's slowest
        path with ``register_grads``; narrowing in P, after the slices' sum and the
        rounding, made P the slowest).

        That narrowing changes no weight: with ``B = 2^weight_bits``, a step of ``B`` or more
        takes any weight below ``-B/2`` (it saturates to the minimum either way, and the
        narrowed step stays ``B`` or more), one of ``-B`` or less above ``B/2 - 1``; under
        wrap only the step modulo ``B`` matters, which narrowing keeps.
        """
        geo = self.geometry
        bits = geo.weight_bits + 2
        d = self._stage_after(m, q, "d", value=Signal(data.ArrayLayout(signed(bits), self.width)))
        with m.If(q.valid):
            m.d.sync += [d.value[k].eq(narrow(q.value[k], bits, geo.overflow)) for k in range(self.width)]
        return d

    def _round_by_layer(self, m: Module, layer: Value, target: Value, product: Value) -> None:
        """``target`` (a register) takes ``round_shift(product, lr_shift)`` of ``layer``.

        One case per distinct ``lr_shift`` (none when every layer has the same), not one
        per layer: Verilator computes each case's rounding of the wide sum ahead of the
        ``Switch``, every cycle, idle or not (the same logic on the FPGAs)."""
        shifts: dict[int, list[int]] = {}  # lr_shift -> the layers that have it
        for lay in self.geometry.layers:
            shifts.setdefault(lay.lr_shift, []).append(lay.index)
        if len(shifts) == 1:
            m.d.sync += target.eq(round_shift(product, next(iter(shifts)), self.geometry.rounding))
            return
        with m.Switch(layer):
            for shift, indices in shifts.items():
                with m.Case(*indices):
                    m.d.sync += target.eq(round_shift(product, shift, self.geometry.rounding))

    def _stage_registers(self, name: str, value: Signal | None = None) -> _Stage:
        """A stage's ``valid``, row, layer, weight (and beat) registers, named ``name_*``,
        and ``value``."""
        geo = self.geometry
        return _Stage(valid=Signal(name=f"{name}_valid"),
                      row=Signal(geo.row_bits, name=f"{name}_row"),
                      layer=Signal(range(max(2, len(geo.layers))), name=f"{name}_layer"),
                      w=Signal(data.ArrayLayout(signed(geo.weight_bits), self.width), name=f"{name}_w"),
                      value=value,
                      beat=Signal(range(self.ratio), name=f"{name}_beat") if self.ratio > 1 else None)

    def _stage_after(self, m: Module, prev: _Stage, name: str, value: Signal | None,
                     w: list[Value] | None = None) -> _Stage:
        """The registers of the stage after ``prev``: its ``valid``, row, layer and weights
        follow ``prev``'s (the weights ``w`` instead, where given); ``value`` is the
        caller's to drive.

        Like every register of the pipe, they load only when the stage before is valid:
        the flip-flops' clock enables cost no logic on the FPGAs, and Verilator then skips
        the idle unit's arithmetic (the update unit was 16 % of an idle co-simulation
        model's time, and works R cycles of a step's thousands)."""
        stage = self._stage_registers(name, value)
        m.d.sync += stage.valid.eq(prev.valid)
        with m.If(prev.valid):
            m.d.sync += [stage.row.eq(prev.row), stage.layer.eq(prev.layer)]
            m.d.sync += stage.w.eq(prev.w) if w is None else [stage.w[i].eq(v) for i, v in enumerate(w)]
            if stage.beat is not None:
                m.d.sync += stage.beat.eq(prev.beat)
        return stage

    def _subtract_and_write(self, m: Module, d: _Stage) -> tuple[Signal, Signal | None]:
        """Stage D: round and shift the product by the layer's ``lr_shift`` (unless stage P
        did) and subtract it from the weight; stage E writes the result (to the lanes of its
        beat).  Returns E's ``valid`` and beat (None with one beat a row)."""
        geo, width, wb = self.geometry, self.width, self.geometry.weight_bits
        e_valid = Signal()
        e_row = Signal(geo.row_bits)
        e_w = Signal(data.ArrayLayout(signed(wb), width))
        m.d.sync += [e_valid.eq(d.valid), e_row.eq(d.row)]
        e_beat = None
        if d.beat is not None:
            e_beat = Signal.like(d.beat, name="e_beat")
            m.d.sync += e_beat.eq(d.beat)
        if self._shifted_product():
            with m.If(d.valid):
                m.d.sync += [e_w[k].eq(narrow(d.w[k] - d.value[k], wb, geo.overflow)) for k in range(width)]
        else:
            with m.If(d.valid), m.Switch(d.layer):
                for lay in geo.layers:
                    with m.Case(lay.index):
                        for k in range(width):
                            step = round_shift(d.value[k], lay.lr_shift, geo.rounding)
                            m.d.sync += e_w[k].eq(narrow(d.w[k] - step, wb, geo.overflow))
        if e_beat is None:
            m.d.comb += [
                self.weights.waddr.eq(e_row),
                self.weights.wdata.eq(e_w),
                self.weights.we.eq(e_valid.replicate(width)),
            ]
        else:  # every beat's slice of lanes takes E's weights; the beat's own are enabled
            m.d.comb += [
                self.weights.waddr.eq(e_row),
                self.weights.wdata.eq(e_w.as_value().replicate(self.ratio)),
                self.weights.we.eq(self._beat_enables(e_valid, e_beat)),
            ]
        return e_valid, e_beat

    def _beat_enables(self, valid: Value, beat: Value) -> Value:
        """Per-lane write enables of a row: the lanes of ``beat``'s slice, while ``valid``."""
        return Cat((valid & (beat == k)).replicate(self.width) for k in range(self.ratio))
