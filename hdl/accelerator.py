"""The accelerator top: datapath, memories, registers and the host bus target.

``Accelerator(cfg)`` puts together, for one configuration:

- the memories: master weights, G and (with momentum) M, ``lanes`` lane memories each;
  the sample buffer, the labels and the output scores; the perturbation signs of the
  last two perturbed passes (:class:`~.memories.SignMemory`, datapath only);
- the :class:`~.forward.ForwardEngine`, the :class:`~.loss.LossUnit`, the
  :class:`~.correlation.CorrelationWalker` feeding the :class:`~.correlation.CorrelationUnit`,
  the :class:`~.update.UpdateUnit`, the :class:`~.sequencer.Sequencer` and its
  :class:`~.sequencer.OutputWriter`;
- the register file and the bus target of :mod:`.bus` (the register map, address spaces,
  and what is a register versus fixed at generation are documented there).

While a command runs the datapath owns every memory and the bus refuses memory accesses
(``err``); when idle the bus owns them.  Within a run the forward engine reads the
weights while the correlation unit reads and writes G (the correlation of a perturbed
pass overlaps the following passes); at the end of a step the update unit takes the
weight (and momentum) memories while the step's last correlation hands it each row's
final G (the fused update, :mod:`.update`).

Cost of a training step, in cycles: ``S * (copies + 1) * R`` for the passes (``R`` =
:attr:`~.geometry.Geometry.rows`, one MAC token per row and lane) plus about ``R + 30``
for the last correlation with the fused update, plus a few cycles per pass.  The digits
network (64-32-10, 8 lanes, ``R`` = 326) with batch 16 and one copy takes 10 815 cycles
per step, the MACs busy 96 % of them (``bench/cosim_speed.py``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import Config, Rule

from .bus import ACCEL_ID, WORD_ADDR_BITS, BusSignature, Command, Reg, Space
from .correlation import CorrelationUnit, CorrelationWalker
from .forward import ForwardEngine
from .geometry import Geometry, config_hash
from .loss import LossUnit
from .memories import (
    LaneMemory,
    LanePortSignature,
    MemoryBlock,
    PortSignature,
    SignMemory,
    mux_ports,
)
from .sequencer import COPIES_MAX, STEP_SAMPLES_MAX, OutputWriter, Sequencer
from .update import UpdateUnit

__all__ = ["Accelerator", "SUPPORTED_RULES", "COUNTER_BITS", "absent_registers"]

#: Rules this datapath trains with: every integer rule (hybrids of the perturbative ones).
SUPPORTED_RULES = (Rule.MGD_WEIGHT, Rule.MGD_NODE, Rule.ALR, Rule.DRTP, Rule.TPSGD_L1, Rule.TPSGD_L2)
#: Width of the ``CYCLES`` and ``MAC_BUSY`` counters: 2^48 cycles are 65 days at 50 MHz,
#: and each bit costs a flip-flop and a carry cell (two 64-bit counters were 3 % of an
#: iCE40UP5K).
COUNTER_BITS = 48


def absent_registers(cfg: Config) -> frozenset[Reg]:
    """Registers a build for ``cfg`` leaves out (their addresses answer ``err``).

    ``READ_HIGH`` and ``WRITE_HIGH`` carry the upper bits of words wider than 32 bits, so
    they exist only with ``grad_bits > 32``; ``SIGMA`` and ``NODE_DELTA`` only when a layer
    uses ALR or MGD node perturbation.  Every register costs flip-flops and a way of the
    read multiplexer: on an iCE40UP5K these four were about 100 logic cells.
    """
    rules = set(cfg.layer_rules())
    absent = set()
    if cfg.numerics.grad_bits <= 32:
        absent |= {Reg.READ_HIGH, Reg.WRITE_HIGH}
    if Rule.ALR not in rules:
        absent.add(Reg.SIGMA)
    if Rule.MGD_NODE not in rules:
        absent.add(Reg.NODE_DELTA)
    return frozenset(absent)


def divmod_const(value: Value, divisor: int, max_value: int) -> tuple[Value, Value]:
    """``(value // divisor, value % divisor)`` for ``0 <= value <= max_value`` as logic.

    A power of two is a slice; otherwise a multiplication by ``ceil(2^k / divisor)``
    with ``k`` large enough for an exact quotient over the whole range.
    """
    if divisor & (divisor - 1) == 0:
        shift = divisor.bit_length() - 1
        return value >> shift, value[:shift] if shift else Const(0, 1)
    n = max(1, max_value.bit_length())
    k = n + divisor.bit_length()
    mult = -(-(1 << k) // divisor)
    assert all((v * mult) >> k == v // divisor for v in (0, max_value, divisor - 1, divisor))
    quotient = ((value[:n] * mult) >> k)[:n]
    return quotient, (value - quotient * divisor)[: divisor.bit_length()]


class Accelerator(wiring.Component):
    """The whole training accelerator for one configuration.

    Parameters
    ----------
    cfg
        The resolved configuration.  Its rule must be ``mgd-weight`` (every layer);
        optimizer ``sgd`` or ``momentum``.

    Members
    -------
    bus : ``In(BusSignature)``
        The host bus (:mod:`.bus`).
    busy : ``Out(1)``
        A command is running (for a LED, and for testbenches to wait on).
    """

    def __init__(self, cfg: Config) -> None:
        if not isinstance(cfg, Config):
            self._MustUse__silence = True  # no "created but never used" for a rejected cfg
            raise TypeError(f"cfg must be a perturbo.config.Config, not {cfg!r}")
        bad = sorted({r.value for r in cfg.layer_rules() if r not in SUPPORTED_RULES})
        if bad:
            self._MustUse__silence = True
            raise ValueError(
                f"the accelerator runs rule(s) {[r.value for r in SUPPORTED_RULES]} so far; "
                f"this configuration asks for {bad}"
            )
        self.cfg = cfg
        self.geometry = Geometry(cfg)
        super().__init__({"bus": In(BusSignature), "busy": Out(1)})

    def elaborate(self, platform: object) -> Module:  # noqa: C901 (the top)
        m = Module()
        cfg, geo = self.cfg, self.geometry
        lanes, rule = geo.lanes, cfg.rule

        # -- units ----------------------------------------------------------------------------
        tag_layout = Sequencer.tag_layout(geo)
        m.submodules.engine = eng = ForwardEngine(geo, tag_layout)
        m.submodules.loss = loss = LossUnit(geo, tag_layout)
        m.submodules.frontend = fe = CorrelationWalker(geo)
        m.submodules.corr = corr = CorrelationUnit(lanes, geo.row_bits, geo.grad_bits,
                                                   fe.term_bits, geo.overflow)
        m.submodules.update = upd = UpdateUnit(geo)
        m.submodules.writer = writer = OutputWriter(geo)
        m.submodules.seq = seq = Sequencer(geo, eng.cmd_layout, loss.result_layout,
                                           fe.job_layout)

        # -- memories -------------------------------------------------------------------------
        wshape, gshape = signed(geo.weight_bits), signed(geo.grad_bits)
        m.submodules.weights = wmem = LaneMemory(lanes, geo.weight_depth, wshape)
        m.submodules.grads = gmem = LaneMemory(lanes, geo.weight_depth, gshape)
        if geo.momentum:
            m.submodules.momentum = mmem = LaneMemory(lanes, geo.weight_depth, gshape)
        m.submodules.samples = smem = MemoryBlock(geo.sample_words, signed(8),
                                                  second_read=fe.uses_samples)
        m.submodules.labels = lmem = MemoryBlock(geo.sample_depth, geo.label_bits, block_ram=True)
        m.submodules.outputs = omem = MemoryBlock(geo.output_words, signed(8))
        if fe.uses_signs:
            m.submodules.signs = signs = SignMemory(lanes, geo.rows, geo.row_bits)

        # -- datapath connections ---------------------------------------------------------------
        wiring.connect(m, seq.fwd_cmd, eng.cmd)
        wiring.connect(m, seq.key_req, eng.key_req)
        wiring.connect(m, eng.key, seq.key)
        wiring.connect(m, loss.o, seq.loss)
        wiring.connect(m, seq.corr_cmd, fe.cmd)
        if fe.uses_signs:
            wiring.connect(m, eng.signs, signs.write)
            wiring.connect(m, fe.signs, signs.read)
        if fe.uses_acts:
            wiring.connect(m, fe.act_read, eng.act_read)
        else:
            m.d.comb += eng.act_read.addr.eq(0)
        if geo.factor_bits:
            wiring.connect(m, fe.factor_read, eng.factor_read)
        if fe.uses_samples:
            wiring.connect(m, fe.samples, smem.read)
        wiring.connect(m, fe.o, corr.i)
        wiring.connect(m, corr.sums, upd.sums)
        m.d.comb += [
            seq.corr_busy.eq(fe.busy | corr.busy),
            seq.corr_done.eq(fe.done),
            upd.start.eq(0),  # (the sweep serves rules without a final correlation)
            seq.upd_busy.eq(upd.busy),
            seq.out_done.eq(writer.done),
        ]
        # forward results: output-layer groups to the loss unit (training) or the writer
        res = eng.result
        is_out = res.payload.layer == geo.n_layers - 1
        to_loss = ~seq.inference & is_out
        to_writer = seq.inference & is_out
        rtag = res.payload.tag
        m.d.comb += [
            loss.i.valid.eq(res.valid & to_loss),
            loss.i.payload.y.eq(res.payload.y),
            loss.i.payload.mask.eq(res.payload.mask),
            loss.i.payload.group.eq(res.payload.group),
            loss.i.payload.last.eq(res.payload.last),
            loss.i.payload.label.eq(rtag.label),
            loss.i.payload.baseline.eq(rtag.baseline),
            loss.i.payload.tag.eq(rtag),
            writer.i.valid.eq(res.valid & to_writer),
            writer.i.payload.y.eq(res.payload.y),
            writer.i.payload.mask.eq(res.payload.mask),
            writer.i.payload.group.eq(res.payload.group),
            writer.i.payload.last.eq(res.payload.last),
            writer.i.payload.base.eq(rtag.out_base),
            res.ready.eq(~is_out | (to_loss & loss.i.ready) | (to_writer & writer.i.ready)),
        ]

        # -- memory ports: datapath while running, host bus while idle ---------------------------
        running = seq.busy
        host_w = LanePortSignature(lanes, geo.row_bits, wshape).create(path=("host_w",))
        host_g = LanePortSignature(lanes, geo.row_bits, gshape).create(path=("host_g",))
        host_s = PortSignature(smem.addr_width, signed(8)).create(path=("host_s",))
        host_l = PortSignature(lmem.addr_width, geo.label_bits).create(path=("host_l",))
        host_o = PortSignature(omem.addr_width, signed(8)).create(path=("host_o",))
        mux_ports(m, wmem.port, [(upd.busy, upd.weights), (running, eng.weights), (None, host_w)])
        mux_ports(m, gmem.port, [(upd.owns_grads, upd.grads), (running, corr.grads),
                                 (None, host_g)])
        if geo.momentum:
            host_m = LanePortSignature(lanes, geo.row_bits, gshape).create(path=("host_m",))
            mux_ports(m, mmem.port, [(running, upd.momentum), (None, host_m)])
        mux_ports(m, smem.port, [(running, eng.samples), (None, host_s)])
        mux_ports(m, lmem.port, [(running, seq.labels), (None, host_l)])
        mux_ports(m, omem.port, [(running, writer.mem), (None, host_o)])

        # -- registers ----------------------------------------------------------------------------
        r_steps = Signal(32, init=cfg.training.steps)
        r_seed = Signal(32, init=cfg.seed)
        r_lr = Signal(8, init=rule.lr_mult)
        r_delta = Signal(7, init=rule.delta)
        r_sigma = Signal(12, init=rule.sigma)
        r_node_delta = Signal(21, init=rule.node_delta)
        r_copies = Signal(range(COPIES_MAX + 1), init=rule.copies)
        r_samples = Signal(range(STEP_SAMPLES_MAX + 1), init=rule.tau_theta * rule.batch)
        r_target = Signal(7, init=rule.target_on)
        r_count = Signal(range(geo.sample_depth + 1))
        r_infer = Signal(range(geo.sample_depth + 1))
        # words wider than 32 bits (G, M with grad_bits > 32) pass through READ_HIGH and
        # WRITE_HIGH; without them the two registers do not exist
        absent = absent_registers(cfg)
        wide_words = Reg.WRITE_HIGH not in absent
        r_write_high = Signal(32)
        r_read_high = Signal(32)
        done = Signal()
        cycles = Signal(COUNTER_BITS)
        mac_busy = Signal(COUNTER_BITS)
        stalls = Signal(32)
        steps_done = Signal(32)
        cycles_hi = Signal(COUNTER_BITS - 32)
        mac_hi = Signal(COUNTER_BITS - 32)
        m.d.comb += [
            seq.steps.eq(r_steps),
            eng.seed.eq(r_seed),
            seq.copies.eq(r_copies),
            seq.step_samples.eq(r_samples),
            seq.sample_count.eq(r_count),
            seq.infer_count.eq(r_infer),
            eng.delta.eq(r_delta),
            loss.target_on.eq(r_target),
            upd.lr_mult.eq(r_lr),
            self.busy.eq(running),
        ]
        if geo.inject_layers:
            m.d.comb += [eng.sigma.eq(r_sigma), eng.node_delta.eq(r_node_delta)]
        if geo.projection:
            m.d.comb += eng.target_on.eq(r_target)
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(eng.mac_active):
            m.d.sync += mac_busy.eq(mac_busy + 1)
        with m.If(eng.stall):
            m.d.sync += stalls.eq(stalls + 1)
        with m.If(seq.step_done):
            m.d.sync += steps_done.eq(steps_done + 1)
        with m.If(seq.finished):  # DONE rises in the cycle BUSY falls
            m.d.sync += done.eq(1)

        # read-only and read-write registers: reg -> (value, (lo, hi) or None for read-only)
        status = Cat(running, done, seq.inference)
        regs: dict[Reg, tuple[Value, tuple[int, int] | None]] = {
            Reg.ID: (Const(ACCEL_ID, 32), None),
            Reg.CONFIG_HASH: (Const(config_hash(cfg), 32), None),
            Reg.STATUS: (status, None),
            Reg.STEPS: (r_steps, (0, 2**32 - 1)),
            Reg.STEP: (seq.step, (0, 2**32 - 1)),
            Reg.SEED: (r_seed, (0, 2**32 - 1)),
            Reg.LR_MULT: (r_lr, (1, 255)),
            Reg.DELTA: (r_delta, (1, 127)),
            Reg.SIGMA: (r_sigma, (1, 4095)),
            Reg.NODE_DELTA: (r_node_delta, (1, 2**20)),
            Reg.COPIES: (r_copies, (1, COPIES_MAX)),
            Reg.STEP_SAMPLES: (r_samples, (1, STEP_SAMPLES_MAX)),
            Reg.TARGET_ON: (r_target, (0, 127)),
            Reg.SAMPLE_COUNT: (r_count, (1, geo.sample_depth)),
            Reg.SAMPLE_CURSOR: (seq.cursor, (0, geo.sample_depth - 1)),
            Reg.INFER_COUNT: (r_infer, (0, geo.sample_depth)),
            Reg.CYCLES_LO: (cycles[:32], None),
            Reg.CYCLES_HI: (cycles_hi, None),
            Reg.STEPS_DONE: (steps_done, None),
            Reg.STALLS: (stalls, None),
            Reg.MAC_BUSY_LO: (mac_busy[:32], None),
            Reg.MAC_BUSY_HI: (mac_hi, None),
            Reg.LAST_LOSS: (seq.last_loss, None),
            Reg.LANES: (Const(lanes, 32), None),
            Reg.SAMPLE_DEPTH: (Const(geo.sample_depth, 32), None),
            Reg.ROWS: (Const(geo.rows, 32), None),
            Reg.READ_HIGH: (r_read_high, None),
            Reg.WRITE_HIGH: (r_write_high, (0, 2**32 - 1)),
        }
        regs = {reg: entry for reg, entry in regs.items() if reg not in absent}

        # -- the bus target ---------------------------------------------------------------------
        bus = self.bus
        space = bus.addr[WORD_ADDR_BITS:]
        word = bus.addr[:WORD_ADDR_BITS]
        wdata = bus.wdata
        wide = Cat(wdata, r_write_high).as_signed() if wide_words else wdata.as_signed()

        def fits(bits: int) -> Value:
            """Whether the written value (with ``WRITE_HIGH`` above 32 bits) fits ``bits``."""
            if bits in (32, 64):
                return Const(1, 1)
            value = wide if bits > 32 else wdata.as_signed()
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            return (value >= lo) & (value <= hi)

        lane_words = geo.weight_depth * lanes
        row, lane = divmod_const(word, lanes, lane_words - 1)
        ack = Signal()
        err = Signal()
        rdata_reg = Signal(32)
        read_space = Signal(range(8))
        read_lane = Signal(range(lanes))
        read_mem = Signal()
        m.d.sync += ack.eq(0)

        # host ports follow the bus address combinationally; writes only when accepted
        for port in [host_w, host_g] + ([host_m] if geo.momentum else []):
            m.d.comb += [port.raddr.eq(row), port.ren.eq(1), port.waddr.eq(row)]
            for k in range(lanes):
                m.d.comb += port.wdata[k].eq(wide)
        for port in (host_s, host_l, host_o):
            m.d.comb += [port.raddr.eq(word), port.ren.eq(1), port.waddr.eq(word),
                         port.wdata.eq(wdata)]

        request = bus.stb & ~ack
        with m.If(request):
            m.d.sync += [ack.eq(1), err.eq(0), read_mem.eq(0), read_space.eq(space),
                         read_lane.eq(lane)]
            with m.Switch(space):
                with m.Case(Space.REGS), m.Switch(word):
                    for reg, (value, rng) in regs.items():
                        with m.Case(reg):
                            m.d.sync += rdata_reg.eq(value)
                            if reg == Reg.CYCLES_LO:
                                m.d.sync += cycles_hi.eq(cycles[32:])
                            if reg == Reg.MAC_BUSY_LO:
                                m.d.sync += mac_hi.eq(mac_busy[32:])
                            with m.If(bus.we):
                                if rng is None:
                                    m.d.sync += err.eq(1)
                                else:
                                    lo, hi = rng
                                    ok = ~running
                                    if lo > 0:
                                        ok = ok & (wdata >= lo)
                                    if hi < 2**32 - 1:
                                        ok = ok & (wdata <= hi)
                                    with m.If(ok):
                                        self._write_reg(m, reg, value, wdata, seq)
                                    with m.Else():
                                        m.d.sync += err.eq(1)
                    with m.Case(Reg.COMMAND):
                        m.d.sync += rdata_reg.eq(0)
                        with m.If(~bus.we | running):
                            m.d.sync += err.eq(1)
                        with m.Elif(wdata == Command.TRAIN):
                            with m.If((r_count != 0) & (seq.cursor < r_count)):
                                m.d.comb += seq.train.eq(1)
                                m.d.sync += done.eq(0)
                            with m.Else():
                                m.d.sync += err.eq(1)
                        with m.Elif(wdata == Command.INFER):
                            m.d.comb += seq.infer.eq(1)
                            m.d.sync += done.eq(0)
                        with m.Elif(wdata == Command.CLEAR_COUNTERS):
                            m.d.sync += [cycles.eq(0), mac_busy.eq(0), stalls.eq(0),
                                         steps_done.eq(0)]
                        with m.Else():
                            m.d.sync += err.eq(1)
                    with m.Default():
                        m.d.sync += [rdata_reg.eq(0), err.eq(1)]
                mems = [
                    (Space.WEIGHTS, host_w, lane_words, geo.weight_bits, True),
                    (Space.GRADS, host_g, lane_words, geo.grad_bits, True),
                    (Space.SAMPLES, host_s, geo.sample_words, 8, False),
                    (Space.LABELS, host_l, geo.sample_depth, None, False),
                    (Space.OUTPUTS, host_o, geo.output_words, 0, False),
                ]
                if geo.momentum:
                    mems.append((Space.MOMENTUM, host_m, lane_words, geo.grad_bits, True))
                for sp, port, size, bits, laned in mems:
                    with m.Case(sp):
                        if bits is None:  # labels: 0 .. classes - 1
                            value_ok = wdata < geo.classes
                        elif bits == 0:  # read-only
                            value_ok = Const(0, 1)
                        else:
                            value_ok = fits(bits)
                        with m.If(running | (word >= size) | (bus.we & ~value_ok)):
                            m.d.sync += err.eq(1)
                        with m.Elif(bus.we):
                            if laned:
                                m.d.comb += port.we.eq(1 << lane)
                            else:
                                m.d.comb += port.we.eq(1)
                        with m.Else():
                            m.d.sync += read_mem.eq(1)
                with m.Default():
                    m.d.sync += err.eq(1)

        # the answer, one cycle after the request
        def read_value(port: wiring.PureInterface, laned: bool) -> Value:
            if laned:
                return Value.cast(port.rdata[read_lane]).as_signed()
            return Value.cast(port.rdata)

        mem_value = Signal(signed(64 if wide_words else 32))
        with m.Switch(read_space):
            with m.Case(Space.WEIGHTS):
                m.d.comb += mem_value.eq(read_value(host_w, True))
            with m.Case(Space.GRADS):
                m.d.comb += mem_value.eq(read_value(host_g, True))
            with m.Case(Space.SAMPLES):
                m.d.comb += mem_value.eq(read_value(host_s, False))
            with m.Case(Space.LABELS):
                m.d.comb += mem_value.eq(read_value(host_l, False))
            with m.Case(Space.OUTPUTS):
                m.d.comb += mem_value.eq(read_value(host_o, False))
            if geo.momentum:
                with m.Case(Space.MOMENTUM):
                    m.d.comb += mem_value.eq(read_value(host_m, True))
        if wide_words:
            with m.If(ack & read_mem & ~err):
                m.d.sync += r_read_high.eq(mem_value[32:])
        m.d.comb += [
            bus.ack.eq(ack),
            bus.err.eq(ack & err),
            bus.rdata.eq(Mux(err, 0, Mux(read_mem, mem_value[:32], rdata_reg))),
        ]
        return m

    @staticmethod
    def _write_reg(m: Module, reg: Reg, target: Value, wdata: Value, seq: Sequencer) -> None:
        """A host write of a read-write register (``STEP`` and the cursor live in the sequencer)."""
        if reg == Reg.STEP:
            m.d.comb += [seq.step_set.eq(1), seq.step_value.eq(wdata)]
        elif reg == Reg.SAMPLE_CURSOR:
            m.d.comb += [seq.cursor_set.eq(1), seq.cursor_value.eq(wdata)]
        else:
            m.d.sync += target.eq(wdata)
