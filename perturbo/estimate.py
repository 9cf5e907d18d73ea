"""A cycle and memory model of the generated accelerator, from the configuration alone.

``perturbo estimate CONFIG`` predicts what the accelerator's counters (``CYCLES`` and
``MAC_BUSY``, :data:`perturbo.hdl.registers.REGISTERS`) will count for one ``TRAIN``
command (one step, ``STEPS = 1``, as :class:`perturbo.host.accelerator.AcceleratorBackend`
runs them, or several: :func:`run_cycles`) and for an ``INFER`` command, and the words and bits of every memory the
generated accelerator holds.

The model is derived from the RTL's schedule, not fitted.  Every latency it uses is a
named constant or a term of :class:`Schedule`, commented with the place in hdl/ that
makes it; when a unit's pipeline changes, the term changes with it.  The schedule of a
step is

- *run start* (:func:`run_start_cycles`): the sequencer's serial multiplier, up to three
  products (hdl/sequencer.py ``MUL_SP``, ``MUL_E``, ``MUL_S``, where needed; each one cycle per bit
  of its second operand, plus one), the projection key (target projection), then
  ``STEP``, ``SAMPLE``, ``LABEL``;
- *passes*: per sample the baseline pass and ``copies`` perturbed passes (target
  projection: the baseline pass alone), each ``R + I`` cycles on the forward
  engine (``R`` tokens, one per weight row; ``I`` interlock stalls where a layer waits
  for the previous layer's last activation word; the engine takes the next command in
  the cycle of the last token, hdl/forward.py ``_take_command``), unless the sequencer waits for
  a pass key (``KEY``/``NODE_KEY``, which the forward engine's hash pipe computes only
  in a cycle without a perturbed token) or for a sign/activation bank (a pass may
  overwrite a bank only once the correlation job that reads it is done: the
  correlation walker takes ``R + 3`` cycles a job, hdl/correlation.py);
- *tail*: the last pass's loss, its correlation walk and the fused update's pipe
  (:attr:`Schedule.update_drain`), then ``STEP`` and ``FINISH``.

The passes overlap the correlation of earlier passes, so :func:`step_timing` runs a
recurrence over the passes of a step (one line per event: command taken, last token,
loss ready, job taken, job done), which is exact as long as the forward engine's
pipe never waits for the loss unit (:func:`step_timing` checks the condition and says
when it does not hold).  In the steady state a step costs

    ``S * (1 + copies) * (R + I)``  (target projection: ``S * (R + I)``)

plus the waits the recurrence finds, plus run start and tail; ``MAC_BUSY`` is exactly
``S * passes * R``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .config import MAC_WEIGHT_BITS, Config, Rule
from .limits import MACS_WEIGHT_COPY, ring_steps

__all__ = [
    "Schedule", "PassShape", "StepTiming", "MemoryUse", "Estimate", "Comparison", "schedule",
    "pass_shape", "step_timing", "run_start_cycles", "run_cycles", "inference_cycles", "memories",
    "estimate", "format_estimate", "compare_with_counters",
]

#: Bits of one iCE40 embedded block RAM (EBR, 256 x 16).
EBR_BITS = 4096
#: Bits of one ECP5 DP16KD block RAM (1024 x 18 at its widest true dual-port shape).
DP16KD_BITS = 18432
#: Bits of one iCE40UP5K SPRAM block (16 K x 16).
SPRAM_BITS = 262144


#: The clock rates are given at when the configuration names none (``hardware.clock_mhz``
#: unset: a board build runs at the board's oscillator): the iCEBreaker's 12 MHz, the
#: slowest clock perturbo builds for.
DEFAULT_CLOCK_MHZ = 12.0


def _bits(n: int) -> int:
    """Cycles the serial multiplier is busy for a second operand ``n``: one per bit."""
    return max(0, int(n)).bit_length()


def _ceil_log2(n: int) -> int:
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class Schedule:
    """The latencies of the RTL that the model uses, for one configuration.

    Each attribute is one latency of hdl/, named where it is made.
    """

    #: hdl/random.py ``draw_latency``: the hash pipe (the position of the perturbation
    #: stage in the forward engine, and the cycles a pass key takes on lane 0's pipe)
    H: int  # noqa: N815 (the name hdl/forward.py uses)
    #: rows of every layer: one token per row and pass on the forward engine, one row per
    #: cycle and job on the correlation walker (hdl/geometry.py ``rows``)
    R: int  # noqa: N815
    #: hdl/forward.py ``written_position``: the pipe position where a bias token counts for
    #: the interlock as its group written
    written_position: int
    #: hdl/loss.py ``LossUnit.STAGES``: the cycles the loss unit drains its pipeline
    #: (``DRAIN``) after a pass's last lane before it forms the result
    loss_stages: int
    #: hdl/correlation.py ``CorrelationWalker.JOB_GAP``: the walker's stages B, C and its
    #: output register, which a job waits to drain before the next is taken
    walker_gap: int
    #: hdl/correlation.py ``CorrelationUnit.latency``: from taking a row to writing it
    #: (and handing on a final row's sums; a cycle more with ``hardware.register_grads``)
    corr_latency: int
    #: hdl/update.py ``UpdateUnit.latency``: the update unit's stages B to E (one more where
    #: its product ``U * lr_mult`` takes more than one multiplier; one more with
    #: ``hardware.register_grads``, two where the product takes more than one)
    update_latency: int
    #: hdl/geometry.py ``update_ratio``: the cycles the update unit takes a weight row
    #: (``hardware.update_lanes``), and so the cycles apart of the final job's rows
    update_ratio: int

    @property
    def output_visible(self) -> int:
        """Cycles from a bias token's issue to the interlock seeing its group written: the
        record ``wr_*`` is registered as the bias token passes ``written_position``
        (hdl/forward.py ``_record_written``), so a token reading the word may issue a cycle
        after that."""
        return self.written_position + 1

    @property
    def result_valid(self) -> int:
        """Cycles from the pass's last token to its last result on ``result``: the output
        register at position H+5 (hdl/forward.py ``_output``: ``out_valid``)."""
        return self.H + 5

    @property
    def key(self) -> int:
        """From the cycle a key request is taken to the cycle the sequencer is in its next
        state: the request enters lane 0's hash pipe, ``key_flag`` runs H positions, the key
        is registered on ``key`` (hdl/forward.py ``_key_pipe``: H + 1), and the sequencer's
        ``_WAIT`` state takes it and moves on (hdl/sequencer.py ``_key_states``: + 1)."""
        return self.H + 2

    @property
    def loss_result(self) -> int:
        """From a pass's last token to its loss offered on the loss unit's ``o``, less the
        lanes of the last group: the engine's result (``result_valid``), the loss unit's
        ``IDLE`` taking the group (+ 1), its pipeline drained (``loss_stages``, hdl/loss.py
        ``DRAIN``); ``OUT`` follows the last lane and the drain."""
        return self.result_valid + 1 + self.loss_stages

    @property
    def walk(self) -> int:
        """Cycles the correlation walker spends on a job until it takes the next one:
        ``R`` rows (stage A) and the stages B and C drained (hdl/correlation.py
        ``_take_job``: ``cmd.ready`` needs A, B and C empty)."""
        return self.R + self.walker_gap

    @property
    def walk_done(self) -> int:
        """From the cycle a job is taken to its ``done`` pulse (stage B's last row with A idle,
        hdl/correlation.py ``_select_input``)."""
        return self.R + 1

    @property
    def final_walk(self) -> int:
        """:attr:`walk` for the step's final job, whose rows the walker holds
        ``update_ratio`` cycles each (hdl/correlation.py ``_walk``)."""
        return self.update_ratio * self.R + self.walker_gap

    @property
    def final_walk_done(self) -> int:
        """:attr:`walk_done` for the step's final job."""
        return self.update_ratio * self.R + 1

    @property
    def update_drain(self) -> int:
        """From the cycle the step's last job is taken to the cycle the collector sees the
        correlation and the update idle (hdl/sequencer.py ``UPDATE``): the walk's ``R`` rows
        (hdl/correlation.py stage A), stages B and C and the walker's output register
        (``walker_gap``), the correlation unit's stages D, X and W, the last of which hands
        the final sums on (``corr_latency``), the update unit's stages B to E
        (``update_latency``), and the first idle cycle, which ``UPDATE`` sees from a
        register (+ 2).  With ``update_ratio`` cycles a row, the walk's rows come that many
        cycles apart and the last row's beats follow its first: ``update_ratio * (R + 1)``
        cycles after the write of the first row's first beat, which :attr:`first_write` is
        ``(update_ratio - 1) * (R + 1)`` cycles after."""
        return self.first_write + self.R + 1

    @property
    def first_write(self) -> int:
        """From the cycle the step's last job is taken to the update's write of the first
        weight row (hdl/update.py ``first_write``): the rows are written one a cycle, the
        last one ``R - 1`` cycles later, two cycles before :attr:`update_drain` ends.  With
        ``update_ratio`` cycles a row the first row reaches the unit ``update_ratio - 1``
        cycles later (the walker holds it), and ``first_write`` comes ``(update_ratio - 1)
        * R`` cycles after its write."""
        return (self.walker_gap + self.corr_latency + self.update_latency + 1
                + (self.update_ratio - 1) * (self.R + 1))

    #: hdl/sequencer.py: after a sample's last pass, ``NEXT_SAMPLE``, ``SAMPLE`` and
    #: ``LABEL`` before ``BASE`` offers the next baseline pass
    NEXT_SAMPLE_CYCLES = 4
    #: hdl/sequencer.py ``STEP``, ``SAMPLE``, ``LABEL`` at the start of a step
    STEP_START_CYCLES = 3


