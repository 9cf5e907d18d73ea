"""The forward engine: ``lanes`` INT8 x INT8 MAC lanes running whole passes of the network.

docs/numerics.md §5.  One *pass* is the whole network on one sample: for every layer,
every group of ``lanes`` neurons, every input ``j`` (the bias input 127 last), all lanes
multiply-accumulate the same ``x_j`` with their own weight.  The engine issues one such
*token* per cycle; a token flows through

======  ================================================================================
pos     what happens (``H`` = the :class:`Draw` latency: 6, or 2 with
        ``hardware.hash_stages_per_register: 6``)
======  ================================================================================
0       issue: counters give the token; the index of the group's sign word enters a :class:`Draw`
1..H-1  the hash pipes; at ``H-1`` the weight, sample and activation reads are issued
        (with ``registered_reads`` the weight, sample and activation reads at ``H-2``, into
        registers at ``H-1``; the sample's and the weights' at ``H-3`` when ``H >= 4``,
        registered as they leave their block RAMs)
H       ``w8`` = top 8 bits of the master weight; ``narrow_8(w8 + delta * a * s)`` for a
        perturbed ``mgd-weight`` layer, lane ``k``'s ``s`` from bit ``k`` past lane 0's in the
        sign words, also written to ``signs``; ``x_j``
        selected (sample, activation byte or 127)
H+1     ``w * x`` (operands and product in registers of a :class:`~.dsp.RegisteredProduct`)
H+2     ``acc = w * x`` (first input) or ``acc + w * x``
H+3     on the bias token: ``narrow_acc(acc + injection)`` (``node_delta * a * s`` or
        ``sigma * a * n`` from the neuron draws of the bias token, or 0)
H+4     ``q = narrow_8(round_shift(acc, shift_l))``, ``y = phi(q)``
H+5     the output register: the group's result on ``result``; ``y`` also written to
        the activation memory, where the next layer reads it
======  ================================================================================

The hash pipes (:attr:`~.geometry.Geometry.draw_pipes`): a word holds the weight signs of
32 neurons at one input, so one pipe serves a group of up to 32 lanes (two where it straddles
a block of 32; :attr:`~.geometry.Geometry.sign_pipes`).  The neuron draws (``node_delta``/
``sigma`` injections, target projection's ``tl``) are, with
:attr:`~.geometry.Geometry.shared_draw`, the first pipe's draws on the group's first
``lanes`` inputs, held until the bias token passes, else each lane's draw on the bias token
(a pipe per lane): the same words.

The whole pipe advances together: it stops only while a result that ``result`` was not
ready for waits in the skid register (the pipe moves on once more after a refusal; without
:attr:`ForwardEngine.skid`, at once).  The next
layer starts issuing at once; a token that reads an activation word waits (*interlock*)
until the group that writes it is far enough ahead that the word is written before the
token reads it: its bias token has left position :data:`WRITTEN_POSITION`.  Passes run back to back: a
command, registered as it arrives, is taken in the cycle the previous pass issues its last
token, so the MACs do not idle between passes.

The activation memory has four banks (a pass command chooses one), so the passes that
follow do not overwrite the layer inputs and the per-neuron factors (the *factor memory*
beside it, :meth:`ForwardEngine._factors`) that the correlation walker reads for a
pass's job; ``act_read`` and ``factor_read`` are its read ports into them.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, ShapeLike, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from perturbo.config import MAC_WEIGHT_BITS, Activation, Rule

from .arith import at_most, narrow, requantise
from .dsp import RegisteredProduct
from .geometry import Geometry, LayerGeometry, ceil_log2
from .memories import LanePortSignature, PortSignature, SignWriteSignature, next_column, no_read_collision, window_shape
from .projection import ErrorKind, Gate, activation_gate, projection_error
from .random import SIGN_BLOCK, Draw, draw_latency, gaussian_noise, projection_value, weight_signs

__all__ = ["ForwardEngine", "activation", "INJECT_BITS", "ACT_BANKS", "WRITTEN_POSITION", "written_position"]

#: Width of an injected value: ALR's ``sigma * n`` reaches 4095 * 510 < 2^22.
INJECT_BITS = 23
#: Bits of a neuron's position in its sign word (docs/numerics.md §4).
SIGN_BIT_BITS = SIGN_BLOCK.bit_length() - 1
#: The constant input of the bias column.
BIAS_INPUT = 127
#: Where a group's bias token counts for the interlock as written: the activation word is
#: written at ``H+4`` and read at ``H-2`` (``H-1`` without registered reads) by a port
#: that does not see a write in the same cycle, so a token that issues once the bias token
#: has left position 6 reads the word a cycle after it was written (at ``H+4``, for a
#: ``Draw`` latency ``H`` of 2, where the pipe ends there).
WRITTEN_POSITION = 6


def written_position(draw_latency: int) -> int:
    """The pipe position whose bias token the interlock counts as its group written:
    :data:`WRITTEN_POSITION`, or ``H+4``, the pipe's last, where that comes first."""
    return min(WRITTEN_POSITION, draw_latency + 4)


#: Activation (and factor) memory banks: ``{perturbed, alternate}``.
ACT_BANKS = 4
#: Width of what travels from the draw to the injection and factor stages per lane:
#: ``a * n`` (ALR, -510..510), ``a * s`` (MGD node, +-1) or ``tl`` (target projection).
_DRAWN_BITS = 11

_GATES = {None: Gate.NONE, Activation.RELU: Gate.RELU, Activation.LEAKY_RELU: Gate.LEAKY_RELU,
          Activation.HARD_SIGMOID: Gate.HARD_SIGMOID}
_ERRORS = {Rule.DRTP: ErrorKind.DRTP, Rule.TPSGD_L1: ErrorKind.TPSGD_L1,
           Rule.TPSGD_L2: ErrorKind.TPSGD_L2}


def activation(q: Value, kind: Activation | None) -> Value:
    """``phi(q)`` of docs/numerics.md §3 on a ``signed(8)`` value (None: linear)."""
    if kind is None:
        return q
    if kind == Activation.RELU:
        return Mux(q[7], 0, q)
    if kind == Activation.LEAKY_RELU:
        return Mux(q[7], q >> 3, q)
    if kind == Activation.HARD_SIGMOID:
        s = q + 64
        return Mux(s < 0, 0, Mux(s > 127, 127, s))
    raise ValueError(f"unknown activation {kind!r}")


def _tree_sum(values: list[Value]) -> Value:
    """``sum(values)`` as a balanced tree of adders."""
    while len(values) > 1:
        pairs = [a + b for a, b in zip(values[::2], values[1::2], strict=False)]
        values = pairs + values[2 * len(pairs):]
    return values[0]


def _uint(n: int) -> unsigned:
    """An unsigned shape holding 0..n (at least 1 bit)."""
    return unsigned(max(1, n.bit_length()))


@dataclass(frozen=True)
class _LayerTables:
    """Per-layer constants of the forward engine as tables indexed by a layer number, and
    the widths of the issue counters."""

    idx_bits: int  #: a sign word's index
    col_shape: unsigned  #: the column counter (inputs of the widest layer, bias included)
    word_shape: unsigned  #: the activation word counter
    before_last_col: Array  #: the column before the bias's (any value where the bias's is the only one)
    one_col: Array  #: the bias's column is the only one (one more entry: 0)
    before_last_group: Array  #: the group before the last (any value where there is one group)
    one_group: Array  #: one neuron group (one more entry: 0)
    block_jump: Array  #: per blocks crossed (0, 1, ..): sign word step from a group's bias to the next group
    soff: Array  #: the layer's first sign word (one more entry: 0)
    in_base: Array  #: activation word of the layer's input (layer 0: unused)
    out_base: Array  #: activation word of the layer's output
    perturb: Array  #: an ``mgd-weight`` layer: weights perturbed in a perturbed pass
    inject: Array  #: an injected layer (``mgd-node``/``alr``)
    pipe_off: list[Array]  #: per sign pipe: its word's index from the token's first (``_pipe_offset``)
    split: Array  #: lanes a neuron (inputs a token)
    bias_slot: Array  #: the bias input's place in the last token
    hidden: Array  #: a hidden layer of target projection (draws B on its bias token)
    alr: Array  #: an ALR layer
    nbase: Array  #: neuron (or projection entry) index of the layer's first neuron
    label_off: Array | None  #: target projection: the label's rows of B, per layer
    nidx_bits: int  #: a neuron draw's index (below ``2^nidx_bits``: ``gbase``, ``nbase``, ...)


