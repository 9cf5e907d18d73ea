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

``hardware.training: false`` generates the same network inference-only (the cost of
learning, docs/boards.md): the forward engine, the output writer, the sequencer, the
registers and the bus target, with the engine's pass command tied to baseline passes and no
key requests (so yosys drops its hash pipes and perturbation logic), and without the loss
unit, the correlation walker and unit, the update unit, the G and momentum memories, the
sign memory and the registers only training reads (``hdl/registers.py``).  It refuses TRAIN
(``COMMAND`` answers ``err``) and the GRADS and MOMENTUM spaces.

Cost of a training step, in cycles: ``S * (copies + 1) * R`` for the passes (``R`` =
:attr:`~.geometry.Geometry.rows`, one MAC token per row and lane) plus about ``R + 30``
for the last correlation with the fused update, plus a few cycles per pass.  The digits
network (64-32-10, 8 lanes, ``R`` = 326) with batch 16 and one copy takes 10 815 cycles
per step, the MACs busy 96 % of them (``bench/cosim_speed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import MAC_WEIGHT_BITS, Config, Rule

from .arith import at_least, fits_signed
from .bus import WORD_ADDR_BITS, BusSignature, Command, Space
from .correlation import CorrelationUnit, CorrelationWalker
from .forward import ForwardEngine
from .geometry import Geometry, config_hash
from .loss import DC_BITS, LossUnit
from .memories import (
    LaneMemory,
    LanePortSignature,
    MemoryBlock,
    PortSignature,
    SampleMemory,
    SignMemory,
    mux_ports,
)
from .registers import RegisterFile, constant_sources
from .sequencer import OutputWriter, Sequencer
from .update import UpdateUnit

__all__ = ["Accelerator", "SUPPORTED_RULES", "check_supported"]

#: From this many lanes a host read selects its lane in two registered steps, within a group
#: of :data:`LANE_GROUP` lanes and then among the groups, a cycle more: one multiplexer of 64
#: lanes' G words, from block RAMs all over the device, was the first 64-lane ECP5 build's
#: slowest path (11.1 ns, 9.4 of it routing; docs/boards.md, session 42).
TWO_STEP_PICK_LANES = 32
LANE_GROUP = 8

#: Bytes of the inference outputs per bank with ``pipelined_reads``: an ECP5 DP16KD's
#: 2048 x 9 (:class:`~.memories.MemoryBlock`'s ``bank_words``).
OUTPUT_BANK_WORDS = 2048
#: Spaces the host reads but never writes (a write is refused).
READ_ONLY_SPACES = frozenset({Space.OUTPUTS, Space.LOSSES})
#: Rules this datapath trains with: every integer rule (hybrids of the perturbative ones).
SUPPORTED_RULES = (Rule.MGD_WEIGHT, Rule.MGD_NODE, Rule.ALR, Rule.DRTP, Rule.TPSGD_L1, Rule.TPSGD_L2)
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


def check_supported(cfg: Config) -> None:
    """Raise ``ValueError`` naming the key if the accelerator cannot run ``cfg``'s rules
    (``TypeError`` if ``cfg`` is not a :class:`~perturbo.config.Config`)."""
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a perturbo.config.Config, not {cfg!r}")
    unsupported = sorted({r.value for r in cfg.layer_rules() if r not in SUPPORTED_RULES})
    if unsupported:
        raise ValueError(
            f"rule.name: the accelerator trains {', '.join(r.value for r in SUPPORTED_RULES)}, "
            f"not {', '.join(unsupported)} (a float baseline); train it with --backend golden"
        )


@dataclass(frozen=True)
class _Units:
    """The accelerator's datapath units (see ``Accelerator._units``); the training units are
    None in an inference-only build."""

    fe: CorrelationWalker | None
    eng: ForwardEngine
    loss: LossUnit | None
    corr: CorrelationUnit | None
    upd: UpdateUnit | None
    writer: OutputWriter
    seq: Sequencer


@dataclass(frozen=True)
class _Memories:
    """The accelerator's memories (``gmem`` only when training, ``mmem`` only with momentum,
    ``signs`` only when the correlation reads signs, ``record`` only in streaming builds)."""

    wmem: LaneMemory
    gmem: LaneMemory | None
    mmem: LaneMemory | None
    smem: SampleMemory
    lmem: MemoryBlock
    omem: MemoryBlock
    signs: SignMemory | None
    record: MemoryBlock | None  #: the loss record (streaming builds)


class Accelerator(wiring.Component):
    """The whole training accelerator for one configuration.

    Parameters
    ----------
    cfg
        The resolved configuration; every layer's rule one of :data:`SUPPORTED_RULES`.
        ``cfg.hardware.training`` false: the inference-only accelerator (the module
        docstring).
    overlap
        Run the next passes while the correlation walker reads the previous ones (the
        default; see :class:`~.sequencer.Sequencer`).
    config_resets
        The run registers (steps, seed, rates, ...) reset to ``cfg``'s values, so that a
        bitstream comes up configured (the default).  ``False``: to their smallest values,
        which makes the design a function of the generation parameters alone (what
        :func:`~.geometry.config_hash` covers); the co-simulation's cached models use it,
        and the host writes every run register before it trains.
    pipelined_reads
        Register two block-RAM reads that the ECP5's Fmax needs registered (the default,
        and the ECP5 boards'; :attr:`perturbo.boards.top.Board.pipelined_reads`): a memory
        read of the host bus answers two cycles later still, each memory's whole word
        registered as it leaves the block RAM, then its lane selected into a register, before
        the space select; and the forward engine reads the weights and the sample early
        into registers (its ``registered_reads`` and ``registered_sample``; no cycle count
        changes).  A block RAM's unregistered output through those selects, then through
        the weight perturbation, were the ECP5 builds' slowest paths; the iCE40, whose Fmax
        the hash sets, keeps the logic cells.  With them the bus also takes a request two
        cycles after it appears, decoded from its registered address, write flag and data,
        and refused or accepted by a registered verdict.

    Members
    -------
    bus : ``In(BusSignature)``
        The host bus (:mod:`.bus`).
    busy : ``Out(1)``
        A command is running (for a LED, and for testbenches to wait on).
    """

    def __new__(cls, cfg: Config, *args: object, **kwargs: object) -> Accelerator:
        # checked before the object exists: a rejected configuration leaves no unused
        # elaboratable behind (Amaranth would warn "created but never used")
        check_supported(cfg)
        if not kwargs.get("pipelined_reads", True) and cfg.hardware.grads_registered:
            # the bus answers every space a cycle after the read without pipelined_reads
            raise ValueError("hardware.register_grads needs a host bus that pipelines its reads (the ECP5 "
                             "boards and the co-simulation), not this board's; set it to false")
        return super().__new__(cls, cfg, *args, src_loc_at=1, **kwargs)

    def __init__(self, cfg: Config, *, overlap: bool = True, config_resets: bool = True,
                 pipelined_reads: bool = True) -> None:
        self.cfg = cfg
        self.geometry = Geometry(cfg)
        self.training = cfg.hardware.training
        self.overlap = overlap
        self.config_resets = config_resets
        self.pipelined_reads = pipelined_reads
        super().__init__({"bus": In(BusSignature), "busy": Out(1)})

    def elaborate(self, platform: object) -> Module:
        """The units and memories, the datapath between them, the memory ports (datapath
        while running, host bus while idle), the registers and the bus target."""
        m = Module()
        units = self._units(m)
        mems = self._memories(m, units.fe, units.eng)
        self._connect_datapath(m, units, mems)
        self._route_results(m, units)
        hosts, ports_owned = self._memory_ports(m, units, mems)

        # -- registers (hdl/registers.py) and the bus target -------------------------------------
        seq, eng, loss, upd = units.seq, units.eng, units.loss, units.upd
        regs = self._registers(m, seq, eng, loss, upd)
        self._bus_target(m, regs, seq, {
            Space.WEIGHTS: (hosts["w"], True),
            **({Space.GRADS: (hosts["g"], True)} if "g" in hosts else {}),
            Space.SAMPLES: (hosts["s"], False), Space.LABELS: (hosts["l"], False),
            Space.OUTPUTS: (hosts["o"], False),
            **({Space.MOMENTUM: (hosts["m"], True)} if "m" in hosts else {}),
            **({Space.LOSSES: (hosts["r"], False)} if "r" in hosts else {}),
        }, registered=frozenset(sp for sp, latency in (
            (Space.OUTPUTS, mems.omem.read_latency), (Space.GRADS, mems.gmem and mems.gmem.read_latency),
            (Space.WEIGHTS, mems.wmem.read_latency), (Space.SAMPLES, mems.smem.host_read_latency))
            if latency and latency > 1), ports_owned=ports_owned)
        return m

    def _units(self, m: Module) -> _Units:
        """The datapath units, as submodules (the sequencer's pass tag carries the
        correlation walker's job fields)."""
        geo = self.geometry
        if not self.training:
            # no correlation jobs: the pass tag carries only what the sequencer itself reads
            job_layout = data.StructLayout({"dc": signed(DC_BITS), "final": 1})
            tag_layout = Sequencer.tag_layout(geo, job_layout)
            m.submodules.engine = eng = ForwardEngine(geo, tag_layout, registered_reads=self.pipelined_reads)
            m.submodules.writer = writer = OutputWriter(geo)
            # LossUnit.result_layout, for the sequencer's (here idle) loss input
            loss_layout = data.StructLayout({"loss": geo.loss_bits, "dc": signed(DC_BITS),
                                             "baseline": 1, "tag": tag_layout})
            m.submodules.seq = seq = Sequencer(geo, eng.cmd_layout, loss_layout, job_layout,
                                               overlap=self.overlap)
            return _Units(fe=None, eng=eng, loss=None, corr=None, upd=None, writer=writer, seq=seq)
        m.submodules.frontend = fe = CorrelationWalker(geo)
        tag_layout = Sequencer.tag_layout(geo, fe.job_layout)
        m.submodules.engine = eng = ForwardEngine(geo, tag_layout, registered_reads=self.pipelined_reads)
        m.submodules.loss = loss = LossUnit(geo, tag_layout)
        # the walker is the unit's only source: its spacing decides the forwarding
        m.submodules.corr = corr = CorrelationUnit(geo.lanes, geo.row_bits, geo.grad_bits,
                                                   fe.term_bits, geo.overflow, fe.min_row_spacing,
                                                   read_latency=geo.grads_read_latency,
                                                   signed_terms=fe.signed_terms)
        m.submodules.update = upd = UpdateUnit(geo)
        m.submodules.writer = writer = OutputWriter(geo)
        m.submodules.seq = seq = Sequencer(geo, eng.cmd_layout, loss.result_layout,
                                           fe.job_layout, overlap=self.overlap,
                                           settled_fill=self.pipelined_reads)
        return _Units(fe=fe, eng=eng, loss=loss, corr=corr, upd=upd, writer=writer, seq=seq)

    def _memories(self, m: Module, fe: CorrelationWalker | None, eng: ForwardEngine) -> _Memories:
        """The memories, as submodules: weights, G (training), momentum (training with
        momentum), samples, labels, outputs and the sign memory (when the correlation reads
        signs)."""
        geo, lanes = self.geometry, self.geometry.lanes
        wshape, gshape = signed(geo.weight_bits), signed(geo.grad_bits)
        # no read meets a write of its word: the update reads a row before it writes it and
        # never after; the host writes only while idle; with overlap_update the engine reads
        # its copy while the update writes, but a row only after the update wrote it (else
        # it would miss the step's new weights, which the golden model has) and only for a
        # valid token (ForwardEngine), so never in the cycle it is written
        m.submodules.weights = wmem = LaneMemory(
            lanes, geo.weight_depth, wshape, second_read=geo.overlap_update,
            second_read_bits=MAC_WEIGHT_BITS if geo.overlap_update else None,
            no_collision="weights",
            registered=geo.weights_registered)
        gmem = mmem = signs = None
        if self.training:
            # the correlation's read-modify-write rows never read a row in the cycle they
            # write it
            m.submodules.grads = gmem = LaneMemory(lanes, geo.weight_depth, gshape, no_collision="grads",
                                                   registered=geo.register_grads)
        if self.training and geo.momentum:
            m.submodules.momentum = mmem = LaneMemory(lanes, geo.weight_depth, gshape)
        m.submodules.samples = smem = SampleMemory(geo.sample_bus_words,
                                                   second_read=fe is not None and fe.uses_samples,
                                                   registered=eng.registered_sample,
                                                   window=geo.layers[0].split)
        # While a streamed run trains, the host refills labels; the sequencer reads one only
        # in its SAMPLE state, a sample the step has taken, which the host leaves alone (when
        # the port read every cycle, the co-simulation's check found a collision at word 240
        # of the digits ring)
        m.submodules.labels = lmem = MemoryBlock(geo.sample_depth, geo.label_bits, block_ram=True,
                                                 no_collision="labels")
        # with pipelined_reads in banks of a DP16KD's 2048 bytes (the bus reads it a cycle later)
        m.submodules.outputs = omem = MemoryBlock(geo.output_words, signed(8), no_collision="outputs",
                                                  bank_words=OUTPUT_BANK_WORDS if self.pipelined_reads else None)
        if fe is not None and fe.uses_signs:
            m.submodules.signs = signs = SignMemory(lanes, geo.rows, geo.row_bits)
        record = None
        if geo.streaming:
            m.submodules.record = record = MemoryBlock(geo.loss_depth, 32, block_ram=True)
        return _Memories(wmem=wmem, gmem=gmem, mmem=mmem, smem=smem, lmem=lmem, omem=omem, signs=signs,
                         record=record)

    def _connect_datapath(self, m: Module, u: _Units, mems: _Memories) -> None:
        """The streams and read ports between the units, and the sequencer's status inputs."""
        geo, fe, eng, seq = self.geometry, u.fe, u.eng, u.seq
        if fe is None:
            self._connect_inference(m, u)
            return
        wiring.connect(m, seq.fwd_cmd, eng.cmd)
        wiring.connect(m, seq.key_req, eng.key_req)
        wiring.connect(m, eng.key, seq.key)
        wiring.connect(m, u.loss.o, seq.loss)
        wiring.connect(m, seq.corr_cmd, fe.cmd)
        if fe.uses_signs:
            wiring.connect(m, eng.signs, mems.signs.write)
            wiring.connect(m, fe.signs, mems.signs.read)
        if fe.uses_acts:
            wiring.connect(m, fe.act_read, eng.act_read)
        else:
            m.d.comb += eng.act_read.addr.eq(0)
        if geo.factor_bits:
            wiring.connect(m, fe.factor_read, eng.factor_read)
        if fe.uses_samples:
            wiring.connect(m, fe.samples, mems.smem.read)
        wiring.connect(m, fe.o, u.corr.i)
        wiring.connect(m, u.corr.sums, u.upd.sums)
        m.d.comb += [
            seq.corr_busy.eq(fe.busy | u.corr.busy),
            seq.corr_done.eq(fe.done),
            seq.upd_busy.eq(u.upd.busy),
            seq.upd_first.eq(u.upd.first_write),
            seq.out_done.eq(u.writer.done),
        ]

    def _connect_inference(self, m: Module, u: _Units) -> None:
        """The inference-only datapath: the sequencer's pass commands to the engine as
        baseline passes (constant: the perturbation logic behind them folds away), no
        pass keys, nothing from a loss unit or correlation."""
        eng, seq = u.eng, u.seq
        m.d.comb += [
            eng.cmd.valid.eq(seq.fwd_cmd.valid),
            eng.cmd.payload.eq(seq.fwd_cmd.payload),
            eng.cmd.payload.perturb.eq(0),
            eng.cmd.payload.negate.eq(0),
            seq.fwd_cmd.ready.eq(eng.cmd.ready),
            eng.key_req.valid.eq(0),
            eng.key.ready.eq(0),
            seq.key.valid.eq(0),
            seq.loss.valid.eq(0),
            seq.corr_cmd.ready.eq(0),
            eng.act_read.addr.eq(0),
            seq.corr_busy.eq(0),
            seq.corr_done.eq(0),
            seq.upd_busy.eq(0),
            seq.upd_first.eq(0),
            seq.out_done.eq(u.writer.done),
        ]
        if self.geometry.factor_bits:
            m.d.comb += eng.factor_read.addr.eq(0)

    def _route_results(self, m: Module, u: _Units) -> None:
        """Forward results: output-layer groups to the loss unit (training) or the output
        writer (inference); hidden-layer groups are only written to the activation memory."""
        loss, writer, seq = u.loss, u.writer, u.seq
        res = u.eng.result
        is_out = res.payload.layer == self.geometry.n_layers - 1

        def take_group(stream: wiring.PureInterface) -> list:
            return [getattr(stream.payload, f).eq(getattr(res.payload, f)) for f in ("y", "mask", "group", "last")]

        m.d.comb += [*take_group(writer.i), writer.start.eq(seq.infer)]
        if loss is None:  # inference only: every run is an inference run
            m.d.comb += [writer.i.valid.eq(res.valid & is_out), res.ready.eq(~is_out | writer.i.ready)]
            return
        to_loss = ~seq.inference & is_out
        to_writer = seq.inference & is_out
        rtag = res.payload.tag
        m.d.comb += [
            *take_group(loss.i),
            loss.i.valid.eq(res.valid & to_loss),
            loss.i.payload.label.eq(rtag.label),
            loss.i.payload.baseline.eq(rtag.baseline),
            loss.i.payload.tag.eq(rtag),
            writer.i.valid.eq(res.valid & to_writer),
            res.ready.eq(~is_out | (to_loss & loss.i.ready) | (to_writer & writer.i.ready)),
        ]

    def _memory_ports(self, m: Module, u: _Units, mems: _Memories) -> tuple[dict[str, object], Signal]:
        """Each memory's port: the datapath while running, the host bus while idle.

        Returns the host-side ports by memory (``w``, ``g``, ``s``, ``l``, ``o``, ``m``
        with momentum, ``r`` the loss record) for the bus target, and the register that
        gives the ports to the datapath (a cycle after the sequencer's BUSY).  The sample and label
        memories and the loss record are written by one client only (the host; the
        sequencer), so their write ports stay with it while a run reads them: the bus
        decides which host writes a running ``TRAIN_STREAM`` leaves alone.
        """
        geo, lanes = self.geometry, self.geometry.lanes
        wshape, gshape = signed(geo.weight_bits), signed(geo.grad_bits)
        upd, eng = u.upd, u.eng
        # the owner of the ports from a register: the sequencer's state through these
        # multiplexers into the far block RAMs was a 100 MHz build's slowest path.  The
        # datapath's first access comes cycles after a run starts, and the bus refuses
        # the host's while either is high (_bus_target).
        running = Signal(name="ports_owned")
        m.d.sync += running.eq(u.seq.busy)
        host_w = LanePortSignature(lanes, geo.row_bits, wshape).create(path=("host_w",))
        host_g = LanePortSignature(lanes, geo.row_bits, gshape).create(path=("host_g",))
        host_s = PortSignature(mems.smem.addr_width, 32).create(path=("host_s",))
        host_l = PortSignature(mems.lmem.addr_width, geo.label_bits).create(path=("host_l",))
        host_o = PortSignature(mems.omem.addr_width, signed(8)).create(path=("host_o",))
        hosts = {"w": host_w, "s": host_s, "l": host_l, "o": host_o}
        if upd is None:  # inference only: the engine reads the weights, the host the rest
            mux_ports(m, mems.wmem.port, [(running, eng.weights), (None, host_w)])
        else:
            hosts["g"] = host_g
            if geo.overlap_update:  # the engine has a read port of its own: a step's first
                # pass may read the weights while the update still writes them
                w_read = mems.wmem.read
                # (which holds only the bits a pass multiplies, in their places in the word)
                below = geo.weight_bits - MAC_WEIGHT_BITS
                m.d.comb += [w_read.raddr.eq(eng.weights.raddr), w_read.ren.eq(eng.weights.ren),
                             *(eng.weights.rdata[k].eq(Cat(Const(0, below), w_read.rdata[k]))
                               for k in range(lanes))]
                # the update's while a run goes on (it reads and writes only when busy, which
                # is only within a run), the host's otherwise: chosen by the register
                # `running`, not by the update's busy (from its stages' valid bits through
                # this multiplexer into the block RAMs was the 16-lane build's slowest path)
                mux_ports(m, mems.wmem.port, [(running, upd.weights), (None, host_w)])
            else:
                mux_ports(m, mems.wmem.port, [(upd.busy, upd.weights), (running, eng.weights),
                                              (None, host_w)])
            mux_ports(m, mems.gmem.port, [(running, u.corr.grads), (None, host_g)])
            if geo.momentum:
                hosts["m"] = host_m = LanePortSignature(lanes, geo.row_bits, gshape).create(path=("host_m",))
                mux_ports(m, mems.mmem.port, [(running, upd.momentum), (None, host_m)])
        wiring.connect(m, host_s, mems.smem.host)
        m.d.comb += [
            mems.smem.host_owns.eq(~running),
            mems.smem.port.raddr.eq(eng.samples.raddr),
            mems.smem.port.ren.eq(eng.samples.ren),
            eng.samples.rdata.eq(mems.smem.port.rdata),
        ]
        labels = u.seq.labels
        m.d.comb += [
            mems.lmem.port.raddr.eq(Mux(running, labels.raddr, host_l.raddr)),
            mems.lmem.port.ren.eq(Mux(running, labels.ren, host_l.ren)),
            labels.rdata.eq(mems.lmem.port.rdata),
            host_l.rdata.eq(mems.lmem.port.rdata),
            mems.lmem.port.waddr.eq(host_l.waddr),
            mems.lmem.port.wdata.eq(host_l.wdata),
            mems.lmem.port.we.eq(host_l.we),
        ]
        if mems.record is not None:
            hosts["r"] = host_r = PortSignature(mems.record.addr_width, 32).create(path=("host_r",))
            seq, rec = u.seq, mems.record.port
            m.d.comb += [
                rec.raddr.eq(host_r.raddr), rec.ren.eq(host_r.ren), host_r.rdata.eq(rec.rdata),
                rec.waddr.eq(seq.record_addr), rec.wdata.eq(seq.record_data), rec.we.eq(seq.record_we),
            ]
        mux_ports(m, mems.omem.port, [(running, u.writer.mem), (None, host_o)])
        return hosts, running

    def _registers(self, m: Module, seq: Sequencer, eng: ForwardEngine, loss: LossUnit | None,
                   upd: UpdateUnit | None) -> RegisterFile:
        """The register file, the counters and the commands."""
        cfg, geo = self.cfg, self.geometry
        m.submodules.regs = regs = RegisterFile(cfg, config_resets=self.config_resets,
                                                  settled_wdata=self.pipelined_reads)
        running = seq.busy
        strobes = {name: Signal(name=f"command_{name}") for name in ("train", "infer", "train_stream", "abort")}
        starting = strobes["train"] | strobes["infer"] | strobes["train_stream"]  # (the sequencer's a cycle later)
        idle = idle_now = ~(running | starting)
        if self.pipelined_reads:
            # idle from registers: the sequencer's state through the commands' decoding into
            # the register file's error flag was the 16-lane ECP5 builds' slowest path (17 to
            # 19 steps).  The sequencer leaves IDLE only a cycle after ``starting``, so this
            # differs from ``idle`` only in the cycle a run ends, where may_start's register
            # refuses a run already; a command or a register write is refused there too
            # (docs/protocol.md).
            was_idle = Signal(init=1)
            m.d.sync += was_idle.eq(idle_now)
            idle = was_idle & ~starting
        done = Signal()
        cycles = Signal(cfg.hardware.counter_bits)
        mac_busy = Signal(cfg.hardware.counter_bits)
        stalls = Signal(32)
        steps_done = Signal(32)
        # (inference only: the run registers, the step counters and the loss are absent,
        # and the sequencer's training inputs keep their constant resets)
        training = self.training
        m.d.comb += [
            regs.locked.eq(~idle if self.pipelined_reads else running),
            *([seq.steps.eq(regs.steps),
               eng.seed.eq(regs.seed),
               seq.copies.eq(regs.copies),
               seq.step_samples.eq(regs.step_samples),
               seq.sample_count.eq(regs.sample_count)] if training else []),
            seq.infer_count.eq(regs.infer_count),
            *([eng.delta.eq(regs.delta),
               loss.target_on.eq(regs.target_on),
               upd.lr_mult.eq(regs.lr_mult)] if training else []),
            self.busy.eq(running | starting),
            regs.status.eq(Cat(running | starting, done, seq.inference)),
            *([regs.step.eq(seq.step),
               regs.cursor.eq(seq.cursor),
               seq.step_set.eq(regs.step_set),
               seq.step_value.eq(regs.wdata),
               seq.cursor_set.eq(regs.cursor_set),
               seq.cursor_value.eq(regs.wdata)] if training else []),
            regs.cycles.eq(cycles),
            regs.mac_busy.eq(mac_busy),
            regs.stalls.eq(stalls),
            *([regs.steps_done.eq(steps_done),
               regs.last_loss.eq(seq.last_loss)] if training else []),
        ]
        if geo.streaming:
            m.d.comb += [regs.fill.eq(seq.fill), seq.fill_set.eq(regs.fill_set), seq.fill_value.eq(regs.wdata),
                         regs.fill_ok.eq(seq.fill_ok)]
        m.d.comb += [getattr(regs, name).eq(value)
                     for name, value in constant_sources(cfg, geo.rows, config_hash(cfg)).items()]
        if geo.inject_layers:
            for name in ("sigma", "node_delta"):
                if hasattr(regs, name):
                    m.d.comb += getattr(eng, name).eq(getattr(regs, name))
        if geo.projection and training:
            m.d.comb += eng.target_on.eq(regs.target_on)
        # A TRAIN_STREAM run waiting for the host is not busy.  The verdict is registered: the
        # sequencer's wait (the ring's fill against the step) into the counter's 48-bit carry
        # was the ECP5 builds' slowest path; the count is the same, a cycle later.
        counting = Signal()
        m.d.sync += counting.eq(running & ~seq.waiting)
        with m.If(counting):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(eng.mac_active):
            m.d.sync += mac_busy.eq(mac_busy + 1)
        with m.If(eng.stall):
            m.d.sync += stalls.eq(stalls + 1)
        with m.If(seq.step_done):
            m.d.sync += steps_done.eq(steps_done + 1)
        with m.If(seq.finished):  # DONE rises in the cycle BUSY falls
            m.d.sync += done.eq(1)
        # CLEAR_COUNTERS zeroes the counters a cycle after it is accepted, from a register:
        # the write's decoding into the counters' 160 flip-flops was a 32-lane ECP5 build's
        # slowest path.  Idle, the counters stand still that cycle; the bus answers as before.
        clearing = Signal()
        m.d.sync += clearing.eq(0)
        with m.If(clearing):
            m.d.sync += [cycles.eq(0), mac_busy.eq(0), stalls.eq(0), steps_done.eq(0)]
        # commands: only ABORT is accepted while one runs.  The sequencer takes an accepted
        # command a cycle later, from a register (the write's decoding through the
        # sequencer's next state was a 10-step path at 100 MHz); the bus answers from
        # ``command_ok`` as before, and BUSY is set from that cycle on (``starting``).

        def may_start(checks: Value) -> Value:
            """Whether a run may start now: ``idle`` and ``checks`` (comparisons of registers
            that stand still while idle).  With ``pipelined_reads`` the checks, and ``idle``
            with them, are registered every cycle: the sequencer's state through the
            comparisons' carry chains into the register file's error flag was a slowest
            path of the ECP5 builds (21 steps).  A command in the very cycle a run ends is
            then refused as if busy (docs/protocol.md); the host sends one only once it has
            read ``DONE``."""
            if not self.pipelined_reads:
                return idle & checks
            ready = Signal()
            m.d.sync += ready.eq(idle_now & checks)
            return idle & ready

        m.d.sync += [strobe.eq(0) for strobe in strobes.values()]
        m.d.comb += [getattr(seq, name).eq(strobe) for name, strobe in strobes.items()]
        # (computed here: may_start's registers load every cycle, not only in a command's case)
        has_samples = (regs.sample_count != 0) & (seq.cursor < regs.sample_count) if training else None
        train_ok = may_start(has_samples) if training else Const(0, 1)
        if geo.streaming:
            stream_ok = may_start(has_samples & (seq.fill < regs.sample_count)
                                  & (regs.step_samples < regs.sample_count))
        # which command ``wdata`` names, registered where it is settled (RegisterFile.of_wdata):
        # its 32-bit comparisons into the register file's error flag were a slowest path of
        # the ECP5 builds (19 steps)
        named = {command: regs.of_wdata(m, regs.wdata == command, f"wdata_is_{command.name.lower()}")
                 for command in Command if geo.streaming or command != Command.TRAIN_STREAM}
        with m.If(regs.command):
            with m.If(named[Command.TRAIN]):  # (refused by an inference-only build)
                ok = train_ok
                m.d.comb += regs.command_ok.eq(ok)
                m.d.sync += strobes["train"].eq(ok)
                with m.If(ok):
                    m.d.sync += done.eq(0)
            with m.Elif(named[Command.INFER]):
                m.d.comb += regs.command_ok.eq(idle)
                m.d.sync += strobes["infer"].eq(idle)
                with m.If(idle):
                    m.d.sync += done.eq(0)
            with m.Elif(named[Command.CLEAR_COUNTERS]):
                m.d.comb += regs.command_ok.eq(idle)
                m.d.sync += clearing.eq(idle)
            if geo.streaming:
                with m.Elif(named[Command.TRAIN_STREAM]):  # a step must fit the ring beside a free slot
                    ok = stream_ok
                    m.d.comb += regs.command_ok.eq(ok)
                    m.d.sync += strobes["train_stream"].eq(ok)
                    with m.If(ok):
                        m.d.sync += done.eq(0)
            with m.Elif(named[Command.ABORT]):
                m.d.comb += regs.command_ok.eq(1)
                m.d.sync += strobes["abort"].eq(1)
        return regs

    @staticmethod
    def _picked_in_two(m: Module, row: data.View, lane: Value, first: Value, second: Value, name: str) -> Value:
        """Lane ``lane``'s word of ``row`` (a :class:`~.memories.LanePortSignature`'s read
        data), selected in two registered steps: within each group of :data:`LANE_GROUP`
        lanes as ``first`` is high, then among the groups as ``second`` is."""
        lanes = row.shape().length
        low = LANE_GROUP.bit_length() - 1
        groups = -(-lanes // LANE_GROUP)
        grouped = Signal(data.ArrayLayout(row.shape().elem_shape, groups), name=f"grouped_{name}")
        with m.If(first):
            for g in range(groups):
                members = [row[k] for k in range(g * LANE_GROUP, min(lanes, (g + 1) * LANE_GROUP))]
                m.d.sync += grouped[g].eq(Array(members)[lane[:low]])
        picked = Signal(row.shape().elem_shape, name=f"picked_{name}")
        with m.If(second):
            m.d.sync += picked.eq(grouped[lane[low:]])
        return Value.cast(picked).as_signed()

    @staticmethod
    def _write_enables(m: Module, memories: dict[Space, tuple[wiring.PureInterface, bool]], space: Value,
                       lane: Value) -> None:
        """The write enable of ``space``'s memory (``lane``'s, where it has lanes); none for
        a read-only space: its refusal is registered, so the host's write enable would
        otherwise reach the memory (the 16-lane build's slowest path)."""
        with m.Switch(space):
            for sp, (port, laned) in memories.items():
                if sp in READ_ONLY_SPACES:
                    continue
                with m.Case(sp):
                    m.d.comb += port.we.eq((1 << lane) if laned else 1)

    def _refused(self, m: Module, space: Value, word: Value, we: Value, running: Value,
                 live: dict[Space, Value], sizes: dict[Space, int], value_ok: dict[Space, Value]) -> Value:
        """Whether the bus refuses the request (``err``): a register outside the register
        file's 256 words, a memory access while a command runs (but those ``live`` allows),
        outside the space's ``sizes``, or a write whose value is not ``value_ok``; an unknown
        space.  With ``pipelined_reads`` the verdict is registered from the request's
        registered copy a cycle before the request is taken: the sequencer's state through
        the ring's slot test into the request's decoding was the 32-lane build's slowest path.
        """
        verdict = Signal(name="bus_refusing")
        with m.Switch(space):
            with m.Case(Space.REGS):
                m.d.comb += verdict.eq(word[8:] != 0)
            for sp, ok in value_ok.items():
                with m.Case(sp):
                    busy = running & ~live[sp] if sp in live else running
                    m.d.comb += verdict.eq(busy | at_least(word, sizes[sp]) | (we & ~ok))
            with m.Default():
                m.d.comb += verdict.eq(1)
        if not self.pipelined_reads:
            return verdict
        registered = Signal(name="bus_refused")
        m.d.sync += registered.eq(verdict)
        return registered

    def _bus_target(self, m: Module, regs: RegisterFile, seq: Sequencer,
                    memories: dict[Space, tuple[wiring.PureInterface, bool]],
                    registered: frozenset[Space], ports_owned: Value) -> None:
        """The host bus: registers through ``regs``, memories through their host ports.

        ``memories`` maps each space to its host port and whether it is laned (one word per
        lane of a row); the memories of the spaces in ``registered`` answer a cycle later,
        from a register of their own (``MemoryBlock.bank_words``, ``LaneMemory``'s
        ``registered``, ``SampleMemory``'s host reads), which takes the place of the bus's
        first read register.
        Memory accesses are refused while a command runs, but reads of the
        loss record and the sample and label writes a ``TRAIN_STREAM`` run leaves alone
        (the sequencer's :meth:`~.sequencer.Sequencer.slot_free`).  Registers and writes
        are answered the cycle after the request, memory reads a cycle later: the word,
        selected from its lane and space, is registered first, so that no path runs from
        a block RAM's output through the selects into the host link's frame buffer (the
        ECP5 builds' slowest path before, at 8 lanes); with ``pipelined_reads`` two cycles
        later still, each memory's whole word registered, then its lane selected into a
        register, before the space select, and every request taken two cycles after it
        appears, decoded from its registered copy (``decoded``) and judged by a registered
        verdict (:meth:`_refused`); a register's request then reaches the register file a
        cycle after it is taken, and is answered a cycle later, and a memory write is made
        in the cycle after it is taken, from a register (``write_due``), while ``ack`` is
        answered.
        """
        geo, lanes = self.geometry, self.geometry.lanes
        running = seq.busy | ports_owned
        if self.pipelined_reads:  # (for the verdict, which is registered: a command starts
            # or ends no sooner than a request, and STATUS reads are cycles apart from it)
            running = Signal(name="bus_running")
            m.d.sync += running.eq(self.busy | ports_owned)
        bus = self.bus

        def decoded(value: Value, name: str) -> Value:
            """``value``, a function of the bus's request, registered with ``pipelined_reads``
            (a request then waits a cycle for it): the address's divisions, the sample
            slot's ring test and the decoding from the host link's address adder were the
            ECP5 builds' slowest paths once the reads were registered."""
            if not self.pipelined_reads:
                return value
            reg = Signal.like(value, name=name)
            m.d.sync += reg.eq(value)
            return reg

        # the request as it stood a cycle ago: the same as now when a request is taken (what
        # decoded() registers is computed from the request as it stands: bus_space, bus_word)
        addr, we, wdata = decoded(bus.addr, "bus_addr"), decoded(bus.we, "bus_we"), decoded(bus.wdata, "bus_wdata")
        space, word = addr[WORD_ADDR_BITS:], addr[:WORD_ADDR_BITS]
        bus_space, bus_word = bus.addr[WORD_ADDR_BITS:], bus.addr[:WORD_ADDR_BITS]
        wide_words = hasattr(regs, "write_high")

        def widened(value: Value) -> Value:
            """The written ``value``, signed, with ``WRITE_HIGH`` above it where words are wide."""
            return Cat(value, regs.write_high).as_signed() if wide_words else value.as_signed()

        wide = widened(wdata)

        def fits(value: Value, bits: int) -> Value:
            """Whether the written ``value`` (with ``WRITE_HIGH`` above 32 bits) fits ``bits``."""
            if bits in (32, 64):
                return Const(1, 1)
            return fits_signed(widened(value) if bits > 32 else value.as_signed(), bits)

        lane_words = geo.weight_depth * lanes
        bus_row, bus_lane = divmod_const(bus_word, lanes, lane_words - 1)
        lane = decoded(bus_lane, "bus_lane")

        def addressed(sp: Space, value: Value) -> Value:
            """``value``, a function of the bus's request, for ``sp``'s port: with
            ``pipelined_reads`` registered as :func:`decoded` does, in a copy of its own,
            loaded only by requests to ``sp``, so that no two copies merge.  One address
            register fanning out to every memory's port multiplexer and yosys's
            read-during-write compare behind it, and to the register file's read, was the
            slowest path of the 16- and 32-lane ECP5 builds (session 28)."""
            if not self.pipelined_reads:
                return value
            copy = Signal.like(value, name=f"bus_addr_{sp.name.lower()}")
            with m.If(bus_space == sp):
                m.d.sync += copy.eq(value)
            return copy
        ack = Signal()
        err = Signal()
        read_space = Signal(range(8))
        read_lane = Signal(range(max(2, lanes)))  # at least one bit: no zero-width vector at one lane
        read_mem = Signal()
        reading = Signal()  # a memory read accepted: its word is registered this cycle
        m.d.sync += [ack.eq(0), reading.eq(0)]
        if self.pipelined_reads:
            # a memory write accepted is made the cycle after, from this register and the
            # registered space and lane (the request, from the host link's strobe, into the
            # memories' write enables was a slowest path of the ECP5 builds)
            write_due = Signal()
            m.d.sync += write_due.eq(0)
        for sp, (port, laned) in memories.items():
            # host ports follow the bus address combinationally; writes only when accepted,
            # reads only for reads (a memory declared free of read collisions is, then)
            port_addr = addressed(sp, bus_row if laned else bus_word)
            m.d.comb += [port.raddr.eq(port_addr), port.ren.eq(~we), port.waddr.eq(port_addr)]
            if laned:
                m.d.comb += [port.wdata[k].eq(wide) for k in range(lanes)]
            else:
                m.d.comb += port.wdata.eq(wdata)

        request = bus.stb & ~ack & ~reading
        two_step = self.pipelined_reads and lanes >= TWO_STEP_PICK_LANES
        if self.pipelined_reads:  # taken once the address has stood two cycles (below)
            held = Signal()  # the memories' words registered the cycle before (below)
            sorting = Signal()  # (two_step: a lane within its group, the cycle after)
            picking = Signal()  # and their lanes selected
            # a register request reaches the register file a cycle after it is taken, from a
            # register (the host link's strobe through the request into the command's
            # decoding was a 100 MHz build's slowest path); its answer a cycle later
            regs_due = Signal()
            m.d.sync += regs_due.eq(0)
            m.d.comb += regs.req.eq(regs_due)
            with m.If(regs_due):
                m.d.sync += ack.eq(1)
            for stage in (held, sorting, picking, regs_due) if two_step else (held, picking, regs_due):
                request = request & ~stage
            # the request's age: decoded() registers the address in its first cycle, the
            # verdict below is registered from that in its second, and it is taken in its third.
            # Taken on its age alone: in the two cycles it aged there was no ack, read or
            # register answer (the terms above), so none is due now, and the host link holds
            # stb until ack (the bus's rule).  The host link's strobe through those terms into
            # the read's lane registers was a 32-lane ECP5 build's slowest path.
            age = Signal(range(3))
            m.d.sync += age.eq(Mux(request & (age != 2), age + 1, 0))
            request = age == 2
        m.d.comb += [regs.addr.eq(addressed(Space.REGS, bus_word)), regs.we.eq(we), regs.wdata.eq(wdata)]
        sizes = {Space.WEIGHTS: lane_words, Space.GRADS: lane_words, Space.MOMENTUM: lane_words,
                 Space.SAMPLES: geo.sample_bus_words, Space.LABELS: geo.sample_depth,
                 Space.OUTPUTS: geo.output_words, Space.LOSSES: geo.loss_depth}
        widths = {Space.WEIGHTS: geo.weight_bits, Space.GRADS: geo.grad_bits, Space.MOMENTUM: geo.grad_bits,
                  Space.SAMPLES: 32}  # (four INT8: every word)
        # accesses accepted while a command runs
        live: dict[Space, Value] = {}
        if geo.streaming:
            sample_slot, _ = divmod_const(bus_word, geo.sample_stride // 4, geo.sample_bus_words - 1)
            m.d.comb += seq.probe_slot.eq(decoded(Mux(bus_space == Space.LABELS, bus_word, sample_slot), "bus_slot"))
            live = {Space.SAMPLES: we & seq.probe_free, Space.LABELS: we & seq.probe_free, Space.LOSSES: ~we}
        # each space's check of a write's value, from the request as it stands, decoded() as
        # the address is (from the registered wdata, which fans out to every memory, into the
        # checks and the verdict was a 32-lane build's slowest path)
        def value_ok(sp: Space) -> Value:
            check = (~at_least(bus.wdata, geo.classes) if sp == Space.LABELS  # 0 .. classes - 1
                     else Const(0, 1) if sp in READ_ONLY_SPACES
                     else fits(bus.wdata, widths[sp]))
            return check if isinstance(check, Const) else decoded(check, f"bus_{sp.name.lower()}_value_ok")

        verdict = self._refused(m, space, word, we, running, live, sizes, {sp: value_ok(sp) for sp in memories})
        # the lane a read selects, in a copy per laned space with pipelined_reads (loaded only
        # by requests to it, as addressed() does): one register fanning out to every space's
        # lane multiplexers was the 32-lane ECP5 build's slowest path (read_lane -> picked_grads)
        lane_of = {sp: Signal.like(read_lane, name=f"read_lane_{sp.name.lower()}") if self.pipelined_reads
                   else read_lane for sp, (_, laned) in memories.items() if laned}
        with m.If(request):
            m.d.sync += [ack.eq(1), err.eq(0), read_mem.eq(0), read_space.eq(space), read_lane.eq(lane)]
            for sp, copy in lane_of.items() if self.pipelined_reads else ():
                with m.If(space == sp):
                    m.d.sync += copy.eq(lane)
            with m.If(verdict):
                m.d.sync += err.eq(1)
            with m.Elif(space == Space.REGS):
                if self.pipelined_reads:
                    m.d.sync += [regs_due.eq(1), ack.eq(0)]
                else:
                    m.d.comb += regs.req.eq(1)
            with m.Elif(we):
                if self.pipelined_reads:
                    m.d.sync += write_due.eq(1)
                else:
                    self._write_enables(m, memories, space, lane)
            with m.Else():
                m.d.sync += [read_mem.eq(1), ack.eq(0), reading.eq(1)]

        if self.pipelined_reads:  # (the bus holds the address and data until it sees ack)
            with m.If(write_due):
                self._write_enables(m, memories, read_space, read_lane)

        # the answer: one cycle after the request, a memory's word one more (three more with
        # pipelined_reads: the block RAM's whole word registered as it leaves the memory, then
        # its lane selected into a register of its own, then its space; from
        # TWO_STEP_PICK_LANES lanes four, the lane selected in two steps)
        mem_value = Signal(signed(64 if wide_words else 32))
        answer = reading
        if self.pipelined_reads:
            m.d.sync += [held.eq(reading), picking.eq(sorting if two_step else held)]
            if two_step:
                m.d.sync += sorting.eq(held)
            answer = picking
        words = {}
        # the read's registers load only in the cycle its word passes them (clock enables,
        # free on the FPGAs: the valid bits are registers), so that the idle bus's cycles
        # skip the wide words and their lane selects in the co-simulation
        for sp, (port, laned) in memories.items():
            rdata = port.rdata
            if self.pipelined_reads and sp not in registered:
                rdata = Signal.like(port.rdata, name=f"held_{sp.name.lower()}")
                with m.If(reading):
                    m.d.sync += rdata.eq(port.rdata)
            if laned and two_step:
                words[sp] = self._picked_in_two(m, rdata, lane_of[sp], held, sorting, sp.name.lower())
                continue
            words[sp] = Value.cast(rdata[lane_of[sp]]).as_signed() if laned else Value.cast(rdata)
            if self.pipelined_reads:
                picked = Signal.like(words[sp], name=f"picked_{sp.name.lower()}")
                with m.If(held):
                    m.d.sync += picked.eq(words[sp])
                words[sp] = picked
        with m.If(answer):
            m.d.sync += ack.eq(1)
            with m.Switch(read_space):
                for sp, value in words.items():
                    with m.Case(sp):
                        m.d.sync += mem_value.eq(value)
        if wide_words:  # the registered word holds its high half until the next memory read
            m.d.comb += regs.read_high.eq(mem_value[32:])
        refused = err | ((read_space == Space.REGS) & regs.err)
        m.d.comb += [
            bus.ack.eq(ack),
            bus.err.eq(ack & refused),
            bus.rdata.eq(Mux(refused, 0, Mux(read_mem, mem_value[:32], regs.rdata))),
        ]