@dataclass(frozen=True)
class PassShape:
    """One pass on the forward engine: when its tokens issue, relative to the first.

    ``issue[i]`` is the cycle offset of the ``i``-th token (one per weight row, in row
    order) from the first; ``key_free[t]`` says whether the key pipe may take a request
    in the cycle at offset ``t`` (hdl/forward.py ``_key_pipe``: no token at the issue
    position, or one that is neither perturbed nor a neuron draw).
    """

    issue: tuple[int, ...]
    key_free: tuple[bool, ...]

    @property
    def length(self) -> int:
        """Cycles from the first token to the last, inclusive: ``R + I``."""
        return self.issue[-1] + 1

    @property
    def interlock(self) -> int:
        """``I``: the cycles tokens waited for an activation word (hdl/forward.py ``_interlock``)."""
        return self.length - len(self.issue)

    def first_key_cycle(self, offset: int) -> int:
        """The first offset ``>= offset`` at which a key request is taken (after the pass's
        last token the engine issues nothing, so that is always free)."""
        for t in range(max(0, offset), len(self.key_free)):
            if self.key_free[t]:
                return t
        return max(offset, len(self.key_free))


def pass_shape(cfg: Config, *, perturbed: bool) -> PassShape:
    """The token schedule of a pass (hdl/forward.py ``_issue``, ``_interlock``).

    Layer 0 reads the sample buffer, so its tokens issue back to back.  A later layer's
    token at input ``j`` reads activation word ``j // lanes``, the output of the previous
    layer's group ``j // lanes``, and waits until that group's bias token has left the
    pipe (:attr:`Schedule.output_visible` cycles after it issued); the bias token reads
    nothing.
    """
    from .hdl.geometry import Geometry  # the hdl package imports Amaranth: only when used

    geo = Geometry(cfg)
    sched = schedule(cfg)
    lanes = geo.lanes
    inject = set(geo.inject_layers)
    issue: list[int] = []
    busy: list[bool] = []  # per token: it blocks the key pipe
    t = -1
    last_bias: list[int] = []  # issue time of the previous layer's group bias tokens
    for lay in geo.layers:
        bias_times = []
        for _g in range(lay.groups):
            for token in range(lay.tokens):
                j = token * lay.split  # the token's first input
                t += 1
                if lay.index > 0 and j < lay.n_in:
                    t = max(t, last_bias[j // lanes] + sched.output_visible)
                issue.append(t)
                is_bias = token == lay.tokens - 1
                perturb = perturbed and lay.rule == Rule.MGD_WEIGHT
                # a neuron draw: on the bias token, or with one shared hash pipe on the
                # group's first `lanes` inputs (hdl/forward.py ``_draws_here``)
                draws_here = token < lanes if geo.shared_draw else is_bias
                draw = draws_here and ((perturbed and lay.index in inject)
                                       or (geo.projection and lay.index < geo.n_layers - 1))
                busy.append(perturb or draw)
                if is_bias:
                    bias_times.append(t)
        last_bias = bias_times
    free = [True] * (issue[-1] + 1)
    for when, blocks in zip(issue, busy, strict=True):
        free[when] = not blocks
    return PassShape(issue=tuple(issue), key_free=tuple(free))


def schedule(cfg: Config) -> Schedule:
    """The :class:`Schedule` of a configuration."""
    from .hdl.correlation import CorrelationUnit, CorrelationWalker
    from .hdl.forward import written_position
    from .hdl.geometry import Geometry
    from .hdl.loss import LossUnit
    from .hdl.random import draw_latency
    from .hdl.update import UpdateUnit

    geo = Geometry(cfg)
    h = draw_latency(cfg.hardware.hash_stages_per_register)
    return Schedule(H=h, R=geo.rows, written_position=written_position(h),
                    loss_stages=LossUnit.STAGES, walker_gap=CorrelationWalker.JOB_GAP,
                    corr_latency=CorrelationUnit.latency_for(geo.grads_read_latency),
                    update_latency=UpdateUnit.latency(geo), update_ratio=geo.update_ratio)


def _group_lanes_cycles(cfg: Config) -> int:
    """Cycles the loss unit (and the inference output writer) spend on the output layer's
    last group: one per lane holding a neuron, and one more on the first empty lane
    (hdl/loss.py ``LANES``: it stops at the first empty lane or the last lane)."""
    lanes = cfg.hardware.lanes
    n_out = cfg.network.layers[-1]
    count = n_out - (math.ceil(n_out / lanes) - 1) * lanes
    return lanes if count == lanes else count + 1


@dataclass
class StepTiming:
    """What :func:`step_timing` found for one step.

    ``cycles`` and ``mac_busy`` are what ``CYCLES`` and ``MAC_BUSY`` count for a ``TRAIN``
    command of one step; the other fields split ``cycles`` into the terms of the module
    docstring.
    """

    cycles: int
    #: cycles of each step of a run of several steps (``TRAIN`` with ``STEPS > 1``): from
    #: ``STEP`` to the collector's ``step_done``, after which the next step's ``STEP`` follows
    body: int
    mac_busy: int
    stalls: int  #: what ``STALLS`` counts: interlock cycles (the pipe never waits here)
    run_start: int  #: cycles before the first pass command is taken
    passes: int  #: passes in the step
    pass_cycles: int  #: ``R + I`` per pass, and the cycle the first command is taken in
    key_waits: int  #: cycles the engine was free but the sequencer waited for a pass key
    bank_waits: int  #: cycles the engine was free but the pass's bank was still being read
    other_waits: int  #: cycles the engine was free while the issuer moved to the next sample
    tail: int  #: from the last pass's command to the end of the command
    jobs: int  #: correlation jobs
    events: list[dict[str, int]] = field(default_factory=list, repr=False)


def step_timing(cfg: Config, step: int = 1, *, events: bool = False) -> StepTiming:
    """The cycles of one ``TRAIN`` command of one step, ``step`` being the step counter ``k``
    it starts from (``MUL_E`` takes one cycle per bit of ``k``), and the cycles a step
    takes in a run of several (:attr:`StepTiming.body`, from :func:`_run`).

    A recurrence over the step's passes in issue order (:func:`_run`).
    """
    one = _run(cfg, 1, step)
    log = one.log
    passes = len(log)
    R = schedule(cfg).R  # noqa: N806
    return StepTiming(
        cycles=one.end, body=_run(cfg, 3, step).period, mac_busy=passes * R, stalls=one.stalls,
        run_start=log[0]["a"] - 1, passes=passes,
        pass_cycles=1 + passes * R + one.stalls, key_waits=one.key_waits,
        bank_waits=one.bank_waits, other_waits=one.other_waits,
        tail=one.end - log[-1]["e"], jobs=one.jobs, events=log if events else [],
    )


@dataclass
class _RunTiming:
    """What :func:`_run` found: the last busy cycle ``end`` and the cycle each step's
    ``STEP`` was entered, the passes' events, and the waits and stalls of the run."""

    end: int
    step_starts: list[int]
    log: list[dict[str, int]]
    stalls: int
    key_waits: int
    bank_waits: int
    other_waits: int
    jobs: int

    @property
    def period(self) -> int:
        """Cycles between the last two steps' ``STEP`` (a run's steps after the first
        start alike, so from the third step on this is every step's)."""
        return self.step_starts[-1] - self.step_starts[-2]


def _run(cfg: Config, steps: int, first_step: int) -> _RunTiming:
    """The recurrence over the passes of a ``TRAIN`` command of ``steps`` steps.

    For pass ``p``: the sequencer offers the command at ``ready`` (its states), the
    engine's command register takes it at ``b`` when it is empty and the bank accounting
    allows (hdl/sequencer.py ``_registers``: at most one job pending for a perturbed pass;
    for a baseline pass at most ``copies``, target projection 1), and the sequencer moves
    on; the engine takes it from there at ``a >= b + 1`` when it is free (hdl/forward.py
    ``_take_command``); its last token issues at ``e = a + R + I``;
    its loss is offered at ``o = e + H + 6 + STAGES + L`` (the result register, the loss
    unit's ``LANES``, ``DRAIN`` and ``OUT``: :attr:`Schedule.loss_result`); its job (if
    any) is taken at ``j = max(o, j_prev + R + 3)`` and done at ``j + R + 1``, freeing
    its banks in the next cycle (the step's last job, whose rows the walker holds for the
    update's beats: ``update_ratio * R`` for ``R``).  The step's last job ends the step ``update_drain``
    cycles after it is taken; the next step's ``STEP`` follows that (or, with
    ``overlap_update``, the update's first write of the weights,
    :attr:`Schedule.first_write`), and after the last step ``FINISH``, which waits for the
    last update.
    """
    from .hdl.geometry import Geometry

    geo = Geometry(cfg)
    sched = schedule(cfg)
    S = cfg.rule.samples_per_step  # noqa: N806 (STEP_SAMPLES)
    copies = cfg.rule.copies
    projection = geo.projection
    base_shape = pass_shape(cfg, perturbed=False)
    pert_shape = base_shape if projection else pass_shape(cfg, perturbed=True)
    keys_per_pair = (1 if geo.perturbed_layers else 0) + (1 if geo.inject_layers else 0)
    loss_lanes = _group_lanes_cycles(cfg)
    _check_no_backpressure(cfg, sched, base_shape, loss_lanes)
    # offset of the output layer's first group's bias token from a pass's first token: the
    # loss unit must be idle again when that group's result arrives (checked below)
    out = geo.layers[-1]
    first_out = base_shape.issue[sched.R - (out.groups - 1) * out.tokens - 1]

    # -- run start: hdl/sequencer.py _run_start_states ------------------------------------
    t_step = 1 + run_start_cycles(cfg, first_step)  # the cycle STEP is entered (TRAIN arrives in cycle 0)
    step_starts: list[int] = []
    engine_free = 0  # the first cycle the engine can take a command
    held_free = 0  # the first cycle its command register takes one
    issuing: list[tuple[int, PassShape]] = []  # (a, shape) of every pass so far
    loss_idle = 0  # the first cycle the loss unit takes a group again
    collector_free = 0  # the first cycle the collector takes a loss again (after UPDATE)
    job_taken = -(10 ** 9)
    walk = sched.walk  # the cycles the last job taken keeps the walker
    dones: list[int] = []  # the done pulse of every job so far, in order
    key_waits = bank_waits = other_waits = stalls = 0
    log: list[dict[str, int]] = []
    limit_base = 1 if projection else copies
    kinds = [("base", -1)] + ([] if projection else [("copy", m) for m in range(copies)])
    for _ in range(steps):
        step_starts.append(t_step)
        ready = t_step + Schedule.STEP_START_CYCLES  # STEP, SAMPLE, LABEL: BASE is offered from here
        for sample in range(S):
            for kind, copy in kinds:
                # bank accounting: jobs issued - jobs done <= limit in the cycle the command is
                # taken, so the job `limit` places back must have pulsed `done` before it
                limit = limit_base if kind == "base" else 1
                bank_free = dones[-limit - 1] + 1 if len(dones) > limit else 0
                b = max(ready, held_free, bank_free)  # into the engine's command register
                a = max(b + 1, engine_free)
                held_free = a + 1
                if engine_free and a > engine_free:  # the engine stood free: say why
                    if bank_free == b:
                        bank_waits += a - engine_free
                    elif kind == "copy":
                        key_waits += a - engine_free
                    else:
                        other_waits += a - engine_free
                shape = pert_shape if kind == "copy" else base_shape
                if a + 1 + first_out + sched.result_valid < loss_idle:
                    raise NotImplementedError(
                        f"{cfg.name}: a pass's output reaches the loss unit before it has handed "
                        "on the previous loss: the forward pipe would wait, which the model does not cover")
                e = a + shape.length  # the last token issues R + I cycles after the command
                issuing.append((a, shape))
                stalls += shape.interlock
                engine_free = e  # hdl/forward.py ``_take_command``: in the last token's cycle
                o = e + sched.loss_result + loss_lanes  # loss unit: IDLE, LANES (L), DRAIN, OUT
                if o < collector_free:
                    raise NotImplementedError(
                        f"{cfg.name}: a pass's loss comes before the previous step's update is done: "
                        "the loss unit would wait, which the model does not cover")
                entry = {"sample": sample, "copy": copy, "b": b, "a": a, "e": e, "o": o}
                if projection or kind == "copy":  # the pass has a correlation job
                    j = max(o, job_taken + walk)  # the collector hands it over
                    job_taken = j
                    final = sample == S - 1 and (kind, copy) == kinds[-1]  # the step's last
                    walk = sched.final_walk if final else sched.walk
                    dones.append(j + (sched.final_walk_done if final else sched.walk_done))
                    entry |= {"j": j, "d": dones[-1]}
                    loss_idle = j + 1
                else:
                    loss_idle = o + 1
                log.append(entry)
                # the issuer's next state (hdl/sequencer.py)
                if kind == "base" and not projection:
                    ready = _key_chain(b, issuing[-2:], keys_per_pair, sched)  # KEY (NODE_KEY)
                elif kind == "copy" and copy != copies - 1:
                    # a new antithetic pair after an odd copy: its keys; else the same keys
                    ready = _key_chain(b, issuing[-2:], keys_per_pair, sched) if copy % 2 else b + 1
                else:
                    ready = b + Schedule.NEXT_SAMPLE_CYCLES
        step_done = job_taken + sched.update_drain  # the step's last job is the last taken
        collector_free = step_done + 1
        # WAIT_UPDATE leaves in the cycle of step_done, or of the update's first write
        t_step = 1 + (job_taken + sched.first_write if geo.overlap_update else step_done)
    # STEP finds no step left; FINISH is the last busy cycle once the last update is done
    end = max(t_step + 1, step_done)
    return _RunTiming(end=end, step_starts=step_starts, log=log, stalls=stalls, key_waits=key_waits,
                      bank_waits=bank_waits, other_waits=other_waits, jobs=len(dones))


def _check_no_backpressure(cfg: Config, sched: Schedule, shape: PassShape, loss_lanes: int) -> None:
    """Raise ``NotImplementedError`` where the forward pipe would wait for its consumers,
    which the model does not cover: the loss unit needs ``L + 1`` cycles a group and the
    output layer's groups arrive ``n_in + 1`` cycles apart; the tag FIFO (two passes,
    hdl/forward.py) frees a pass's entry ``H + 6`` cycles after its last token."""
    from .hdl.geometry import Geometry

    out = Geometry(cfg).layers[-1]
    if out.groups > 1 and loss_lanes + 1 > out.tokens:
        raise NotImplementedError(
            f"{cfg.name}: the loss unit takes {loss_lanes + 1} cycles per output group, more than the "
            f"{out.tokens} between groups: the forward pipe would wait, which the model does not cover")
    # the third pass's command comes at the earliest `length` cycles after the first's last token
    if shape.length < sched.result_valid + 1:
        raise NotImplementedError(f"{cfg.name}: passes shorter than the forward pipe wait for its tag FIFO, "
                                  "which the model does not cover")


def run_start_cycles(cfg: Config, step: int) -> int:
    """Cycles of a ``TRAIN`` command before ``STEP`` (hdl/sequencer.py ``_run_start_states``):
    the products on the serial multiplier, each busy one cycle per bit of its second
    operand and one cycle more to start the next (``k * S * P`` in two products, except for
    target projection, which draws no events; the cursor's sample address, unless the
    sample stride is a power of two, a shift); target projection then requests the run's
    projection key (taken at once: the engine is idle) and waits for it."""
    from .hdl.geometry import Geometry

    geo = Geometry(cfg)
    pairs = (cfg.rule.copies + 1) >> 1
    cycles = 0
    if not geo.projection:
        cycles += (_bits(pairs) + 1  # MUL_SP: S * P (b = P)
                   + _bits(step) + 1)  # MUL_E: k * S * P (b = k)
    if geo.sample_stride_shift is None:  # MUL_S: cursor * sample_stride (b = the padded sample)
        cycles += _bits(geo.sample_stride) + 1
    if geo.projection:
        # PROJECTION_KEY takes the request at once (the engine is idle), PROJECTION_KEY_WAIT
        cycles += schedule(cfg).key
    return cycles


def run_cycles(cfg: Config, steps: int, first_step: int = 0) -> int:
    """``CYCLES`` of one ``TRAIN`` command of ``steps`` steps starting at step counter
    ``first_step``: the recurrence of :func:`_run` over the first three steps, and
    :attr:`_RunTiming.period` cycles for each step after them (they start alike)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, not {steps!r}")
    run = _run(cfg, min(steps, 3), first_step)
    return run.end + (steps - 3) * run.period if steps > 3 else run.end


def _key_chain(b: int, passes: list[tuple[int, PassShape]], keys: int, sched: Schedule) -> int:
    """The cycle the sequencer reaches ``PERTURBED`` after requesting ``keys`` pass keys, the
    first from ``KEY`` in the cycle after its command was registered at ``b``
    (hdl/sequencer.py ``_key_states``), each taken in the first cycle the key pipe is free
    of the ``passes`` issuing then: the one the engine took last, taken at ``a``, its first
    token at ``a + 1`` (:meth:`PassShape.first_key_cycle`), and the one before it, which
    may still be issuing."""
    t = b + 1
    for _ in range(keys):
        for a, shape in passes:
            if a + 1 <= t <= a + shape.length:
                t = a + 1 + shape.first_key_cycle(t - a - 1)
        t += sched.key
    return t


def inference_cycles(cfg: Config, count: int) -> int:
    """``CYCLES`` of an ``INFER`` command of ``count`` samples (hdl/sequencer.py
    ``_inference_states``): the passes back to back from the first busy cycle, each
    ``R + I``; the last pass's last result ``H + 5`` cycles after its last token; the
    output writer's lanes (``L``); ``collected`` one cycle later; ``INFER_WAIT`` and
    ``FINISH``."""
    if count == 0:
        return 3  # INFER, INFER_WAIT, FINISH
    sched = schedule(cfg)
    shape = pass_shape(cfg, perturbed=False)
    last_token = count * shape.length + 2  # INFER offers at once; the engine takes it a cycle later
    return last_token + sched.result_valid + _group_lanes_cycles(cfg) + 2


# -- memories ------------------------------------------------------------------------------

#: Aspect ratios (depth, width) of an iCE40 EBR: 256 x 16, 512 x 8, 1024 x 4, 2048 x 2.
EBR_SHAPES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: Aspect ratios of an ECP5 DP16KD with one write and one read port (pseudo dual port:
#: 512 x 36 is its widest), 1024 x 18, 2048 x 9, 4096 x 4, 8192 x 2, 16384 x 1.
DP16KD_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
#: The iCE40UP5K's SPRAM: 16384 x 16, single port.
SPRAM_SHAPES = ((16384, 16),)


def _blocks(depth: int, width: int, shapes: tuple[tuple[int, int], ...]) -> int:
    """Fewest blocks of one of ``shapes`` that hold ``depth`` words of ``width`` bits."""
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in shapes)


@dataclass(frozen=True)
class MemoryUse:
    """One memory of the generated accelerator (hdl/accelerator.py ``_memories`` and the
    forward engine's own).

    ``copies`` is the number of identical memories, one per read port (a second read port
    is a second copy in block RAM); ``ebr``, ``dp16kd`` and ``spram`` are the blocks of
    each kind that hold all copies if the memory is mapped to them (yosys may build a
    small one from logic instead).
    """

    name: str
    words: int  #: words per copy
    width: int  #: bits per word
    copies: int
    note: str = ""
    #: Bits of one lane's element of a memory written a lane at a time (the lane memories;
    #: 0: written whole): an ECP5 block RAM's write enables cover 9-bit bytes, so there
    #: each element takes whole bytes (four INT8 weights, or one 32-bit G, a 36-bit word).
    lane_width: int = 0

    @property
    def bits(self) -> int:
        return self.words * self.width * self.copies

    @property
    def ebr(self) -> int:
        return self.copies * _blocks(self.words, self.width, EBR_SHAPES)

    @property
    def dp16kd(self) -> int:
        width = self.width
        if self.lane_width:
            width = self.width // self.lane_width * 9 * -(-self.lane_width // 9)
        return self.copies * _blocks(self.words, width, DP16KD_SHAPES)

    @property
    def spram(self) -> int:
        return self.copies * _blocks(self.words, self.width, SPRAM_SHAPES)


def memories(cfg: Config) -> list[MemoryUse]:
    """Every memory the accelerator generated from ``cfg`` holds (not the host link's FIFOs
    nor the forward engine's two-entry tag FIFO, which are registers)."""
    from .hdl.geometry import Geometry

    geo = Geometry(cfg)
    lanes, depth = geo.lanes, geo.weight_depth
    act_depth = 1 << geo.act_addr_bits  # four banks of 2^act_bank_bits words
    out = [
        MemoryUse("weights", depth, geo.weight_bits * lanes, 1, "the lanes side by side",
                  lane_width=geo.weight_bits),
        MemoryUse("G", depth, geo.grad_bits * lanes, 1, "the lanes side by side", lane_width=geo.grad_bits),
    ]
    if geo.overlap_update:  # (the forward engine's read port: the bits the MACs read)
        out.insert(1, MemoryUse(MACS_WEIGHT_COPY, depth, MAC_WEIGHT_BITS * lanes, 1,
                                f"the top {MAC_WEIGHT_BITS} bits of each weight, the forward engine's read port",
                                lane_width=MAC_WEIGHT_BITS))
    if geo.momentum:
        out.append(MemoryUse("momentum", depth, geo.grad_bits * lanes, 1, "the lanes side by side",
                             lane_width=geo.grad_bits))
    out += [
        # (with the walker's read port, 16-bit halfwords: hdl/memories.py SampleMemory)
        MemoryUse("samples", 2 * geo.sample_bus_words, 16, 2,
                  "two INT8 a halfword; two read ports (forward engine, correlation walker)")
        if geo.walker_reads_samples else
        MemoryUse("samples", geo.sample_bus_words, 32, 1, "four INT8 a word"),
        MemoryUse("labels", geo.sample_depth, geo.label_bits, 1),
        MemoryUse("outputs", geo.output_words, 8, 1, "inference scores"),
        MemoryUse("activations", act_depth, 8 * lanes, 2,
                  "4 banks; two read ports (forward engine, correlation walker)"),
    ]
    if geo.streaming:
        out.append(MemoryUse("loss record", geo.loss_depth, 32, 1, "every step's loss (Space.LOSSES)"))
    if geo.factor_bits:
        out.append(MemoryUse("factors", act_depth, geo.factor_bits * lanes, 1, "4 banks"))
    if geo.walker_reads_signs:
        out.append(MemoryUse("signs", 2 * geo.rows, lanes, 1, "2 banks of the weight rows"))
    return out


# -- the estimate ------------------------------------------------------------------------

@dataclass
class Estimate:
    """What :func:`estimate` predicts for one configuration (see the module docstring)."""

    name: str
    lanes: int
    rows: int  #: ``R``
    #: lanes a neuron, per layer (``hardware.split_inputs``; 1: a neuron a lane)
    splits: list[int]
    #: weights the update unit writes a cycle (``hardware.update_lanes``; ``lanes``: a row a cycle)
    update_width: int
    samples_per_step: int
    passes_per_sample: int
    fmax_mhz: float
    cycles_per_step: int  #: ``CYCLES`` of a ``TRAIN`` command of one step (step counter 1)
    mac_busy_per_step: int  #: ``MAC_BUSY`` of it
    stalls_per_step: int  #: ``STALLS`` of it
    cycles_per_inference_sample: float  #: ``CYCLES`` of a full ``INFER`` run / its samples
    inference_cycles: int  #: ``CYCLES`` of an ``INFER`` run over ``inference_samples``
    inference_samples: int  #: ``hardware.sample_depth``
    step: StepTiming
    memories: list[MemoryUse]
    #: the host driver runs several steps a ``TRAIN`` command (the build streams and its
    #: ring holds a step ahead: :func:`perturbo.limits.ring_steps`), so a step costs
    #: :attr:`StepTiming.body`; else one step a command, :attr:`cycles_per_step`
    runs: bool

    @property
    def utilisation(self) -> float:
        """``MAC_BUSY / CYCLES`` of a training step."""
        return self.mac_busy_per_step / self.cycles_per_step

    @property
    def trained_cycles_per_step(self) -> int:
        """Cycles a step costs as the host driver trains (see :attr:`runs`): the rates' base."""
        return self.step.body if self.runs else self.cycles_per_step

    @property
    def steps_per_second(self) -> float:
        """Training steps per second at :attr:`fmax_mhz`, as the driver trains."""
        return self.fmax_mhz * 1e6 / self.trained_cycles_per_step

    @property
    def samples_per_second(self) -> float:
        return self.steps_per_second * self.samples_per_step

    @property
    def macs_per_second(self) -> float:
        """Multiply-accumulates per second while training (``MAC_BUSY`` counts lane-cycles of
        all lanes; a lane whose neuron does not exist in a partly empty group still counts)."""
        return self.steps_per_second * self.mac_busy_per_step * self.lanes

    @property
    def inference_samples_per_second(self) -> float:
        return self.fmax_mhz * 1e6 / self.cycles_per_inference_sample

    def as_dict(self) -> dict:
        """The estimate as plain data (``perturbo estimate --json``)."""
        step = {k: v for k, v in asdict(self.step).items() if k != "events"}
        return {
            "name": self.name, "lanes": self.lanes, "rows": self.rows, "splits": self.splits,
            "update_width": self.update_width,
            "samples_per_step": self.samples_per_step, "passes_per_sample": self.passes_per_sample,
            "fmax_mhz": self.fmax_mhz,
            "cycles_per_step": self.cycles_per_step, "mac_busy_per_step": self.mac_busy_per_step,
            "stalls_per_step": self.stalls_per_step, "mac_utilisation": self.utilisation,
            "cycles_per_step_in_run": self.step.body,
            "trained_cycles_per_step": self.trained_cycles_per_step,
            "steps_per_second": self.steps_per_second, "samples_per_second": self.samples_per_second,
            "macs_per_second": self.macs_per_second,
            "cycles_per_inference_sample": self.cycles_per_inference_sample,
            "inference_cycles": self.inference_cycles,
            "inference_samples_per_second": self.inference_samples_per_second,
            "step_terms": step,
            "memories": [
                {"name": mem.name, "words": mem.words, "width": mem.width, "copies": mem.copies,
                 "bits": mem.bits, "ebr_4k": mem.ebr, "dp16kd_18k": mem.dp16kd, "spram_256k": mem.spram,
                 "note": mem.note}
                for mem in self.memories
            ],
            "memory_bits": sum(mem.bits for mem in self.memories),
            "ebr_4k": sum(mem.ebr for mem in self.memories),
            "dp16kd_18k": sum(mem.dp16kd for mem in self.memories),
        }


def estimate(cfg: Config, fmax_mhz: float | None = None) -> Estimate:
    """Predict the cycles, rates and memories of the accelerator generated from ``cfg``.

    ``fmax_mhz`` defaults to ``hardware.clock_mhz``, else :data:`DEFAULT_CLOCK_MHZ`.  The cycles per step are those of a
    step whose counter ``k`` is 1 (``MUL_E`` costs one cycle per bit of ``k``: a step
    late in a run costs up to 32 cycles more; :func:`step_timing` takes ``k``).
    """
    from .hdl.accelerator import check_supported
    from .hdl.geometry import Geometry

    check_supported(cfg)
    geo = Geometry(cfg)
    if fmax_mhz is None:
        fmax_mhz = cfg.hardware.clock_mhz or DEFAULT_CLOCK_MHZ
    if not fmax_mhz > 0:
        raise ValueError(f"the clock must be a positive frequency in MHz, not {fmax_mhz!r}")
    step = step_timing(cfg, 1)
    depth = geo.sample_depth
    infer = inference_cycles(cfg, depth)
    return Estimate(
        name=cfg.name, lanes=geo.lanes, rows=geo.rows, splits=[lay.split for lay in geo.layers],
        update_width=geo.update_width,
        samples_per_step=cfg.rule.samples_per_step,
        passes_per_sample=1 if geo.projection else 1 + cfg.rule.copies,
        fmax_mhz=float(fmax_mhz), cycles_per_step=step.cycles, mac_busy_per_step=step.mac_busy,
        stalls_per_step=step.stalls, cycles_per_inference_sample=infer / depth,
        inference_cycles=infer, inference_samples=depth, step=step, memories=memories(cfg),
        runs=geo.streaming and ring_steps(depth, cfg.rule.samples_per_step, geo.loss_depth) >= 1,
    )


def format_estimate(est: Estimate) -> str:
    """The estimate as the text ``perturbo estimate`` prints."""
    s = est.step
    lines = [
        f"{est.name}: {est.lanes} lanes, R = {est.rows} rows, {est.samples_per_step} samples x "
        f"{est.passes_per_sample} passes per step, at {est.fmax_mhz:g} MHz",
        *([f"lanes a neuron     {', '.join(f'layer {li}: {s}' for li, s in enumerate(est.splits))} "
           "(hardware.split_inputs)"] if max(est.splits) > 1 else []),
        *([f"update             {est.update_width} lanes wide, {est.lanes // est.update_width} cycles a "
           "weight row (hardware.update_lanes)"] if est.update_width < est.lanes else []),
        "",
        f"training step      {est.cycles_per_step} cycles (CYCLES), MAC_BUSY {est.mac_busy_per_step}: "
        f"MAC utilisation {est.utilisation:.1%}",
        f"  run start        {s.run_start}",
        f"  passes           {s.pass_cycles}  (1 + {s.passes} x (R + {s.stalls // max(1, s.passes)} interlock))",
        f"  waits            key {s.key_waits}, bank {s.bank_waits}, next sample {s.other_waits}",
        f"  tail             {s.tail}  (last correlation, fused update, FINISH)",
        f"  in a run         {s.body} cycles per step when one TRAIN command runs several steps "
        f"(MAC utilisation {est.mac_busy_per_step / s.body:.1%})",
        f"  rate             {est.steps_per_second:,.0f} steps/s, {est.samples_per_second:,.0f} samples/s, "
        f"{est.macs_per_second / 1e6:,.1f} M lane-MAC/s "
        + ("(runs of several steps, as the driver trains)" if est.runs
           else "(one step a TRAIN: the driver's way with this build's buffer)"),
        f"inference          {est.cycles_per_inference_sample:,.1f} cycles per sample "
        f"({est.inference_cycles} for the {est.inference_samples} samples of the buffer), "
        f"{est.inference_samples_per_second:,.0f} samples/s",
        "",
        f"{'memory':<12} {'words':>8} {'bits':>5} {'copies':>6} {'total bits':>11} {'EBR 4k':>7} "
        f"{'DP16KD':>7} {'SPRAM':>6}  note",
    ]
    for mem in est.memories:
        lines.append(f"{mem.name:<12} {mem.words:>8} {mem.width:>5} {mem.copies:>6} {mem.bits:>11} "
                     f"{mem.ebr:>7} {mem.dp16kd:>7} {mem.spram:>6}  {mem.note}")
    lines.append(f"{'total':<12} {'':>8} {'':>5} {'':>6} {sum(m.bits for m in est.memories):>11} "
                 f"{sum(m.ebr for m in est.memories):>7} {sum(m.dp16kd for m in est.memories):>7}")
    return "\n".join(lines)


# -- against the counters --------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """One command's predicted and counted ``CYCLES`` and ``MAC_BUSY``."""

    what: str  #: ``"step k"`` (a ``TRAIN`` of one step at step counter ``k``) or ``"infer n"``
    predicted_cycles: int
    counted_cycles: int
    predicted_mac_busy: int
    counted_mac_busy: int

    @property
    def error(self) -> float:
        """``(predicted - counted) / counted`` of the cycles."""
        return (self.predicted_cycles - self.counted_cycles) / self.counted_cycles


def compare_with_counters(cfg: Config, backend: object, steps: int = 3,
                          seed: int = 0, runs: tuple[int, ...] = (4,)) -> list[Comparison]:
    """Run ``steps`` one-step ``TRAIN`` commands, a ``TRAIN`` of each length in ``runs``
    (where the build has the loss record and the sample buffer holds them: up to as many
    as it holds) and one ``INFER`` of a step's samples on ``backend`` (an
    :class:`host.accelerator.AcceleratorBackend`: the co-simulation or a board), reading
    the counters after each, beside what the model predicts.

    The samples are random (the schedule does not depend on them); the backend's step
    counter goes on from where it is (its first step is ``k = backend.step``).
    """
    import torch

    s = cfg.rule.samples_per_step
    gen = torch.Generator().manual_seed(seed)
    n_in, classes = cfg.network.layers[0], cfg.network.layers[-1]
    out = []
    for _ in range(steps):
        k = backend.step
        x = torch.randint(0, 128, (s, n_in), generator=gen)
        labels = torch.randint(0, classes, (s,), generator=gen)
        backend.clear_counters()
        backend.train_steps(x, labels, 1)
        c = backend.counters()
        timing = step_timing(cfg, k)
        out.append(Comparison(f"step {k}", timing.cycles, c.cycles, timing.mac_busy, c.mac_busy))
    for run_steps in runs:  # TRAIN commands of several steps
        run_steps = min(run_steps, backend.buffer_steps)
        if not backend.geo.streaming or run_steps < 2:
            continue
        k = backend.step
        x = torch.randint(0, 128, (s * run_steps, n_in), generator=gen)
        labels = torch.randint(0, classes, (s * run_steps,), generator=gen)
        refill, backend.refill = backend.refill, "batch"
        try:
            backend.clear_counters()
            backend.train_steps(x, labels, run_steps)
        finally:
            backend.refill = refill
        c = backend.counters()
        out.append(Comparison(f"run of {run_steps} steps from step {k}", run_cycles(cfg, run_steps, k),
                              c.cycles, run_steps * step_timing(cfg, k).mac_busy, c.mac_busy))
    count = min(s, cfg.hardware.sample_depth)
    x = torch.randint(0, 128, (count, n_in), generator=gen)
    backend.clear_counters()
    backend.predict(x)
    c = backend.counters()
    shape = pass_shape(cfg, perturbed=False)
    out.append(Comparison(f"infer {count}", inference_cycles(cfg, count), c.cycles,
                          count * len(shape.issue), c.mac_busy))
    return out