@dataclass(frozen=True)
class _IssueRegs:
    """The issue stage's registers: where the pass is (``layer``, ``group``, ``col``, the
    input activation ``word`` and ``byte``, the weight ``row`` and ``idx0``, the index of lane
    0's sign word; ``gbase`` = group * lanes, the neuron of lane 0), the pass command's fields
    (``key``, ``p_*``, ``sample_base``, ``parity``) and the interlock's record of the last
    group written (``wr_parity``, ``wr_layer_p1``: that layer plus one, 0 for none,
    ``wr_groups``); ``held``: a pass command waits for the take (``_take_command``);
    ``col_last``, ``group_last``, ``layer_last``: ``col``, ``group`` and ``layer`` are the
    last of theirs (:meth:`ForwardEngine._advance` sets them a token ahead)."""

    active: Signal
    held: Signal
    layer: Signal
    group: Signal
    col: Signal
    word: Signal
    byte: Signal
    row: Signal
    idx0: Signal
    key: Signal
    p_perturb: Signal
    p_negate: Signal
    p_bank: Signal
    p_sign_bank: Signal
    p_node_key: Signal
    p_label: Signal
    gbase: Signal
    sample_base: Signal
    parity: Signal
    wr_parity: Signal
    wr_layer_p1: Signal
    wr_groups: Signal
    col_last: Signal
    group_last: Signal
    layer_last: Signal


