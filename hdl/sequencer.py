"""The sequencer: whole training steps of every rule, and inference runs, without the host.

docs/numerics.md §4 and §6.  A training step takes ``S = STEP_SAMPLES`` samples from
the sample buffer, starting at the cursor (which wraps at ``SAMPLE_COUNT``); for each
sample it runs the baseline pass and ``copies`` perturbed passes, copy ``m`` with the
event ``e = (k * S + b) * P + (m >> 1)`` and the antithetic sign ``a = -1`` for odd
``m`` (target projection: the baseline pass alone, with the sample's label); each
perturbed pass (target projection: each baseline pass) leaves a job for the
correlation walker, which adds the rule's term of every synapse to ``G``; after the
last sample the update unit applies ``G`` and clears it, and ``k`` increases by one.

Two processes keep the datapath busy:

- the *issuer* sends pass commands to the forward engine back to back (the engine
  takes the next pass as soon as the previous one has issued its last token), with the
  pass key computed ahead on the forward engine's hash pipe (``key_req``, ``key``)
  while the baseline pass runs;
- the *collector* takes each pass's loss from the loss unit, adds the baseline losses,
  hands each perturbed pass's ``dC`` to the correlation front end, which reads back the
  signs the pass drew from a :class:`~.memories.SignMemory` bank while the next passes
  run (a perturbed pass waits if the correlation that read its bank before has not
  finished: with one copy per sample the baseline pass in between hides that); the
  step's last correlation is *final*: the correlation unit hands each row's sums to the
  update unit as it goes, so the update ends a few cycles after it; then the issuer
  starts the next step (with ``hardware.overlap_update`` already at the update's first
  weight write: the next step's first pass follows the update row by row,
  :meth:`Sequencer._step_end_states`).

With ``TRAIN_STREAM`` the sample buffer is a ring the host refills while the run goes on:
a step starts only when its ``S`` samples lie between the cursor and the host's
``fill`` (waiting at the step boundary, where ABORT leaves the state whole), and the
sequencer tells the bus which sample slots the run may still read (:meth:`Sequencer.slot_free`,
from the step's first sample to ``fill``): writes there are refused.  Every step's
baseline loss sum also goes to the loss record (``Space.LOSSES``), word ``k % LOSS_DEPTH``.

The event number is kept as a running counter: ``k * S * P`` is computed once per run
by a :class:`SerialMultiplier` (as is the cursor's sample address), then ``e`` advances
by one per antithetic pair (``P`` per sample).  What a configuration does not need is not
built: target projection draws no events (no ``k * S * P``), and a sample stride that is a
power of two makes the sample address a shift, so a target-projection accelerator whose
samples are a power of two bytes apart (the digits network: 64) has no multiplier.
Inference runs the baseline pass on samples ``0 .. count - 1``; the :class:`OutputWriter` stores their output scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import COPIES_MAX, STEP_SAMPLES_MAX

from .geometry import Geometry, ceil_log2
from .loss import lane_of, next_lane, take_group
from .memories import PortSignature
from .random import STREAM_NODE, STREAM_PROJECTION, STREAM_WEIGHT_SIGN

__all__ = ["SerialMultiplier", "OutputWriter", "Sequencer"]


class SerialMultiplier(wiring.Component):
    """``a * b mod 2^32`` by shift and add, one bit of ``b`` per cycle.

    Members
    -------
    start : ``In(1)``
        Pulse: take ``a`` and ``b``.
    a, b : ``In(32)``
    busy : ``Out(1)``
        High from the cycle after ``start`` until ``p`` is ready.
    p : ``Out(32)``
        The product (stable while not busy).
    """

    def __init__(self) -> None:
        super().__init__({"start": In(1), "a": In(32), "b": In(32), "busy": Out(1),
                          "p": Out(32)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        a = Signal(32)
        b = Signal(32)
        with m.If(self.start):
            m.d.sync += [a.eq(self.a), b.eq(self.b), self.p.eq(0)]
        with m.Elif(b != 0):
            m.d.sync += [a.eq(a << 1), b.eq(b >> 1)]
            with m.If(b[0]):
                m.d.sync += self.p.eq(self.p + a)
        m.d.comb += self.busy.eq(b != 0)
        return m


@dataclass(frozen=True)
class _SequencerState:
    """What the sequencer's issuer and collector share (see ``Sequencer._registers``).

    ``last_sample``, ``last_copy``, ``perturbed_free`` and ``baseline_free`` are
    expressions: the step's last sample, the sample's last copy, and the bank accounting's
    verdicts on the next perturbed and baseline pass.
    """

    mul: SerialMultiplier | None  #: k * S * P and the cursor's sample address (where needed)
    steps_left: Signal
    samples_left: Signal  #: in this step, this one included
    copy: Signal
    event: Signal  #: the event of the next antithetic pair
    sbase: Signal  #: the sample's first feature in the sample buffer
    label: Signal
    key: Signal  #: weight signs (stream 0), or the projection key of the run
    node_key: Signal  #: node signs and ALR noise (stream 1)
    sign_bank: Signal
    base_bank: Signal
    issued: Signal  #: a pass with a job leaves this cycle
    perturbed_free: Value
    baseline_free: Value
    count: Signal  #: inference passes issued
    loss_sum: Signal
    step_done: Signal  #: collector -> issuer
    collected: Signal  #: inference results written
    pass_bank: Signal  #: the activation bank of the pass being issued
    aborting: Signal  #: ABORT arrived: no new step, no new inference pass
    last_sample: Value
    last_copy: Value
    stream: Signal  #: the run is TRAIN_STREAM
    step_base: Signal  #: the slot of the step's first sample (idle: the cursor)
    step_base_next: Signal  #: step_base's value in the next cycle (every state's move of it)
    step_loaded: Value  #: TRAIN_STREAM: the next step's samples are below fill
    step_first: Signal  #: overlap_update: the slot of the step's first sample
    update_pending: Signal  #: overlap_update: a step started before the previous update ended


class OutputWriter(wiring.Component):
    """Stores output-layer groups in the output score memory, one lane per cycle.

    The passes of an inference run arrive in sample order, so the writer counts the
    address of each pass's scores (``sample * classes``) itself instead of taking it
    with each pass through the forward engine's tag FIFO.

    Members
    -------
    start : ``In(1)``
        Pulse: an inference run begins; its first pass's scores go to address 0.
    i : ``In(stream.Signature(layout))``
        ``y`` (``lanes`` INT8), ``mask`` (a prefix of lanes), ``group`` and ``last``
        (the pass's last group).
    mem : ``Out(PortSignature)``
        Write side of the output memory (``waddr``, ``wdata``, ``we``).
    done : ``Out(1)``
        Pulse: the last group of a pass is stored.
    """

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geo = geometry
        self.addr_bits = ceil_log2(geo.output_words)
        self.layout = data.StructLayout({
            "y": data.ArrayLayout(signed(8), geo.lanes),
            "mask": geo.lanes,
            "group": range(max(2, geo.layers[-1].groups)),
            "last": 1,
        })
        super().__init__({
            "start": In(1),
            "i": In(stream.Signature(self.layout)),
            "mem": Out(PortSignature(self.addr_bits, signed(8))),
            "done": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lanes = self.geometry.lanes
        cur = Signal(self.layout)
        base = Signal(self.addr_bits)  # sample * classes of the pass being stored
        k = Signal(range(max(2, lanes)))
        y, lane_on = lane_of(cur, k)
        with m.If(self.start):
            m.d.sync += base.eq(0)
        with m.Elif(self.done):
            m.d.sync += base.eq(base + self.geometry.classes)
        m.d.comb += [
            self.mem.waddr.eq(base + cur.group * lanes + k),
            self.mem.wdata.eq(y),
        ]
        with m.FSM():
            with m.State("IDLE"):
                take_group(m, self.i, cur, k)
            with m.State("LANES"):
                m.d.comb += self.mem.we.eq(lane_on)
                m.d.sync += k.eq(k + 1)
                next_lane(m, cur)
                with m.If(~lane_on | (k == lanes - 1)):
                    m.d.comb += self.done.eq(cur.last)
                    m.next = "IDLE"
        return m


class Sequencer(wiring.Component):
    """Runs training steps and inference (see the module docstring).

    Parameters
    ----------
    geometry
        Sizes and layouts.
    fwd_cmd_layout
        The forward engine's command layout (built with :meth:`tag_layout` as its tag).
    loss_layout
        The loss unit's result layout (with the same tag).
    corr_cmd_layout
        The correlation front end's command layout.
    overlap
        Run the next passes while the correlation walker reads the banks of the previous
        ones (the default).  ``False`` issues a pass only when every job is done: the
        same results, more cycles; ``bench/verilator_vs_golden.py`` measures the overlap
        with it.
    settled_fill
        ``fill_value`` holds its value from the cycle before ``fill_set`` on, and no register
        write comes in that cycle (the pipelined bus: the register file's ``settled_wdata``):
        ``fill_ok`` is then registered from ``step_base``'s next value, a cycle ahead.

    Members
    -------
    train, infer : ``In(1)``
        Pulses that start a command (when idle).
    train_stream : ``In(1)``
        Pulse: start a training run that takes samples only up to ``fill`` (streaming builds).
    abort : ``In(1)``
        Pulse: stop the running command where its state is whole (``Command.ABORT``): a
        training run before its next step, an inference run after the passes issued.
    steps, step_samples, copies, sample_count, infer_count : ``In(...)``
        Run parameters (registers).
    step_set, cursor_set : ``In(1)``; step_value, cursor_value : ``In(...)``
        Host writes of the step counter ``k`` and the sample cursor.
    step, cursor : ``Out(...)``
        ``k`` and the cursor.
    fill_set : ``In(1)``; fill_value : ``In(...)``; fill : ``Out(...)``; fill_ok : ``Out(1)``
        Streaming builds: the host's fill position (``SAMPLE_FILL``), written with
        ``fill_value`` on ``fill_set``; ``fill_ok`` says whether a write of ``fill_value``
        may be accepted while busy (a ``TRAIN_STREAM`` run, a position that grants more).
    probe_slot : ``In(...)``; probe_free : ``Out(1)``
        Streaming builds: whether a host write to sample slot ``probe_slot`` leaves the run's
        samples alone (a ``TRAIN_STREAM`` run; see :meth:`slot_free`).
    waiting : ``Out(1)``
        A ``TRAIN_STREAM`` run waits at a step boundary for the host's samples.
    record_we, record_addr, record_data : ``Out(...)``
        Streaming builds: the loss record's write port (one word per step).
    busy : ``Out(1)``
    finished : ``Out(1)``
        Pulse in the last busy cycle of a command.
    inference : ``Out(1)``
        The running (or last) command is an inference run.
    step_done : ``Out(1)``
        Pulse: one update applied.
    last_loss : ``Out(32)``
        Sum of the baseline losses of the last completed step.
    fwd_cmd : ``Out(stream)``
        Pass commands to the forward engine.
    key_req : ``Out(stream.Signature(32))``; key : ``In(stream.Signature(32))``
        Pass keys from the forward engine: ``e << 2 | stream`` out, ``pass_key`` back.
    loss : ``In(stream)``
        Per-pass results of the loss unit.
    corr_cmd : ``Out(stream)``
        Events for the correlation front end.
    corr_busy : ``In(1)``
    corr_done : ``In(1)``
        Pulse: the correlation walker finished reading a job's data (:attr:`pending` drops).
    upd_busy : ``In(1)``
        The update unit works (it takes the step's final sums from the correlation unit).
    upd_first : ``In(1)``
        The update unit writes the network's first weight row (``overlap_update``: the next
        step may start).
    labels : ``Out(PortSignature)``
        Read side of the label memory.
    out_done : ``In(1)``
        The output writer stored a pass.
    """

    def __init__(self, geometry: Geometry, fwd_cmd_layout: data.StructLayout,
                 loss_layout: data.StructLayout, corr_cmd_layout: data.StructLayout, *,
                 overlap: bool = True, settled_fill: bool = False) -> None:
        self.geometry = geo = geometry
        self.overlap = overlap
        self.settled_fill = settled_fill
        self.sample_addr_bits = ceil_log2(geo.sample_words)
        self.job_fields = {name for name, _ in corr_cmd_layout}
        members = {
            "train": In(1),
            "train_stream": In(1),
            "infer": In(1),
            "abort": In(1),
            "steps": In(32),
            "step_samples": In(range(STEP_SAMPLES_MAX + 1)),
            "copies": In(range(COPIES_MAX + 1)),
            "sample_count": In(range(geo.sample_depth + 1)),
            "infer_count": In(range(geo.sample_depth + 1)),
            "step_set": In(1),
            "step_value": In(32),
            "cursor_set": In(1),
            "cursor_value": In(range(geo.sample_depth)),
            "step": Out(32),
            "cursor": Out(range(geo.sample_depth)),
            "busy": Out(1),
            "finished": Out(1),
            "inference": Out(1),
            "step_done": Out(1),
            "last_loss": Out(32),
            "waiting": Out(1),
            "fwd_cmd": Out(stream.Signature(fwd_cmd_layout)),
            "key_req": Out(stream.Signature(32)),
            "key": In(stream.Signature(32)),
            "loss": In(stream.Signature(loss_layout)),
            "corr_cmd": Out(stream.Signature(corr_cmd_layout)),
            "corr_busy": In(1),
            "corr_done": In(1),
            "upd_busy": In(1),
            "upd_first": In(1),
            "labels": Out(PortSignature(ceil_log2(geo.sample_depth), geo.label_bits)),
            "out_done": In(1),
        }
        if geo.streaming:
            slot = range(geo.sample_depth)
            members |= {
                "fill_set": In(1), "fill_value": In(slot), "fill": Out(slot), "fill_ok": Out(1),
                "probe_slot": In(range(1 << ceil_log2(geo.sample_depth))), "probe_free": Out(1),
                "record_we": Out(1), "record_addr": Out(range(geo.loss_depth)), "record_data": Out(32),
            }
        super().__init__(members)

    @staticmethod
    def tag_layout(geometry: Geometry, job_layout: data.StructLayout) -> data.StructLayout:
        """The pass tag that travels with each pass through the forward engine and loss unit.

        Besides what the loss unit and the collector need, it carries the fields of the
        pass's correlation job (``job_layout``, the :class:`~.correlation.CorrelationWalker`'s)
        that the issuer knows: only those the configuration's walker reads exist.  Whether
        a pass has a job is not carried: every training pass of target projection has one,
        otherwise every perturbed pass.
        """
        carried = {name: fld.shape for name, fld in job_layout if name not in ("dc", "final")}
        return data.StructLayout({
            "baseline": 1,
            "end_of_step": 1,
            "label": geometry.label_bits,
            **carried,
        })

    def elaborate(self, platform: object) -> Module:
        """The registers and bank accounting, the pass command's fixed fields, then the
        issuer and the collector (the module docstring's two processes)."""
        m = Module()
        s = self._registers(m)
        self._command_fields(m, s)
        self._issuer(m, s)
        self._collector(m, s)
        return m

    def _registers(self, m: Module) -> _SequencerState:
        """The run's counters and pass registers, and the bank accounting.

        Passes leave their data in banks that the correlation job of the pass reads while
        the next passes run: perturbed passes alternate between two sign banks and two
        activation/factor banks, baseline passes between two activation/factor banks.  A
        pass may overwrite a bank once the jobs that read it are done (they finish in
        order): a perturbed pass when at most the previous perturbed pass's job is
        pending; a baseline pass when the jobs of the sample before the previous one are
        done (at most `copies` pending; target projection: at most one).  Only passes
        with a job count, and each waits for at most one pending job: at most 2 pending.
        """
        geo = self.geometry
        mul = None
        if self.draws_events or self.stride_shift is None:
            m.submodules.mul = mul = SerialMultiplier()
        steps_left = Signal(32)
        samples_left = Signal(range(STEP_SAMPLES_MAX + 1))  # in this step, this one included
        copy = Signal(range(COPIES_MAX + 1))
        event = Signal(32)  # the event of the next antithetic pair
        sbase = Signal(self.sample_addr_bits)
        label = Signal(geo.label_bits)
        key = Signal(32)  # weight signs (stream 0), or the projection key of the run
        node_key = Signal(32)  # node signs and ALR noise (stream 1)
        sign_bank = Signal()
        base_bank = Signal()
        pending = Signal(range(3))
        issued = Signal()  # a pass with a job
        m.d.sync += pending.eq(pending + issued - self.corr_done)
        perturbed_free = pending <= 1
        baseline_free = pending <= (1 if geo.projection else self.copies)
        if not self.overlap:
            perturbed_free = baseline_free = pending == 0
        count = Signal(range(geo.sample_depth + 1))
        loss_sum = Signal(32)
        step_done = Signal()  # collector -> issuer
        collected = Signal(range(geo.sample_depth + 1))
        pass_bank = Signal(2)  # the activation bank of the pass being issued
        aborting = Signal()  # ABORT arrived: no new step, no new inference pass
        stream = Signal()
        step_base = Signal.like(self.cursor)
        step_loaded = Const(1, 1)
        if geo.streaming:
            # registered: STEP, which alone reads it, comes at least two cycles after the
            # cursor moves (NEXT_SAMPLE, WAIT_UPDATE), and a grant is seen a cycle later
            # (the distance through the issuer's state was the slowest path at 100 MHz)
            step_loaded = Signal(name="step_loaded")
            m.d.sync += step_loaded.eq(self.ring_holds(self.cursor, self.fill, self.step_samples,
                                                          self.sample_count))
        return _SequencerState(
            mul=mul, steps_left=steps_left, samples_left=samples_left, copy=copy, event=event,
            sbase=sbase, label=label, key=key, node_key=node_key, sign_bank=sign_bank,
            base_bank=base_bank, issued=issued, perturbed_free=perturbed_free,
            baseline_free=baseline_free, count=count, loss_sum=loss_sum, step_done=step_done,
            collected=collected, pass_bank=pass_bank, aborting=aborting,
            last_sample=samples_left == 1, last_copy=copy == self.copies - 1,
            stream=stream, step_base=step_base, step_base_next=Signal.like(step_base), step_loaded=step_loaded,
            step_first=Signal.like(self.cursor), update_pending=Signal(),
        )

    def _command_fields(self, m: Module, s: _SequencerState) -> None:
        """The pass command's fields that every state drives the same way, the host's
        writes of ``step`` and ``cursor`` (while idle) and the latched ABORT."""
        cmd = self.fwd_cmd.payload
        tag = cmd.tag
        m.d.comb += [
            self.labels.raddr.eq(self.cursor),
            cmd.sample_base.eq(s.sbase),
            tag.label.eq(s.label),
            cmd.bank.eq(s.pass_bank),
        ]
        # the job fields the tag carries (Sequencer.tag_layout), where they exist
        for name, value in (("sign_bank", s.sign_bank), ("bank", s.pass_bank),
                            ("base_bank", Cat(s.base_bank, 0)), ("sample_base", s.sbase)):
            if name in self.job_fields:
                m.d.comb += tag[name].eq(value)
        if self.geometry.inject_layers:
            m.d.comb += cmd.node_key.eq(s.node_key)
        if self.geometry.projection:
            m.d.comb += cmd.label.eq(s.label)
        with m.If(self.step_set & ~self.busy):
            m.d.sync += self.step.eq(self.step_value)
        with m.If(self.cursor_set & ~self.busy):
            m.d.sync += self.cursor.eq(self.cursor_value)
        # step_base moves through its next value, which the fill check registers against
        m.d.comb += s.step_base_next.eq(s.step_base)
        m.d.sync += s.step_base.eq(s.step_base_next)
        with m.If(~self.busy):  # where a run starts (the TRAIN pulse comes cycles after a cursor write)
            m.d.comb += s.step_base_next.eq(self.cursor)
        if self.geometry.overlap_update:
            # a step may start before the previous step's update ends, whose final walk
            # still reads that step's samples: they stay the run's (step_base) until then
            # (STEP's own assignments, later in the elaboration, win in the same cycle)
            with m.If(s.step_done):
                m.d.sync += s.update_pending.eq(0)
                m.d.comb += s.step_base_next.eq(s.step_first)
        if self.geometry.streaming:
            self._ring(m, s)

        with m.If(self.abort & self.busy):
            m.d.sync += s.aborting.eq(1)

    @staticmethod
    def ring_holds(a: Value, b: Value, n: Value, count: Value) -> Value:
        """Whether ``n`` or more slots lie from ``a`` forward to ``b`` on the ring of
        ``count`` slots (``a`` and ``b`` below it): ``b - a >= n`` where ``b >= a``, else
        ``b + count - a >= n``, as ``a + n`` compared with ``b`` and with ``b + count`` side
        by side (the distance's subtraction, then the comparison, was the 16-lane build's
        slowest path at 100 MHz: 61 steps)."""
        reach = a + n
        return Mux(b >= a, b >= reach, b + count >= reach)

    @staticmethod
    def on_arc(a: Value, b: Value, slot: Value) -> Value:
        """Whether ``slot`` is on the ring from ``a`` forward to ``b``, ``b`` excluded (all
        three below ``sample_count``): the distance from ``a`` to ``slot`` below that to ``b``, from
        three comparisons side by side instead of the distances' subtractions (that chain,
        from ``SAMPLE_COUNT`` into the bus's answer, was the slowest path at 100 MHz)."""
        from_a, before_b = slot >= a, slot < b
        return Mux(a <= b, from_a & before_b, from_a | before_b)

    def slot_free(self, s: _SequencerState, slot: Value) -> Value:
        """Whether a ``TRAIN_STREAM`` run leaves ``slot`` alone: the run reads the samples from
        its step's first one up to ``fill`` (the step in progress, and those granted for the
        next), and none at or beyond ``sample_count``."""
        in_ring = slot < self.sample_count
        return ~in_ring | ~self.on_arc(s.step_base, self.fill, slot)

    def _ring(self, m: Module, s: _SequencerState) -> None:
        """TRAIN_STREAM's fill position: host writes (while idle, or granting more while the
        run goes on), and the bus's questions about sample slots."""
        # (from a register: the issuer's state through the grant into the register file's
        # error flag was a slowest path of the ECP5 builds, 17 steps; a grant in a run's
        # first cycle is refused, as while idle-to-busy the register file refuses writes)
        live = Signal()
        m.d.sync += live.eq(self.busy & s.stream & ~self.inference)
        # with settled_fill registered from step_base's next value (the written value, fill and
        # sample_count stand from the cycle before: no register write comes in it), the same
        # verdict a cycle earlier: the write data through the comparisons with step_base
        # into the register file's error flag was a slowest path at 100 MHz
        base = s.step_base_next if self.settled_fill else s.step_base
        grants = (self.fill_value < self.sample_count) & ~self.on_arc(base, self.fill, self.fill_value)
        if self.settled_fill:
            registered = Signal(name="fill_grants")
            m.d.sync += registered.eq(grants)
            grants = registered
        m.d.comb += [
            self.fill_ok.eq(live & grants),
            self.probe_free.eq(live & self.slot_free(s, self.probe_slot)),
        ]
        with m.If(self.fill_set & (~self.busy | self.fill_ok)):
            m.d.sync += self.fill.eq(self.fill_value)

    # -- issuer ------------------------------------------------------------------------------

    def _issuer(self, m: Module, s: _SequencerState) -> None:
        """The issuer: start a run, then per step and sample the baseline pass, the pass
        keys and the perturbed passes; inference passes; ``busy`` while not IDLE."""
        with m.FSM(name="issuer") as issuer:
            self._run_start_states(m, s)
            self._sample_states(m, s)
            self._key_states(m, s)
            self._perturbed_state(m, s)
            self._step_end_states(m, s)
            self._inference_states(m, s)
        m.d.comb += self.busy.eq(~issuer.ongoing("IDLE"))

    @property
    def draws_events(self) -> bool:
        """Whether a pass draws from events (every rule but target projection): the run
        starts by computing its first event ``k * S * P``."""
        return not self.geometry.projection

    @property
    def stride_shift(self) -> int | None:
        """``log2(sample_stride)`` when the stride is a power of two (the sample address is a
        shift of the cursor), else None (a product on the serial multiplier)."""
        return self.geometry.sample_stride_shift

    def _run_start_states(self, m: Module, s: _SequencerState) -> None:
        """IDLE until TRAIN or INFER; for training, the first event ``k * S * P`` and the
        cursor's sample address on the serial multiplier (each where needed: see
        :attr:`draws_events`, :attr:`stride_shift`), then (target projection) the run's
        projection key."""
        mul = s.mul
        pairs = (self.copies + 1) >> 1  # P = ceil(copies / 2)
        after = "PROJECTION_KEY" if self.geometry.projection else "STEP"

        def sample_address() -> None:
            """From a state whose products are done: the cursor's sample address."""
            if self.stride_shift is None:
                m.d.comb += [mul.start.eq(1), mul.a.eq(self.cursor), mul.b.eq(self.geometry.sample_stride)]
                m.next = "MUL_S"
            else:
                m.d.sync += s.sbase.eq(self.cursor << self.stride_shift)
                m.next = after

        with m.State("IDLE"):
            with m.If(self.train | self.train_stream):
                m.d.sync += [self.inference.eq(0), s.steps_left.eq(self.steps), s.stream.eq(self.train_stream)]
                if self.draws_events:
                    m.d.comb += [mul.start.eq(1), mul.a.eq(self.step_samples), mul.b.eq(pairs)]
                    m.next = "MUL_SP"
                else:
                    sample_address()
            with m.Elif(self.infer):
                m.d.sync += [self.inference.eq(1), s.count.eq(0), s.sbase.eq(0)]
                m.next = "INFER"
        if self.draws_events:
            with m.State("MUL_SP"), m.If(~mul.busy):  # S * P
                m.d.comb += [mul.start.eq(1), mul.a.eq(mul.p), mul.b.eq(self.step)]
                m.next = "MUL_E"
            with m.State("MUL_E"), m.If(~mul.busy):  # k * S * P: the first event of the step
                m.d.sync += s.event.eq(mul.p)
                sample_address()
        if self.stride_shift is None:
            with m.State("MUL_S"), m.If(~mul.busy):  # the cursor's sample address
                m.d.sync += s.sbase.eq(mul.p)
                m.next = after
        with m.State("PROJECTION_KEY"):  # pass_key(seed, 2, 0), once per run
            m.d.comb += [self.key_req.valid.eq(1), self.key_req.payload.eq(STREAM_PROJECTION)]
            with m.If(self.key_req.ready):
                m.next = "PROJECTION_KEY_WAIT"
        with m.State("PROJECTION_KEY_WAIT"):
            m.d.comb += self.key.ready.eq(1)
            with m.If(self.key.valid):
                m.d.sync += s.key.eq(self.key.payload)
                m.next = "STEP"

    def _sample_states(self, m: Module, s: _SequencerState) -> None:
        """STEP (or FINISH), then per sample its label and its baseline pass (BASE)."""
        cmd = self.fwd_cmd.payload
        projection = self.geometry.projection
        with m.State("STEP"):
            m.d.sync += s.samples_left.eq(self.step_samples)
            if self.geometry.overlap_update:
                m.d.sync += s.step_first.eq(self.cursor)
                with m.If(~s.update_pending | s.step_done):
                    m.d.comb += s.step_base_next.eq(self.cursor)
            else:
                m.d.comb += s.step_base_next.eq(self.cursor)
            with m.If((s.steps_left == 0) | s.aborting):
                m.next = "FINISH"
            with m.Elif(s.stream & ~s.step_loaded):  # TRAIN_STREAM: the host has not caught up
                m.d.comb += self.waiting.eq(1)
            with m.Else():
                m.next = "SAMPLE"
        with m.State("SAMPLE"):  # the label of the cursor's sample is read this cycle
            # and only in this one: a streamed run's host writes never land on the word of
            # a sample the step has taken, so the label memory is declared free of read
            # collisions (a board may then drop yosys's bypass: Board.undefined_read_collisions)
            m.d.comb += self.labels.ren.eq(1)
            m.next = "LABEL"
        with m.State("LABEL"):
            m.d.sync += [s.label.eq(self.labels.rdata), s.copy.eq(0)]
            m.next = "BASE"
        with m.State("BASE"):
            m.d.comb += [
                self.fwd_cmd.valid.eq(s.baseline_free),
                s.pass_bank.eq(Cat(s.base_bank, 0)),
                cmd.key.eq(s.key),
                cmd.tag.baseline.eq(1),
            ]
            if projection:
                m.d.comb += cmd.tag.end_of_step.eq(s.last_sample)
            with m.If(self.fwd_cmd.valid & self.fwd_cmd.ready):
                if projection:
                    m.d.comb += s.issued.eq(1)
                    m.next = "NEXT_SAMPLE"
                else:
                    m.next = "KEY" if self.geometry.perturbed_layers else "NODE_KEY"

    def _key_states(self, m: Module, s: _SequencerState) -> None:
        """KEY and NODE_KEY: the antithetic pair's pass keys (streams 0 and 1) from the
        forward engine's hash pipe, each requested, then awaited (``_WAIT``)."""
        node_keys = bool(self.geometry.inject_layers)
        for state, stream_no, target, after in (
            ("KEY", STREAM_WEIGHT_SIGN, s.key, "NODE_KEY" if node_keys else "PERTURBED"),
            ("NODE_KEY", STREAM_NODE, s.node_key, "PERTURBED"),
        ):
            with m.State(state):
                m.d.comb += [
                    self.key_req.valid.eq(1),
                    self.key_req.payload.eq((s.event << 2)[:32] | stream_no),
                ]
                with m.If(self.key_req.ready):
                    m.next = state + "_WAIT"
            with m.State(state + "_WAIT"):
                m.d.comb += self.key.ready.eq(1)
                with m.If(self.key.valid):
                    m.d.sync += target.eq(self.key.payload)
                    m.next = after

    def _perturbed_state(self, m: Module, s: _SequencerState) -> None:
        """PERTURBED: one perturbed pass per copy, alternating the sign bank; the event
        advances after each antithetic pair (and after an odd last copy)."""
        cmd = self.fwd_cmd.payload
        copy, last_copy = s.copy, s.last_copy
        with m.State("PERTURBED"):
            m.d.comb += [
                self.fwd_cmd.valid.eq(s.perturbed_free),
                cmd.perturb.eq(1),
                s.pass_bank.eq(Cat(s.sign_bank, 1)),
                cmd.negate.eq(copy[0]),
                cmd.key.eq(s.key),
                cmd.sign_bank.eq(s.sign_bank),
                cmd.tag.end_of_step.eq(s.last_sample & last_copy),
            ]
            if "negate" in self.job_fields:
                m.d.comb += cmd.tag.negate.eq(copy[0])
            with m.If(self.fwd_cmd.valid & self.fwd_cmd.ready):
                m.d.comb += s.issued.eq(1)
                m.d.sync += [copy.eq(copy + 1), s.sign_bank.eq(~s.sign_bank)]
                with m.If(copy[0] | last_copy):  # a pair is complete: e + 1
                    m.d.sync += s.event.eq(s.event + 1)
                with m.If(last_copy):
                    m.next = "NEXT_SAMPLE"
                with m.Elif(copy[0]):  # the next copy starts a new antithetic pair
                    m.next = "KEY" if self.geometry.perturbed_layers else "NODE_KEY"

    def _step_end_states(self, m: Module, s: _SequencerState) -> None:
        """NEXT_SAMPLE: advance the cursor (wrapping) and the sample address; after the
        step's last sample WAIT_UPDATE for the collector's ``step_done``, or with
        ``overlap_update`` only for the update's first write of the step's weights.

        Why that is soon enough: the step's final correlation walk hands the update one
        weight row a cycle, in ascending order from the network's first row, without a
        gap (hdl/correlation.py ``_walk``), and the update writes each row a fixed number
        of cycles later (hdl/update.py).  The next step's first pass reads the weights in
        the same order, at most one row a cycle (hdl/forward.py ``_issue``), through its
        own read port, and its first read comes at least four cycles after the first row
        is written (``STEP``, ``SAMPLE``, ``LABEL``, ``BASE``): it never reads a row
        before the update has written it.  With an update narrower than the lanes
        (``hardware.update_lanes``) the rows come ``update_ratio`` cycles apart, and the
        update's ``first_write`` comes that much later, where the rows still to be
        written are written no slower than a reader from the first row goes (hdl/update.py
        ``_first_write``).  The collector still ends the step when the update is done; a
        run's ``FINISH`` waits for that."""
        stride = self.geometry.sample_stride
        with m.State("NEXT_SAMPLE"):  # the next sample's baseline takes the other bank
            m.d.sync += [s.samples_left.eq(s.samples_left - 1), s.base_bank.eq(~s.base_bank)]
            with m.If(self.cursor == self.sample_count - 1):
                m.d.sync += [self.cursor.eq(0), s.sbase.eq(0)]
            with m.Else():
                m.d.sync += [self.cursor.eq(self.cursor + 1), s.sbase.eq(s.sbase + stride)]
            with m.If(s.last_sample):
                m.next = "WAIT_UPDATE"
            with m.Else():
                m.next = "SAMPLE"
        overlap = self.geometry.overlap_update
        with m.State("WAIT_UPDATE"), m.If(self.upd_first if overlap else s.step_done):
            m.d.sync += s.steps_left.eq(s.steps_left - 1)
            if overlap:
                m.d.sync += s.update_pending.eq(~s.step_done)
            m.next = "STEP"

    def _inference_states(self, m: Module, s: _SequencerState) -> None:
        """INFER: baseline passes on samples ``0 .. count - 1``; INFER_WAIT for their
        results; FINISH (also the end of a training run) clears ABORT."""
        with m.State("INFER"):
            with m.If((s.count == self.infer_count) | s.aborting):
                m.next = "INFER_WAIT"
            with m.Else():
                m.d.comb += [self.fwd_cmd.valid.eq(1), self.fwd_cmd.payload.tag.baseline.eq(1)]
                with m.If(self.fwd_cmd.ready):
                    m.d.sync += [s.count.eq(s.count + 1), s.sbase.eq(s.sbase + self.geometry.sample_stride)]
        with m.State("INFER_WAIT"), m.If(s.collected == s.count):
            m.next = "FINISH"
        with m.State("FINISH"), m.If(~s.update_pending | s.step_done):
            m.d.comb += self.finished.eq(1)
            m.d.sync += s.aborting.eq(0)
            m.next = "IDLE"

    # -- collector ---------------------------------------------------------------------------

    def _collector(self, m: Module, s: _SequencerState) -> None:
        """The collector: sum the baseline losses, hand each pass with a job to the
        correlation front end, count inference results, and end the step once the
        correlation and the update unit are idle."""
        res = self.loss.payload
        projection = self.geometry.projection
        collected = s.collected
        # the units' busy flags from a register: from the update unit's stages through the
        # correlation unit's into the step's end was the 32-lane build's slowest path, across
        # the chip.  A unit is busy from the cycle after it takes the step's last job, which
        # the register shows a cycle later still: UPDATE's first cycle does not look (a
        # cycle a step: ``Schedule.update_drain`` in perturbo/estimate.py).
        quiet, looking = Signal(), Signal()
        m.d.sync += [quiet.eq(~self.corr_busy & ~self.upd_busy), looking.eq(0)]
        with m.FSM(name="collector"):
            with m.State("COLLECT"):
                with m.If(self.infer & ~self.busy):
                    m.d.sync += collected.eq(0)
                with m.Elif(self.out_done):
                    m.d.sync += collected.eq(collected + 1)
                job = self.corr_cmd.payload
                has_job = Const(1, 1) if projection else ~res.baseline  # (see tag_layout)
                m.d.comb += [
                    self.corr_cmd.valid.eq(self.loss.valid & has_job),
                    job.dc.eq(1 if projection else res.dc),  # target projection: g * x alone
                    job.final.eq(res.tag.end_of_step),
                    self.loss.ready.eq(~has_job | self.corr_cmd.ready),
                ]
                # sorted: a set of strings iterates in an order that changes with the hash
                # seed of the process, and so would the order of these assignments in the
                # Verilog (the same configuration gave different text from run to run)
                m.d.comb += [job[name].eq(res.tag[name])
                             for name in sorted(self.job_fields - {"dc", "final"})]
                with m.If(self.loss.valid & self.loss.ready):
                    with m.If(res.baseline):
                        m.d.sync += s.loss_sum.eq(s.loss_sum + res.loss)
                    with m.If(res.tag.end_of_step):
                        m.next = "UPDATE"
            # the last correlation of the step hands its sums to the update unit row by
            # row; when both are idle the weights are updated and G is clear
            with m.State("UPDATE"):
                m.d.sync += looking.eq(1)
                with m.If(looking & quiet):
                    m.d.sync += [
                        self.step.eq(self.step + 1),
                        self.last_loss.eq(s.loss_sum),
                        s.loss_sum.eq(0),
                    ]
                    m.d.comb += [s.step_done.eq(1), self.step_done.eq(1)]
                    if self.geometry.streaming:  # written with the step count: a host that sees
                        # STEP = k + 1 finds step k's loss in the record
                        m.d.comb += [self.record_we.eq(1), self.record_addr.eq(self.step),
                                     self.record_data.eq(s.loss_sum)]
                    m.next = "COLLECT"