class ForwardEngine(wiring.Component):
    """Runs forward passes: LANES MAC lanes, perturbation, injection, requantisation.

    Parameters
    ----------
    geometry
        Sizes and layouts (:class:`~perturbo.hdl.geometry.Geometry`).
    tag_shape
        Shape of the pass tag: whatever the command carries comes back with the results
        of that pass.
    registered_reads
        Read the weights, the sample and the activation word a position earlier (H-2) and
        register them at H-1, so that no path runs from a block RAM's output through the
        perturbation (an add and a saturation) into ``w7`` (the ECP5 builds' slowest path
        once the host bus read was pipelined), nor through the input select into ``x7`` (the
        next one; ``x7`` feeds every lane's multiplier, spread over the chip's multiplier
        rows, so the placer pulls it toward them).
        Only with a hash of at least three positions (H >= 3): the read then still comes a
        cycle after the token's issue.  The pipe, and so every cycle count, is unchanged.

    Members
    -------
    cmd : ``In(stream.Signature(cmd_layout))``
        One transfer per pass: ``perturb`` (a perturbed pass: ``mgd-weight`` layers use
        perturbed weights, ``mgd-node``/``alr`` layers take injections), ``negate``
        (the antithetic sign ``a = -1``), ``bank`` (activation bank), ``key`` (the
        weight-sign pass key, stream 0), ``sign_bank`` (the bank of ``signs`` the pass
        writes), ``sample_base`` (address of the sample's first feature in the sample
        buffer), ``node_key`` (stream 1's pass key: node signs and ALR noise; with
        ``mgd-node``/``alr`` layers), ``label`` (target projection) and ``tag``.
    delta : ``In(7)``
        MGD amplitude ``delta`` (1..127), in INT8 weight LSBs.
    weights : ``Out(LanePortSignature)``
        Read port of the master weight memories (``raddr``, ``ren``, ``rdata`` only).
    samples : ``Out(PortSignature)``
        Read port of the sample buffer (``raddr``, ``ren``, ``rdata`` only).
    signs : ``Out(SignWriteSignature(lanes, row_bits))``
        The signs ``s`` of every row of the ``mgd-weight`` layers of a perturbed pass,
        as drawn (bit set: ``s = -1``; ``a`` not applied), for a
        :class:`~.memories.SignMemory` that the correlation walker reads.
    sigma, node_delta : ``In(12)``, ``In(21)``
        ALR noise scale and MGD node amplitude (with ``mgd-node``/``alr`` layers).
    target_on : ``In(7)``
        The one-hot target of the output layer's delta rule (target projection).
    result : ``Out(stream.Signature(result_layout))``
        One transfer per neuron group: ``layer``, ``group``, ``last`` (the last group of
        the pass), ``mask`` (lanes holding a neuron), ``q`` and ``y`` (``lanes`` INT8 each)
        and the pass's ``tag``.
    seed : ``In(32)``
        The seed of the pass keys.
    key_req : ``In(stream.Signature(32))``
        Pass-key requests: ``e << 2 | stream``.  Lane 0's hash pipe computes
        ``pass_key(seed, stream, e)`` in a cycle in which no perturbed token issues (so
        at once during a baseline pass, which is when the sequencer asks), one at a time.
    key : ``Out(stream.Signature(32))``
        The key, :attr:`draw_latency` cycles after the request was taken; held until taken.
    act_read : ``In(...)``
        ``addr`` (``{bank, word}``) and ``en`` in, ``data`` (``lanes`` INT8) out one cycle
        later (it holds while ``en`` is low): a read port of the activation memory for the
        correlation walker.
    factor_read : ``In(...)``
        The same for the factor memory (``ArrayLayout`` of :attr:`Geometry.factor_bits`
        per lane; when the configuration has factors).
    busy : ``Out(1)``
        A pass command waits, a pass is issuing, or one has results still to deliver.
    mac_active : ``Out(1)``
        The MACs did work this cycle (a token at the accumulate stage moved).
    stall : ``Out(1)``
        Work is held: back-pressure or the interlock.
    """

    def __init__(self, geometry: Geometry, tag_shape: ShapeLike = 1, *, registered_reads: bool = True) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a Geometry, not {geometry!r}")
        geo = self.geometry = geometry
        self.tag_shape = tag_shape
        self.lanes = lanes = geo.lanes
        self.layer_shape = unsigned(ceil_log2(geo.n_layers))
        self.group_shape = _uint(geo.max_groups - 1)
        self.sample_addr_bits = geo.sample_addr_bits
        self.act_addr_bits = geo.act_addr_bits
        #: Position of the perturbation stage (the random words are ready there).
        self.draw_latency = draw_latency(geo.hash_stages_per_register)
        self.registered_reads = registered_reads and self.draw_latency >= 3
        #: A skid register on the result stream, so that the pipe's enable is a register's:
        #: with ``registered_reads`` asked for (the ECP5 builds'; the iCE40's logic cells are
        #: spoken for, and its Fmax is the hash's).
        self.skid = registered_reads
        #: With a hash of at least four positions, the sample's read two cycles before its
        #: register: the sample memory registers the whole word as it leaves the block RAM
        #: and selects the byte after (:class:`~.memories.SampleMemory`'s ``registered``),
        #: which the accelerator builds so.
        self.registered_sample = self.registered_reads and self.draw_latency >= 4
        #: The same for the weights: read at H-3 into ``w4``, a register with nothing
        #: between it and the block RAM, then ``w5``.  A DP16KD's output takes 5.8 ns
        #: (nextpnr's model), which left 4.2 ns at 100 MHz to reach ``w5``, placed toward
        #: the lane's multiplier; that route across the chip was the 16-lane build's slowest
        #: path.  ``w4`` can sit by the block RAM.
        self.registered_weights = self.registered_sample
        #: The key pipe's request chosen after the first hash pipe's first adder, which hashes
        #: both words (:class:`~.random.Draw`'s ``alternate``): the choice waits for the
        #: interlock's verdict on the token, which ran through the adder into the hash's
        #: first register (the ECP5 8-lane build's slowest path); with ``registered_reads``
        #: asked for, as the skid register.
        self.late_key_choice = registered_reads
        #: the bits of lane 0's position in its sign word that are always 0: ``gbase`` is a
        #: multiple of ``lanes``, so of its largest power-of-two factor
        self.sign_bit_lo = min(SIGN_BIT_BITS, (lanes & -lanes).bit_length() - 1)
        self.inject_layers = geo.inject_layers
        cmd_fields = {
            "perturb": 1,
            "negate": 1,
            "bank": range(ACT_BANKS),
            "key": 32,
            "sign_bank": 1,
            "sample_base": self.sample_addr_bits,
        }
        if self.inject_layers:
            cmd_fields["node_key"] = 32  # stream 1's pass key: node signs and ALR noise
        if geo.projection:
            cmd_fields["label"] = geo.label_bits
        self.cmd_layout = data.StructLayout({**cmd_fields, "tag": tag_shape})
        int8s = data.ArrayLayout(signed(8), lanes)
        self.result_layout = data.StructLayout({
            "layer": self.layer_shape,
            "group": self.group_shape,
            "last": 1,
            "mask": lanes,
            "q": int8s,
            "y": int8s,
            "tag": tag_shape,
        })
        fb = geo.factor_bits
        self.factor_layout = geo.factor_layout()
        members = {
            "cmd": In(stream.Signature(self.cmd_layout)),
            "delta": In(7),
            "weights": Out(LanePortSignature(lanes, geo.row_bits, signed(geo.weight_bits))),
            "samples": Out(PortSignature(self.sample_addr_bits, window_shape(geo.layers[0].split))),
            "signs": Out(SignWriteSignature(lanes, geo.row_bits)),
            "result": Out(stream.Signature(self.result_layout)),
            "seed": In(32),
            "key_req": In(stream.Signature(32)),
            "key": Out(stream.Signature(32)),
            "act_read": In(wiring.Signature({
                "addr": Out(self.act_addr_bits), "en": Out(1), "data": In(int8s),
            })),
            "busy": Out(1),
            "mac_active": Out(1),
            "stall": Out(1),
        }
        if self.inject_layers:
            members["sigma"] = In(12)
            members["node_delta"] = In(21)
        if geo.projection:
            members["target_on"] = In(7)
        if fb:
            members["factor_read"] = In(wiring.Signature({
                "addr": Out(self.act_addr_bits), "en": Out(1), "data": In(self.factor_layout),
            }))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        """The pipe of the module docstring, one method per position or group of positions.

        The stages are built in pipe order (issue, control pipe, hash pipes, reads, select
        and perturb, MAC, injection, output), which is also the order of the netlist.
        """
        m = Module()
        tabs = self._layer_tables()
        tok_layout = self._token_layout()
        H = self.draw_latency  # noqa: N806 (the position's name in the module docstring)
        PIPE_DEPTH = H + 5  # noqa: N806 (the output register's position, plus one)
        pipe = [Signal(tok_layout, name=f"t{pos}") for pos in range(PIPE_DEPTH)]
        # pipe[0] is combinational (the issue stage); pipe[1..H+4] are registers.

        # -- the global enable: with a skid, the pipe waits only while a result is parked in
        # the skid register (a register, so no path runs from the consumers' ready into the
        # pipe; that path, through the issue and into the hash pipes, was the slowest at
        # 100 MHz); without, while the output register's result is refused
        en = Signal()
        out_valid = Signal()
        out = Signal.like(self.result.payload, name="out")  # the output register
        skid_valid = Signal()
        skid = Signal.like(self.result.payload, name="skid")  # the result the consumer refused
        m.d.comb += en.eq(~skid_valid if self.skid else ~(out_valid & ~self.result.ready))

        # -- tag FIFO: one entry per pass in flight: the one issuing and the one draining
        # (a pass is far longer than the pipe, so a third waits only under back-pressure)
        m.submodules.tags = tags = SyncFIFO(width=Shape.cast(self.tag_shape).width, depth=2)

        regs, ok = self._issue(m, tabs, pipe[0], en, tags)
        self._control_pipe(m, pipe, en)
        draws = self._hash_pipes(m, tabs, regs, pipe[0], en)
        self._key_pipe(m, draws, pipe[0], en)
        weights, sample, act_word, act_wr = self._memory_reads(m, pipe, en, platform)
        w6, x6, drawn = self._select_and_perturb(m, tabs, pipe[H], en, draws, weights, sample, act_word)
        acc = self._multiply_accumulate(m, pipe[H + 2], en, w6, x6, en & (pipe[H].valid | pipe[H + 1].valid))
        acc10 = self._inject(m, tabs, pipe[H + 2], pipe[H + 3], en, acc, drawn)
        self._output(m, tabs, pipe[H + 4], en, out_valid, out, acc10, act_wr, drawn, platform)
        self._record_written(m, regs, pipe[written_position(H)], en)

        # -- result stream and tags: the skid register first, then the output register ---------
        result = self.result
        m.d.comb += [
            out.tag.eq(tags.r_data),  # (the skid keeps the tag it was parked with)
            result.valid.eq(skid_valid | out_valid),
            result.payload.eq(Mux(skid_valid, skid.as_value(), out.as_value())),
            tags.r_en.eq(result.valid & result.ready & result.payload.last),
        ]
        if self.skid:
            # the skid follows the output register until a result is parked in it: its
            # enable is ``~skid_valid`` alone, not the consumers' ready (600 bits at 64 lanes)
            with m.If(skid_valid):
                m.d.sync += skid_valid.eq(~result.ready)
            with m.Else():
                m.d.sync += [skid_valid.eq(out_valid & ~result.ready), skid.eq(out)]

        # -- status ----------------------------------------------------------------------------
        in_pipe = Cat(*(p.valid for p in pipe[1:]), out_valid, skid_valid).any()
        m.d.comb += [
            self.busy.eq(regs.held | regs.active | tags.r_rdy),
            self.stall.eq((~en & in_pipe) | (regs.active & ~ok)),
        ]
        return m

    def _layer_tables(self) -> _LayerTables:
        """The per-layer constants, as tables indexed by a token's or the issue stage's layer."""
        geo, lanes = self.geometry, self.lanes
        layers = geo.layers
        n_layers = geo.n_layers
        idx_bits = max(1, geo.total_sign_words.bit_length())
        max_jump = (SIGN_BLOCK - 1 + lanes) // SIGN_BLOCK  # sign blocks a group step can cross
        col_shape = _uint(geo.max_tokens - 1)
        act_word_bits = geo.act_bank_bits

        def table(values: list[int], shape: ShapeLike) -> Array:
            return Array(Const(v, shape) for v in values)

        # which layers draw one word per neuron on their bias token: the injected layers
        # of a perturbed pass (stream 1) and the hidden layers of target projection (B)
        projection = geo.projection
        # the largest neuron draw index: the layer's base, the last label's row of B, the
        # last group's neurons (the lanes past n_out included); narrower than the hash's
        # 32 bits, so that the adders forming it are too
        nb = [lay.projection_offset if projection else lay.neuron_offset for lay in layers]
        top = max(nb[lay.index] + (geo.classes - 1) * lay.n_out * projection + lay.groups * lanes
                  for lay in layers)
        nidx_bits = top.bit_length()
        nbase = table(nb, nidx_bits)
        if projection:
            label_off = Array(table([c * lay.n_out for c in range(geo.classes)], nidx_bits) for lay in layers)
        else:
            label_off = None
        return _LayerTables(
            idx_bits=idx_bits,
            col_shape=col_shape,
            word_shape=_uint(max(geo.in_words(lay) for lay in layers)),
            before_last_col=table([max(0, lay.tokens - 2) for lay in layers], col_shape),
            one_col=table([int(lay.tokens == 1) for lay in layers] + [0], 1),
            before_last_group=table([max(0, lay.groups - 2) for lay in layers], self.group_shape),
            one_group=table([int(lay.groups == 1) for lay in layers] + [0], 1),
            block_jump=Array(table([(1 + (d - 1) * lay.cols) % (1 << idx_bits) for lay in layers], idx_bits)
                             for d in range(max_jump + 1)),
            soff=table([lay.sign_offset for lay in layers] + [0], idx_bits),
            in_base=table([layers[i - 1].act_base if i else 0 for i in range(n_layers)], act_word_bits),
            out_base=table([lay.act_base for lay in layers], act_word_bits),
            perturb=table([int(lay.rule == Rule.MGD_WEIGHT) for lay in layers], 1),
            inject=table([int(i in self.inject_layers) for i in range(n_layers)], 1),
            pipe_off=[table([self._pipe_offset(lay, p) for lay in layers], idx_bits) for p in range(geo.sign_pipes)],
            split=table([lay.split for lay in layers], _uint(geo.max_split)),
            bias_slot=table([lay.bias_slot for lay in layers], _uint(geo.max_split - 1)),
            hidden=table([int(projection and lay.index < n_layers - 1) for lay in layers], 1),
            alr=table([int(lay.rule == Rule.ALR) for lay in layers], 1),
            nbase=nbase,
            label_off=label_off,
            nidx_bits=nidx_bits,
        )

    @staticmethod
    def _pipe_offset(lay: LayerGeometry, pipe: int) -> int:
        """Sign pipe ``pipe``'s word from the token's first (``idx0``) in ``lay``: block
        ``pipe`` at the token's input, or where the layer splits its inputs block
        ``pipe // split`` at the token's input ``pipe % split``."""
        return (pipe // lay.split) * lay.cols + pipe % lay.split

    def _token_layout(self) -> data.StructLayout:
        """The token: the control that travels down the pipe beside each input."""
        geo, lanes = self.geometry, self.lanes
        return data.StructLayout({
            "valid": 1,
            "layer": self.layer_shape,
            "group": self.group_shape,
            "first": 1,
            "last": 1,  # the bias token: the group's last input
            # the bias token reads no input (a field only where a layer splits its inputs,
            # whose bias token may hold inputs too; else it is ``last``)
            **({"bias_only": 1} if geo.max_split > 1 else {}),
            "pass_last": 1,
            "byte": range(max(2, lanes)),  # at least one bit at one lane
            "row": geo.row_bits,
            "saddr": self.sample_addr_bits,
            "aaddr": self.act_addr_bits,
            "perturb": 1,
            "inject": 1,
            "negate": 1,
            "bank": range(ACT_BANKS),
            "sign_bank": 1,
            "parity": 1,
            "draw": 1,  # the bias token of a layer whose neuron draws are used
            "label": geo.label_bits,  # target projection: the sample's label
            # lane 0's bit in its sign word, above the bits that are always 0 (_first_sign_bit)
            "sign_bit": max(1, SIGN_BIT_BITS - self.sign_bit_lo),
        })

    # -- position 0: issue ---------------------------------------------------------------------

    def _issue(self, m: Module, tabs: _LayerTables, t0: Value, en: Signal,
               tags: SyncFIFO) -> tuple[_IssueRegs, Signal]:
        """Position 0: one token per cycle from the pass counters, held by the interlock.

        Returns the issue registers and ``ok``, the interlock's verdict on the token.
        """
        regs = self._issue_registers(tabs)
        is_last = regs.col_last  # the bias token
        ok = self._interlock(m, regs, tabs)
        group_done = is_last & regs.group_last
        pass_done = group_done & regs.layer_last
        self._issue_token(m, regs, tabs, t0, ok, is_last, pass_done)
        fire = Signal()
        m.d.comb += fire.eq(en & t0.valid)
        self._advance(m, regs, tabs, fire, is_last, group_done, pass_done)
        # (a pass's last token is a bias token, which reads no input where no layer splits
        # its inputs: the interlock passes it, and the take need not wait for the verdict,
        # whose comparisons through the take into the counters' resets were a slowest path)
        last_fires = fire if self.geometry.max_split > 1 else en & regs.active
        self._take_command(m, regs, tabs, tags, last_fires & pass_done)
        return regs, ok

    def _issue_registers(self, tabs: _LayerTables) -> _IssueRegs:
        """The issue stage's registers (their names are the netlist's)."""
        geo = self.geometry
        return _IssueRegs(
            active=Signal(name="active"),
            held=Signal(name="cmd_held_valid"),
            layer=Signal(self.layer_shape, name="layer"),
            group=Signal(self.group_shape, name="group"),
            col=Signal(tabs.col_shape, name="col"),
            word=Signal(tabs.word_shape, name="word"),
            byte=Signal(range(max(2, self.lanes)), name="byte"),
            row=Signal(geo.row_bits, name="row"),
            idx0=Signal(tabs.idx_bits, name="idx0"),
            key=Signal(32, name="key"),
            p_perturb=Signal(name="p_perturb"),
            p_negate=Signal(name="p_negate"),
            p_bank=Signal(range(ACT_BANKS), name="p_bank"),
            p_sign_bank=Signal(name="p_sign_bank"),
            p_node_key=Signal(32, name="p_node_key"),
            p_label=Signal(geo.label_bits, name="p_label"),
            gbase=Signal(tabs.nidx_bits, name="gbase"),
            sample_base=Signal(self.sample_addr_bits, name="sample_base"),
            parity=Signal(name="parity"),
            wr_parity=Signal(name="wr_parity"),
            wr_layer_p1=Signal(range(geo.n_layers + 1), name="wr_layer_p1"),
            wr_groups=Signal(_uint(geo.max_groups), name="wr_groups"),
            col_last=Signal(name="col_last"),
            group_last=Signal(name="group_last"),
            layer_last=Signal(name="layer_last"),
        )

    def _interlock(self, m: Module, regs: _IssueRegs, tabs: _LayerTables) -> Signal:
        """``ok``, the interlock's verdict: a token may issue if it reads no activation
        word (the first layer or the bias input) or the group writing that word has left
        position :data:`WRITTEN_POSITION` in this pass (``wr_*``, :meth:`_record_written`)."""
        layer, parity = regs.layer, regs.parity
        wr_parity, wr_layer_p1, wr_groups = regs.wr_parity, regs.wr_layer_p1, regs.wr_groups
        ok = Signal()
        if self.geometry.n_layers > 1:
            m.d.comb += ok.eq(
                (layer == 0) | self._bias_only(tabs, layer, regs.col_last) | (
                    (wr_parity == parity) & (
                        (wr_layer_p1 > layer) | ((wr_layer_p1 == layer) & (wr_groups > regs.word))
                    )
                )
            )
        else:
            m.d.comb += ok.eq(1)
        return ok

    def _first_input(self, col: Value) -> Value:
        """The first layer's token ``col``'s first input: ``col * split``."""
        split = self.geometry.layers[0].split
        return col if split == 1 else Cat(Const(0, split.bit_length() - 1), col)

    def _bias_only(self, tabs: _LayerTables, layer: Value, is_last: Value) -> Value:
        """The token reads no input: the last of a group, unless the layer splits its inputs
        and the bias shares the token with some."""
        if self.geometry.max_split == 1:
            return is_last
        return is_last & (tabs.bias_slot[layer] == 0)

    def _issue_token(self, m: Module, regs: _IssueRegs, tabs: _LayerTables, t0: Value, ok: Signal,
                     is_last: Signal, pass_done: Value) -> None:
        """The token at position 0, from the counters and the pass command's fields."""
        layer = regs.layer
        m.d.comb += [
            t0.valid.eq(regs.active & ok),
            t0.layer.eq(layer),
            t0.group.eq(regs.group),
            t0.first.eq(regs.col == 0),
            t0.last.eq(is_last),
            *([t0.bias_only.eq(self._bias_only(tabs, layer, is_last))] if self.geometry.max_split > 1 else []),
            t0.pass_last.eq(pass_done),
            t0.byte.eq(regs.byte),
            t0.row.eq(regs.row),
            t0.saddr.eq(regs.sample_base + self._first_input(regs.col)),
            t0.aaddr.eq(Cat((tabs.in_base[layer] + regs.word)[:self.geometry.act_bank_bits], regs.p_bank)),
            t0.perturb.eq(regs.p_perturb & tabs.perturb[layer]),
            t0.inject.eq(regs.p_perturb & tabs.inject[layer]),
            t0.negate.eq(regs.p_negate),
            t0.bank.eq(regs.p_bank),
            t0.sign_bank.eq(regs.p_sign_bank),
            t0.parity.eq(regs.parity),
            t0.draw.eq(self._draws_here(regs, tabs, is_last)),
            t0.label.eq(regs.p_label),
            t0.sign_bit.eq(self._first_sign_bit(regs.gbase)[self.sign_bit_lo:]),
        ]

    def _draws_here(self, regs: _IssueRegs, tabs: _LayerTables, is_last: Value) -> Value:
        """The token's random word is a neuron draw: a bias token (a lane's pipe each), or
        with :attr:`Geometry.shared_draw` one of the group's first ``lanes`` inputs (the
        one pipe), of a layer drawing in this pass."""
        drawing = (regs.p_perturb & tabs.inject[regs.layer]) | tabs.hidden[regs.layer]
        if self.geometry.shared_draw:
            return drawing & at_most(regs.col, self.lanes - 1)
        return drawing & is_last

    def _advance(self, m: Module, regs: _IssueRegs, tabs: _LayerTables, fire: Signal, is_last: Signal,
                 group_done: Value, pass_done: Value) -> None:
        """Step the counters when a token issues: next column, next group, next layer, done.

        Whether the next token's column, group and layer are their layer's last is decided
        here, from the counters as they stand, into ``col_last``, ``group_last`` and
        ``layer_last``: compared when a token issues, against the tables indexed by the
        layer, they led through the take of the next pass command into the counters' reset
        (nine logic levels, the slowest path of several ECP5 builds).
        """
        layer, group, idx0, gbase = regs.layer, regs.group, regs.idx0, regs.gbase
        last_layer = self.geometry.n_layers - 1
        with m.If(fire):
            m.d.sync += regs.row.eq(regs.row + 1)
            split = tabs.split[layer] if self.geometry.max_split > 1 else 1
            next_column(m, is_last, regs.col, regs.byte, regs.word, self.lanes, split)
            with m.If(~is_last):
                m.d.sync += [idx0.eq(idx0 + split), regs.col_last.eq(regs.col == tabs.before_last_col[layer])]
            with m.Else():
                with m.If(~group_done):
                    # the next group's first sign word: blocks of 32 neurons crossed times cols on
                    crossed = (self._first_sign_bit(gbase) + self.lanes) >> SIGN_BIT_BITS
                    m.d.sync += [group.eq(group + 1), idx0.eq(idx0 + tabs.block_jump[crossed][layer]),
                                 gbase.eq(gbase + self.lanes), regs.col_last.eq(tabs.one_col[layer]),
                                 regs.group_last.eq(group == tabs.before_last_group[layer])]
                with m.Elif(~pass_done):
                    m.d.sync += [group.eq(0), layer.eq(layer + 1), idx0.eq(tabs.soff[layer + 1]),
                                 gbase.eq(0), regs.col_last.eq(tabs.one_col[layer + 1]),
                                 regs.group_last.eq(tabs.one_group[layer + 1]),
                                 regs.layer_last.eq(layer == last_layer - 1)]
                with m.Else():
                    m.d.sync += regs.active.eq(0)

    def _first_sign_bit(self, gbase: Value) -> Value:
        """``gbase & 31``: lane 0's bit in its sign word (docs/numerics.md §4), with the bits
        below :attr:`sign_bit_lo` constant 0 (``gbase`` is a multiple of ``lanes``)."""
        lo = self.sign_bit_lo
        return Cat(Const(0, lo), Cat(gbase, Const(0, SIGN_BIT_BITS))[lo:SIGN_BIT_BITS])

    def _take_command(self, m: Module, regs: _IssueRegs, tabs: _LayerTables, tags: SyncFIFO,
                      last_fires: Value) -> None:
        """Take a pass command when no pass is issuing, or in the cycle the issuing pass's
        last token issues (``last_fires``), so that the next pass's first token follows it
        at once; its tag waits in the FIFO until the pass's last result leaves.  (The
        counters' reset here overrides :meth:`_advance`'s step of them.)

        The command waits in a register first (``held``; ``cmd.ready`` is that register
        empty), so that the take is decided from the engine's own registers: the
        sequencer's offer, which depends on its state across the chip, ran through the
        take into the counters' reset (the ECP5 16-lane build's slowest path, 12.2 ns).  A
        command offered while the engine waits for one starts a cycle later; one offered
        while a pass issues is taken in its last token's cycle as before.
        """
        cmd = self.cmd
        held = Signal(self.cmd_layout, name="cmd_held")
        held_valid = regs.held
        take = Signal()
        m.d.comb += [
            cmd.ready.eq(~held_valid),
            take.eq(held_valid & (~regs.active | last_fires) & tags.w_rdy),
            tags.w_data.eq(held.tag),
            tags.w_en.eq(take),
        ]
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [held.eq(cmd.payload), held_valid.eq(1)]
        with m.Elif(take):
            m.d.sync += held_valid.eq(0)
        with m.If(take):
            m.d.sync += [
                regs.active.eq(1),
                regs.layer.eq(0), regs.group.eq(0), regs.col.eq(0), regs.word.eq(0), regs.byte.eq(0),
                regs.row.eq(0), regs.idx0.eq(0), regs.gbase.eq(0),
                regs.col_last.eq(tabs.one_col[0]), regs.group_last.eq(tabs.one_group[0]),
                regs.layer_last.eq(self.geometry.n_layers == 1),
                regs.key.eq(held.key),
                regs.p_perturb.eq(held.perturb),
                regs.p_negate.eq(held.negate),
                regs.p_bank.eq(held.bank),
                regs.p_sign_bank.eq(held.sign_bank),
                regs.sample_base.eq(held.sample_base),
                regs.parity.eq(~regs.parity),
            ]
            if self.inject_layers:
                m.d.sync += regs.p_node_key.eq(held.node_key)
            if self.geometry.projection:
                m.d.sync += regs.p_label.eq(held.label)

    # -- positions 1..H+4: the control pipe, the hash pipes and the key requests ---------------

    def _control_pipe(self, m: Module, pipe: list[Signal], en: Signal) -> None:
        """Positions 1..H+4: each token moves one position per enabled cycle."""
        H = self.draw_latency  # noqa: N806
        with m.If(en):
            for pos in range(1, len(pipe)):
                src = pipe[pos - 1]
                if pos == H + 4:  # only bias tokens (group results) go on from H+3
                    m.d.sync += [pipe[pos].eq(src), pipe[pos].valid.eq(src.valid & src.last)]
                else:
                    m.d.sync += pipe[pos].eq(src)

    def _hash_pipes(self, m: Module, tabs: _LayerTables, regs: _IssueRegs, t0: Value,
                    en: Signal) -> list[Draw]:
        """The :class:`Draw` pipes (:attr:`Geometry.draw_pipes`), fed at issue; their words
        leave at position H.

        In an ``mgd-weight`` layer pipe ``p`` draws the sign word of the group's ``p``-th
        block of 32 neurons at the token's input (docs/numerics.md §4; :meth:`_sign_bits`
        picks each lane's bit).  A drawing layer's neuron draws (node sign, ALR noise or
        projection entry, under stream 1's key for injections) take, with
        :attr:`Geometry.shared_draw`, pipe 0 on the group's input ``k`` for lane ``k``'s
        neuron, else each lane's own pipe on the bias token.
        """
        geo, layer = self.geometry, regs.layer
        neuron0 = tabs.nbase[layer] + regs.gbase
        if geo.projection:
            neuron0 = neuron0 + tabs.label_off[layer][regs.p_label]
        draw_key = Mux(tabs.inject[layer], regs.p_node_key, regs.key) if self.inject_layers else regs.key
        draws_neurons = bool(self.inject_layers) or geo.projection
        draws = []
        for p in range(geo.draw_pipes):
            draw = m.submodules[f"draw{p}"] = Draw(geo.hash_stages_per_register,
                                                   alternate=p == 0 and self.late_key_choice)
            sign_word = (regs.idx0 + tabs.pipe_off[p][layer])[:tabs.idx_bits] if p < geo.sign_pipes else 0
            if geo.shared_draw:
                neuron = (neuron0 + regs.col)[:tabs.nidx_bits] if p == 0 else None
            else:
                neuron = (neuron0 + p)[:tabs.nidx_bits]
            index = Mux(t0.draw, neuron, sign_word) if draws_neurons and neuron is not None else sign_word
            m.d.comb += [draw.en.eq(en), draw.key.eq(draw_key), draw.index.eq(index)]
            draws.append(draw)
        return draws

    def _sign_bits(self, m: Module, draws: list[Draw], t6: Value) -> Value:
        """Position H: bit ``k`` set where lane ``k``'s weight has ``s = -1``: the lanes' bits
        of the sign words (0 without ``mgd-weight`` layers).  Where a layer splits its
        inputs, lane ``i * split + slot`` (neuron ``i``, the group's only one) takes bit
        ``i & 31`` of pipe ``(i >> 5) * split + slot``'s word."""
        geo, lanes = self.geometry, self.lanes
        pipes = geo.sign_pipes
        if not pipes:
            return Const(0, lanes)
        words = [draw.o for draw in draws[:pipes]]
        first = Cat(Const(0, self.sign_bit_lo), t6.sign_bit)[:SIGN_BIT_BITS]
        signs = weight_signs(words, first, lanes)
        if geo.max_split == 1:
            return signs
        bits = Signal(lanes, name="sign_bits")
        m.d.comb += bits.eq(signs)
        with m.Switch(t6.layer):
            for lay in geo.layers:
                if lay.split > 1:  # (only mgd-weight layers split: geometry.layer_splits)
                    with m.Case(lay.index):
                        m.d.comb += bits.eq(Cat(
                            words[(k // lay.split >> SIGN_BIT_BITS) * lay.split + k % lay.split]
                            [(k // lay.split) % SIGN_BLOCK] for k in range(lanes)))
        return bits

    def _key_pipe(self, m: Module, draws: list[Draw], t0: Value, en: Signal) -> None:
        """Pass keys on the first hash pipe.

        A second hash only for keys, which are needed once per pass, would cost as much
        logic as a lane's: a request takes the pipe's input in a cycle without a perturbed
        token, whose draw nobody reads; a flag travels with it to add the seed between the
        rounds and to catch the key at the end.
        """
        H = self.draw_latency  # noqa: N806
        key_req, key_out = self.key_req, self.key
        key_busy = Signal()  # a request is in the pipe
        key_take = Signal()
        key_flag = [Signal(name=f"key_flag{i}") for i in range(H)]
        m.d.comb += [
            key_req.ready.eq(en & ~(t0.valid & (t0.perturb | t0.draw)) & ~key_busy & ~key_out.valid),
            key_take.eq(key_req.valid & key_req.ready),
            draws[0].tweak.eq(Mux(key_flag[H // 2 - 1], self.seed, 0)),
        ]
        if self.late_key_choice:
            m.d.comb += [draws[0].alt_key.eq(key_req.payload), draws[0].alt_take.eq(key_take)]
        with m.If(key_take):
            if not self.late_key_choice:
                m.d.comb += [draws[0].key.eq(key_req.payload), draws[0].index.eq(0)]
            m.d.sync += key_busy.eq(1)
        with m.If(en):
            m.d.sync += [flag.eq(prev) for flag, prev in zip(key_flag, [key_take, *key_flag[:-1]], strict=True)]
        with m.If(key_busy & key_flag[H - 1]):
            m.d.sync += [key_out.payload.eq(draws[0].o), key_out.valid.eq(1), key_busy.eq(0)]
        with m.If(key_out.valid & key_out.ready):
            m.d.sync += key_out.valid.eq(0)

    # -- positions H-1..H+4: the datapath --------------------------------------------------------

    def _memory_reads(self, m: Module, pipe: list[Value], en: Signal,
                      platform: object) -> tuple[Value, Value, Value, object]:
        """Position H-1: the weight, sample and activation reads (data at H); with
        :attr:`registered_reads` at H-2 and registered at H-1, the sample's at H-3 with
        :attr:`registered_sample` (its memory's answer two reads later), the weights' at
        H-3 with :attr:`registered_weights` (into ``w4``, then ``w5``).

        The activation memory (four banks of act words) lives here; returns the weights,
        the sample byte and the activation word for position H, and the activation
        memory's write port for the output register.
        """
        H = self.draw_latency
        weights, sample = self.weights.rdata, self.samples.rdata
        w_read = s_read = a_read = pipe[H - 1]
        act_depth = 1 << self.act_addr_bits
        m.submodules.acts = acts = Memory(shape=data.ArrayLayout(signed(8), self.lanes),
                                          depth=act_depth, init=[])
        act_rd = acts.read_port()
        act_wr = acts.write_port()
        act_rd2 = acts.read_port()
        act_word = act_rd.data
        w_rdata = self.weights.rdata
        if self.registered_weights:
            # (reset-less: it alone reads the weights' block RAM, whose output register it
            # can then be, perturbo.boards.netlist)
            w_rdata = Signal.like(self.weights.rdata, name="w4", reset_less=True)
            with m.If(en):
                m.d.sync += w_rdata.eq(self.weights.rdata)
        if self.registered_reads:
            # (the activation word too, so that the select into x7, which sits toward the
            # lanes' multipliers, starts from a register, as the weights' and the sample's do)
            weights = Signal.like(self.weights.rdata, name="w5")
            sample = Signal.like(self.samples.rdata, name="x5")
            act_word = Signal.like(act_rd.data, name="a5")
            with m.If(en):  # (the reads hold while en is low, and so do their registers)
                m.d.sync += [weights.eq(w_rdata), sample.eq(self.samples.rdata),
                             act_word.eq(act_rd.data)]
            w_read = s_read = a_read = pipe[H - 2]
        if self.registered_sample:
            s_read = pipe[H - 3]
        if self.registered_weights:
            w_read = pipe[H - 3]
        m.d.comb += [
            self.weights.raddr.eq(w_read.row),
            # only the reads a token uses (no_read_collision: with the update overlapped the
            # update writes the weights while the engine reads them)
            self.weights.ren.eq(en & w_read.valid),
            self.samples.raddr.eq(s_read.saddr),
            self.samples.ren.eq(en),
            act_rd.addr.eq(a_read.aaddr),
            # only the reads the select uses (no_read_collision): not the samples, not the bias
            act_rd.en.eq(en & a_read.valid & (a_read.layer != 0)
                         & ~(a_read.bias_only if self.geometry.max_split > 1 else a_read.last)),
            act_rd2.addr.eq(self.act_read.addr),
            act_rd2.en.eq(self.act_read.en),
            self.act_read.data.eq(act_rd2.data),
        ]
        # a pass writes the bank of its own activations; the next layer's reads and the
        # walker's read the banks of finished layers and passes (Sequencer); a token reads
        # its word after its issue, which the interlock allowed only once the word was written
        no_read_collision(m, acts, "acts", platform, act_wr, [act_rd, act_rd2])
        return weights, sample, act_word, act_wr

    def _select_and_perturb(self, m: Module, tabs: _LayerTables, t6: Value, en: Signal,
                            draws: list[Draw], weights: Value, sample: Value,
                            act_word: Value) -> tuple[list[Value], list[Value], list[list[Signal]] | None]:
        """Position H: each lane's weight (perturbed in a perturbed ``mgd-weight`` layer, its
        signs written to ``signs``) and the shared input (sample, activation byte or the
        bias input), for the multipliers' operand registers (``w7``, ``x7``); also the
        neuron draws (``drawn``)."""
        lanes, wb, ovf = self.lanes, self.geometry.weight_bits, self.geometry.overflow
        delta = self.delta
        # -delta from a register (delta changes only between runs, by a host write many
        # cycles before a pass): its negation ahead of the sum and the narrowing into the
        # multiplier's operand register was a 16-lane build's slowest path
        minus_delta = Signal(signed(8), name="minus_delta")
        m.d.sync += minus_delta.eq(-delta)
        sign_bits = self._sign_bits(m, draws, t6)
        x6 = self._inputs(m, tabs, t6, sample, act_word)
        m.d.comb += [
            self.signs.bank.eq(t6.sign_bank),
            self.signs.row.eq(t6.row),
            self.signs.data.eq(sign_bits),
            self.signs.en.eq(en & t6.valid & t6.perturb),
        ]
        drawn = self._neuron_draws(m, tabs, t6, en, draws)
        w6 = []
        for k in range(lanes):
            w8 = Value.cast(weights[k])[wb - MAC_WEIGHT_BITS:wb].as_signed()
            minus = sign_bits[k] ^ t6.negate  # a * s = -1
            # both sums made beside the draw, which then only selects one: the sign bit
            # (the hash word's bit selected by the token) ahead of the sum and its
            # narrowing was a 16-lane build's slowest path
            perturbed = Mux(minus, narrow(w8 + minus_delta, 8, ovf), narrow(w8 + delta, 8, ovf))
            w6.append(Mux(t6.perturb, perturbed, w8))
        return w6, x6, drawn

    def _inputs(self, m: Module, tabs: _LayerTables, t6: Value, sample: Value, act_word: Value) -> list[Value]:
        """Position H: the token's inputs, :attr:`Geometry.max_split` of them (one without a
        layer that splits): input ``slot`` is the bias input 127 in the bias's place of the
        last token, 0 past it (padding), else the sample's or the activation word's byte
        ``slot`` past the token's first.  Lane ``k`` multiplies input ``k % max_split``."""
        slots = self.geometry.max_split
        if slots == 1:
            x6 = Signal(signed(8), name="x6")
            with m.If(t6.last):
                m.d.comb += x6.eq(BIAS_INPUT)
            with m.Elif(t6.layer == 0):
                m.d.comb += x6.eq(sample)
            with m.Else():
                m.d.comb += x6.eq(act_word[t6.byte])
            return [x6]
        xs = [Signal(signed(8), name=f"x6_{slot}") for slot in range(slots)]
        for slot, x6 in enumerate(xs):
            with m.Switch(t6.layer):
                for lay in self.geometry.layers:
                    place = slot % lay.split  # this input's place in the token of the layer
                    with m.Case(lay.index):
                        if lay.index == 0:
                            data_in = sample if lay.split == 1 else sample[place]
                        else:
                            data_in = act_word[t6.byte | place]  # (byte: a multiple of split)
                        with m.If(t6.last & (place == lay.bias_slot)):
                            m.d.comb += x6.eq(BIAS_INPUT)
                        with m.Elif(t6.last & (place > lay.bias_slot)):
                            m.d.comb += x6.eq(0)
                        with m.Else():
                            m.d.comb += x6.eq(data_in)
        return xs

    def _neuron_draws(self, m: Module, tabs: _LayerTables, t6: Value, en: Signal,
                      draws: list[Draw]) -> list[list[Signal]] | None:
        """What the neuron draws give at H (``a * n``, ``a * s`` or ``tl`` per lane), carried
        to H+4 for the injection (read at H+1..) and the factors (at H+4); None when no
        layer draws per neuron."""
        lanes = self.lanes
        projection = self.geometry.projection
        if not (self.inject_layers or projection):
            return None
        bits = 8 if projection else _DRAWN_BITS  # tl is an INT8

        def value_of(word: Value) -> Value:
            if projection:
                return projection_value(word)
            noise = Mux(tabs.alr[t6.layer], gaussian_noise(word), Mux(word[31], -1, 1))
            return Mux(t6.negate, -noise, noise)

        if self.geometry.shared_draw:
            # the group's first `lanes` inputs draw lanes 0, 1, ...: shifted in as they pass
            # H, so at the bias token (after them) lane k's value is hold[lanes - 1 - k]
            # (hold is the bias token's drawn[0]: the next group's first input, right behind
            # it, shifts in only as the bias token leaves H+1)
            hold = [Signal(signed(bits), name=f"hold{i}") for i in range(lanes)]
            with m.If(en & t6.valid & t6.draw):
                m.d.sync += [hold[0].eq(value_of(draws[0].o)),
                             *(hold[i].eq(hold[i - 1]) for i in range(1, lanes))]
            drawn = [hold[::-1]]
        else:
            drawn = [[Signal(signed(bits), name=f"drawn0_{k}") for k in range(lanes)]]
            with m.If(en):
                m.d.sync += [drawn[0][k].eq(value_of(draws[k].o)) for k in range(lanes)]
        for pos in range(1, 4):
            drawn.append([Signal(signed(bits), name=f"drawn{pos}_{k}") for k in range(lanes)])
            with m.If(en):
                m.d.sync += [drawn[pos][k].eq(drawn[pos - 1][k]) for k in range(lanes)]
        return drawn

    def _multiply_accumulate(self, m: Module, t8: Value, en: Signal, w6: list[Value],
                             x6: list[Value], mult_en: Value) -> list[Signal]:
        """Positions H+1 (the operands ``w7``, ``x7`` registered, then multiplied into ``p8``:
        :class:`~.dsp.RegisteredProduct`, ``p8`` inside the block multiplier on the ECP5)
        and H+2 (accumulate; exact: the configuration sizes ``acc_bits`` for it).

        The multipliers load only under ``mult_en``: while a token at H or H+1 moves (its
        operands, its product), so that Verilator skips the lanes' products while the
        engine idles; an invalid token's product is never accumulated."""
        lanes = self.lanes
        p8 = []
        for k in range(lanes):
            mult = m.submodules[f"mult{k}"] = RegisteredProduct(
                signed(8), signed(8), logic=self.geometry.lane_products == "logic", operands_inside=False)
            m.d.comb += [mult.a.eq(w6[k]), mult.b.eq(x6[k % len(x6)]), mult.en.eq(mult_en)]
            p8.append(mult.p)

        acc_bits = self.geometry.acc_bits
        acc = [Signal(signed(acc_bits), name=f"acc{k}") for k in range(lanes)]
        with m.If(en & t8.valid):
            for k in range(lanes):
                m.d.sync += acc[k].eq(Mux(t8.first, p8[k], (acc[k] + p8[k])[:acc_bits]))
        m.d.comb += self.mac_active.eq(en & t8.valid)
        return acc

    def _inject(self, m: Module, tabs: _LayerTables, t8: Value, t9: Value, en: Signal, acc: list[Signal],
                drawn: list[list[Signal]] | None) -> list[Signal]:
        """Position H+3: on the bias token, the injection and narrowing to ``acc_bits``.

        The injection (``sigma * a * n`` for ALR, ``node_delta * a * s`` for MGD node) is
        registered from the value drawn at H when the token is at H+2.  Where the layer of
        the token at H+3 splits its inputs, lane ``i`` takes neuron ``i``'s sum instead of its
        own accumulator: its ``split`` lanes' (no injection there: only ``mgd-weight`` layers
        split).  The sum is exact: ``acc_bits`` holds the whole dot product, and the partial
        sums wrap modulo ``2^acc_bits`` (docs/numerics.md §5).
        """
        lanes, acc_bits, ovf = self.lanes, self.geometry.acc_bits, self.geometry.overflow
        acc = self._neuron_sums(m, t9, acc)
        acc10 = [Signal(signed(acc_bits), name=f"acc10_{k}") for k in range(lanes)]
        injection = [Signal(signed(INJECT_BITS), name=f"inj{k}") for k in range(lanes)]
        # (both load only for a bias token, the one that reaches H+4 with the sum: an idle
        # engine's cycles then skip the injection and the narrowing in the co-simulation)
        if self.inject_layers:
            with m.If(en & t8.valid & t8.last):
                for k in range(lanes):
                    an = drawn[1][k]
                    node = Mux(an[-1], -self.node_delta, self.node_delta)
                    m.d.sync += injection[k].eq(Mux(t8.inject & t8.last,
                                                    Mux(tabs.alr[t8.layer], self.sigma * an, node), 0))
        with m.If(en & t9.valid & t9.last):
            for k in range(lanes):
                m.d.sync += acc10[k].eq(narrow(acc[k] + injection[k], acc_bits, ovf))
        return acc10

    def _neuron_sums(self, m: Module, t9: Value, acc: list[Signal]) -> list[Value]:
        """Each lane's accumulator, or where the layer at H+3 splits its inputs, the sum of
        the accumulators of neuron ``k``'s lanes in lane ``k`` (lanes past the layer's
        neurons: their own, unread)."""
        geo, acc_bits = self.geometry, self.geometry.acc_bits
        if geo.max_split == 1:
            return acc
        sums = [Signal(signed(acc_bits), name=f"sum9_{k}") for k in range(self.lanes)]
        m.d.comb += [total.eq(own) for total, own in zip(sums, acc, strict=True)]
        with m.Switch(t9.layer):
            for lay in geo.layers:
                if lay.split > 1:
                    with m.Case(lay.index):
                        for k in range(lay.neurons_in(0)):
                            parts = acc[k * lay.split:(k + 1) * lay.split]
                            m.d.comb += sums[k].eq(_tree_sum(parts)[:acc_bits])
        return sums

    def _output(self, m: Module, tabs: _LayerTables, t10: Value, en: Signal, out_valid: Signal,
                out: Value, acc10: list[Signal], act_wr: object, drawn: list[list[Signal]] | None,
                platform: object) -> None:
        """Position H+4: requantise and activate, into the output register and the
        activation (and factor) memory."""
        geo, lanes, ovf = self.geometry, self.lanes, self.geometry.overflow
        q10 = Signal(data.ArrayLayout(signed(8), lanes))
        y10 = Signal(data.ArrayLayout(signed(8), lanes))
        mask10 = Signal(lanes)
        with m.Switch(t10.layer):
            for lay in geo.layers:
                with m.Case(lay.index):
                    for k in range(lanes):
                        q = requantise(acc10[k], lay.shift, geo.rounding, ovf)
                        m.d.comb += [q10[k].eq(q), y10[k].eq(activation(q10[k], lay.activation))]
                    with m.Switch(t10.group):
                        for g in range(lay.groups):
                            with m.Case(g):
                                m.d.comb += mask10.eq((1 << lay.neurons_in(g)) - 1)
        with m.If(en):
            m.d.sync += out_valid.eq(t10.valid)
        with m.If(en & t10.valid):  # (an invalid result's fields are never read)
            m.d.sync += [
                out.layer.eq(t10.layer),
                out.group.eq(t10.group),
                out.last.eq(t10.pass_last),
                out.mask.eq(mask10),
                out.q.eq(q10),
                out.y.eq(y10),
            ]
        m.d.comb += [
            act_wr.addr.eq(Cat((tabs.out_base[t10.layer] + t10.group)[:geo.act_bank_bits], t10.bank)),
            act_wr.data.eq(y10),
            act_wr.en.eq(en & t10.valid),
        ]
        if geo.factor_bits:
            self._factors(m, t10, q10, y10, drawn[3], act_wr, platform)

    @staticmethod
    def _record_written(m: Module, regs: _IssueRegs, token: Value, en: Signal) -> None:
        """The interlock's record of the last group written (``wr_*``), taken as a bias
        token passes :data:`WRITTEN_POSITION`: its word is in the activation memory by the
        time a token issued after that reads it (the pipe moves as one, so the distance
        holds through stalls)."""
        with m.If(en & token.valid & token.last):
            m.d.sync += [
                regs.wr_parity.eq(token.parity),
                regs.wr_layer_p1.eq(token.layer + 1),
                regs.wr_groups.eq(token.group + 1),
            ]

    def _factors(self, m: Module, t10: Value, q10: Value, y10: Value, drawn: list[Signal],
                 act_wr: object, platform: object) -> None:
        """The factor memory: what the correlation needs of each neuron, written beside its
        activation word (same bank and word).

        Target projection: the gated error ``g = e * phi'(q)`` (docs/numerics.md §6), with
        ``e`` from ``y``, the local target ``tl`` drawn on the bias token, and on the output
        layer the delta rule ``y - t``.  ALR: ``sign(a * n)`` as (negative, zero) bits; MGD
        node: ``a * s = -1``.
        """
        geo, lanes = self.geometry, self.lanes
        m.submodules.factors = mem = Memory(shape=self.factor_layout, depth=1 << self.act_addr_bits,
                                            init=[])
        wr = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [
            rd.addr.eq(self.factor_read.addr),
            rd.en.eq(self.factor_read.en),
            self.factor_read.data.eq(rd.data),
            wr.addr.eq(act_wr.addr),
            wr.en.eq(act_wr.en),
        ]
        no_read_collision(m, mem, "factors", platform, wr, [rd])
        if not geo.projection:
            for k in range(lanes):
                an = drawn[k]
                bits = Cat(an[-1], an == 0)
                m.d.comb += wr.data[k].eq(bits[:geo.factor_bits])
            return
        with m.Switch(t10.layer):
            for lay in geo.layers:
                with m.Case(lay.index):
                    output = lay.index == geo.n_layers - 1
                    kind = ErrorKind.DELTA if output else _ERRORS[lay.rule]
                    gate = _GATES[None if output else lay.activation]
                    for k in range(lanes):
                        target = Mux(t10.group * lanes + k == t10.label, self.target_on, 0)
                        e = projection_error(kind, y10[k], drawn[k], target, geo.dead_zone)
                        m.d.comb += wr.data[k].eq(activation_gate(gate, q10[k], e))
