"""The forward engine: ``lanes`` INT8 x INT8 MAC lanes running whole passes of the network.

docs/numerics.md §5.  One *pass* is the whole network on one sample: for every layer,
every group of ``lanes`` neurons, every input ``j`` (the bias input 127 last), all lanes
multiply-accumulate the same ``x_j`` with their own weight.  The engine issues one such
*token* per cycle; a token flows through

======  ================================================================================
pos     what happens (``H`` = the :class:`Draw` latency: 6, or 2 with
        ``hardware.hash_stages_per_register: 6``)
======  ================================================================================
0       issue: counters give the token; each lane's weight index enters its :class:`Draw`
1..H-1  the hash pipes; at ``H-1`` the weight, sample and activation reads are issued
H       ``w8`` = top 8 bits of the master weight; ``narrow_8(w8 + delta * a * s)`` for a
        perturbed ``mgd-weight`` layer, whose signs ``s`` also go to ``signs``; ``x_j``
        selected (sample, activation byte or 127)
H+1     ``w * x``
H+2     ``acc = w * x`` (first input) or ``acc + w * x``
H+3     on the bias token: ``narrow_acc(acc + injection)`` (``node_delta * a * s`` or
        ``sigma * a * n`` from the neuron draws of the bias token, or 0)
H+4     ``q = narrow_8(round_shift(acc, shift_l))``, ``y = phi(q)``
H+5     the output register: the group's result on ``result``; ``y`` also written to
        the activation memory, where the next layer reads it
======  ================================================================================

The whole pipe advances together: it stops only when ``result`` is not ready.  The next
layer starts issuing at once; a token that reads an activation word waits (*interlock*)
until the group that writes it has left position ``H+5``.  Passes run back to back: a
command is taken as soon as the previous pass has issued its last token, so the MACs do
not idle between passes.

The activation memory has four banks (a pass command chooses one), so the passes that
follow do not overwrite the layer inputs and the per-neuron factors (the *factor memory*
beside it, :meth:`ForwardEngine._factors`) that the correlation walker reads for a
pass's job; ``act_read`` and ``factor_read`` are its read ports into them.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, ShapeLike, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from perturbo.config import Activation, Rule

from .arith import narrow, round_shift
from .geometry import Geometry, ceil_log2
from .memories import LanePortSignature, PortSignature, SignWriteSignature, next_column
from .projection import ErrorKind, Gate, activation_gate, projection_error
from .random import Draw, draw_latency, gaussian_noise, projection_value

__all__ = ["ForwardEngine", "activation", "INJECT_BITS", "ACT_BANKS"]

#: Width of an injected value: ALR's ``sigma * n`` reaches 4095 * 510 < 2^22.
INJECT_BITS = 23
#: The constant input of the bias column.
BIAS_INPUT = 127
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


def _uint(n: int) -> unsigned:
    """An unsigned shape holding 0..n (at least 1 bit)."""
    return unsigned(max(1, n.bit_length()))


class ForwardEngine(wiring.Component):
    """Runs forward passes: LANES MAC lanes, perturbation, injection, requantisation.

    Parameters
    ----------
    geometry
        Sizes and layouts (:class:`~perturbo.hdl.geometry.Geometry`).
    tag_shape
        Shape of the pass tag: whatever the command carries comes back with the results
        of that pass.

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
        ``addr`` (``{bank, word}``) in, ``data`` (``lanes`` INT8) out one cycle later:
        a read port of the activation memory for the correlation walker.
    factor_read : ``In(...)``
        The same for the factor memory (``ArrayLayout`` of :attr:`Geometry.factor_bits`
        per lane; when the configuration has factors).
    busy : ``Out(1)``
        A pass is issuing or has results still to deliver.
    mac_active : ``Out(1)``
        The MACs did work this cycle (a token at the accumulate stage moved).
    stall : ``Out(1)``
        Work is held: back-pressure or the interlock.
    """

    def __init__(self, geometry: Geometry, tag_shape: ShapeLike = 1) -> None:
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
            "samples": Out(PortSignature(self.sample_addr_bits, signed(8))),
            "signs": Out(SignWriteSignature(lanes, geo.row_bits)),
            "result": Out(stream.Signature(self.result_layout)),
            "seed": In(32),
            "key_req": In(stream.Signature(32)),
            "key": Out(stream.Signature(32)),
            "act_read": In(wiring.Signature({
                "addr": Out(self.act_addr_bits), "data": In(int8s),
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
                "addr": Out(self.act_addr_bits), "data": In(self.factor_layout),
            }))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:  # noqa: C901 (one pipeline)
        m = Module()
        geo, lanes = self.geometry, self.lanes
        layers = geo.layers
        n_layers = geo.n_layers
        wb = geo.weight_bits
        ovf = geo.overflow
        idx_bits = max(1, geo.total_weights.bit_length())
        col_shape = _uint(geo.max_cols - 1)
        word_shape = _uint(max(geo.in_words(lay) for lay in layers))
        act_word_bits = geo.act_bank_bits

        def table(values: list[int], shape: ShapeLike) -> Array:
            return Array(Const(v, shape) for v in values)

        # -- per-layer constants --------------------------------------------------------
        t_last_col = table([lay.n_in for lay in layers], col_shape)
        t_last_group = table([lay.groups - 1 for lay in layers], self.group_shape)
        t_group_jump = table([1 + (lanes - 1) * lay.cols for lay in layers], idx_bits)
        t_woff = table([lay.weight_offset for lay in layers] + [0], idx_bits)
        t_in_base = table([layers[i - 1].act_base if i else 0 for i in range(n_layers)],
                          act_word_bits)
        t_out_base = table([lay.act_base for lay in layers], act_word_bits)
        t_perturb = table([int(lay.rule == Rule.MGD_WEIGHT) for lay in layers], 1)
        t_inject = table([int(i in self.inject_layers) for i in range(n_layers)], 1)
        t_lane_off = [table([k * lay.cols for lay in layers], idx_bits) for k in range(lanes)]
        # which layers draw one word per neuron on their bias token: the injected layers
        # of a perturbed pass (stream 1) and the hidden layers of target projection (B)
        projection = geo.projection
        t_hidden = table([int(projection and lay.index < n_layers - 1) for lay in layers], 1)
        t_alr = table([int(lay.rule == Rule.ALR) for lay in layers], 1)
        if projection:
            t_nbase = table([lay.projection_offset for lay in layers], 32)
            t_label_off = Array(table([c * lay.n_out for c in range(geo.classes)], 32) for lay in layers)
        else:
            t_nbase = table([lay.neuron_offset for lay in layers], 32)

        # -- the token layout (control that travels down the pipe) -----------------------
        tok_layout = data.StructLayout({
            "valid": 1,
            "layer": self.layer_shape,
            "group": self.group_shape,
            "first": 1,
            "last": 1,  # the bias token: the group's last input
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
        })
        H = self.draw_latency  # noqa: N806 (the position's name in the module docstring)
        PIPE_DEPTH = H + 5  # noqa: N806 (the output register's position, plus one)
        pipe = [Signal(tok_layout, name=f"t{pos}") for pos in range(PIPE_DEPTH)]
        # pipe[0] is combinational (the issue stage); pipe[1..H+4] are registers.

        # -- the global enable -------------------------------------------------------------
        en = Signal()
        out_valid = Signal()
        m.d.comb += en.eq(~(out_valid & ~self.result.ready))

        # -- tag FIFO: one entry per pass in flight: the one issuing and the one draining
        # (a pass is far longer than the pipe, so a third waits only under back-pressure)
        m.submodules.tags = tags = SyncFIFO(width=Shape.cast(self.tag_shape).width, depth=2)

        # -- issue stage ---------------------------------------------------------------------
        active = Signal()
        layer = Signal(self.layer_shape)
        group = Signal(self.group_shape)
        col = Signal(col_shape)
        word = Signal(word_shape)
        byte = Signal(range(max(2, lanes)))
        row = Signal(geo.row_bits)
        idx0 = Signal(idx_bits)
        key = Signal(32)
        p_perturb = Signal()
        p_negate = Signal()
        p_bank = Signal(range(ACT_BANKS))
        p_sign_bank = Signal()
        p_node_key = Signal(32)
        p_label = Signal(geo.label_bits)
        gbase = Signal(32)  # group * lanes: the neuron of lane 0
        sample_base = Signal(self.sample_addr_bits)
        parity = Signal()

        # written-group tracker for the interlock
        wr_parity = Signal()
        wr_layer_p1 = Signal(range(n_layers + 1))  # layer written last, plus one (0: none)
        wr_groups = Signal(_uint(geo.max_groups))

        last_col = t_last_col[layer]
        is_last = Signal()
        m.d.comb += is_last.eq(col == last_col)
        ok = Signal()
        if n_layers > 1:
            m.d.comb += ok.eq(
                (layer == 0) | is_last | (
                    (wr_parity == parity) & (
                        (wr_layer_p1 > layer) | ((wr_layer_p1 == layer) & (wr_groups > word))
                    )
                )
            )
        else:
            m.d.comb += ok.eq(1)

        t0 = pipe[0]
        group_done = is_last & (group == t_last_group[layer])
        pass_done = group_done & (layer == n_layers - 1)
        m.d.comb += [
            t0.valid.eq(active & ok),
            t0.layer.eq(layer),
            t0.group.eq(group),
            t0.first.eq(col == 0),
            t0.last.eq(is_last),
            t0.pass_last.eq(pass_done),
            t0.byte.eq(byte),
            t0.row.eq(row),
            t0.saddr.eq(sample_base + col),
            t0.aaddr.eq(Cat((t_in_base[layer] + word)[:act_word_bits], p_bank)),
            t0.perturb.eq(p_perturb & t_perturb[layer]),
            t0.inject.eq(p_perturb & t_inject[layer]),
            t0.negate.eq(p_negate),
            t0.bank.eq(p_bank),
            t0.sign_bank.eq(p_sign_bank),
            t0.parity.eq(parity),
            t0.draw.eq(is_last & ((p_perturb & t_inject[layer]) | t_hidden[layer])),
            t0.label.eq(p_label),
        ]
        fire = Signal()
        m.d.comb += fire.eq(en & t0.valid)
        with m.If(fire):
            m.d.sync += row.eq(row + 1)
            next_column(m, is_last, col, byte, word, lanes)
            with m.If(~is_last):
                m.d.sync += idx0.eq(idx0 + 1)
            with m.Else():
                with m.If(~group_done):
                    m.d.sync += [group.eq(group + 1), idx0.eq(idx0 + t_group_jump[layer]),
                                 gbase.eq(gbase + lanes)]
                with m.Elif(~pass_done):
                    m.d.sync += [group.eq(0), layer.eq(layer + 1), idx0.eq(t_woff[layer + 1]),
                                 gbase.eq(0)]
                with m.Else():
                    m.d.sync += active.eq(0)

        cmd = self.cmd
        m.d.comb += [
            cmd.ready.eq(~active & tags.w_rdy),
            tags.w_data.eq(cmd.payload.tag),
            tags.w_en.eq(cmd.valid & cmd.ready),
        ]
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [
                active.eq(1),
                layer.eq(0), group.eq(0), col.eq(0), word.eq(0), byte.eq(0), row.eq(0),
                idx0.eq(0), gbase.eq(0),
                key.eq(cmd.payload.key),
                p_perturb.eq(cmd.payload.perturb),
                p_negate.eq(cmd.payload.negate),
                p_bank.eq(cmd.payload.bank),
                p_sign_bank.eq(cmd.payload.sign_bank),
                sample_base.eq(cmd.payload.sample_base),
                parity.eq(~parity),
            ]
            if self.inject_layers:
                m.d.sync += p_node_key.eq(cmd.payload.node_key)
            if projection:
                m.d.sync += p_label.eq(cmd.payload.label)

        # -- positions 1..10: the control pipe -------------------------------------------------
        with m.If(en):
            for pos in range(1, PIPE_DEPTH):
                src = pipe[pos - 1]
                if pos == H + 4:  # only bias tokens (group results) go on from H+3
                    m.d.sync += [pipe[pos].eq(src), pipe[pos].valid.eq(src.valid & src.last)]
                else:
                    m.d.sync += pipe[pos].eq(src)

        # hash pipes: one per lane, random index = weight index of (neuron, col); on the
        # bias token of a drawing layer the neuron's index instead (node sign, ALR noise or
        # projection entry; docs/numerics.md §4), under stream 1's key for injections
        neuron0 = t_nbase[layer] + gbase
        if projection:
            neuron0 = neuron0 + t_label_off[layer][p_label]
        draw_key = Mux(t_inject[layer], p_node_key, key) if self.inject_layers else key
        draws = []
        for k in range(lanes):
            draw = m.submodules[f"draw{k}"] = Draw(geo.hash_stages_per_register)
            weight_index = (idx0 + t_lane_off[k][layer])[:idx_bits]
            m.d.comb += [
                draw.en.eq(en),
                draw.key.eq(draw_key),
                draw.index.eq(Mux(t0.draw, (neuron0 + k)[:32], weight_index)
                              if (self.inject_layers or projection) else weight_index),
            ]
            draws.append(draw)
        sign_bits = Cat(draw.o[31] for draw in draws)  # 1: s = -1 (docs/numerics.md §4)

        # pass keys on lane 0's hash pipe (a second hash only for keys, which are needed
        # once per pass, cost as much logic as a lane's): a request takes the pipe's input
        # in a cycle without a perturbed token, whose draw nobody reads; a flag travels
        # with it to add the seed between the rounds and to catch the key at the end
        key_req, key_out = self.key_req, self.key
        key_busy = Signal()  # a request is in the pipe
        key_take = Signal()
        key_flag = [Signal(name=f"key_flag{i}") for i in range(H)]
        m.d.comb += [
            key_req.ready.eq(en & ~(t0.valid & (t0.perturb | t0.draw)) & ~key_busy & ~key_out.valid),
            key_take.eq(key_req.valid & key_req.ready),
            draws[0].tweak.eq(Mux(key_flag[H // 2 - 1], self.seed, 0)),
        ]
        with m.If(key_take):
            m.d.comb += [draws[0].key.eq(key_req.payload), draws[0].index.eq(0)]
            m.d.sync += key_busy.eq(1)
        with m.If(en):
            m.d.sync += [flag.eq(prev) for flag, prev in zip(key_flag, [key_take, *key_flag[:-1]], strict=True)]
        with m.If(key_busy & key_flag[H - 1]):
            m.d.sync += [key_out.payload.eq(draws[0].o), key_out.valid.eq(1), key_busy.eq(0)]
        with m.If(key_out.valid & key_out.ready):
            m.d.sync += key_out.valid.eq(0)

        # position H-1: memory reads
        t5 = pipe[H - 1]
        m.d.comb += [
            self.weights.raddr.eq(t5.row),
            self.weights.ren.eq(en),
            self.samples.raddr.eq(t5.saddr),
            self.samples.ren.eq(en),
        ]
        # activation memory: four banks of act words
        act_depth = 1 << self.act_addr_bits
        m.submodules.acts = acts = Memory(shape=data.ArrayLayout(signed(8), lanes),
                                          depth=act_depth, init=[])
        act_rd = acts.read_port()
        act_wr = acts.write_port()
        act_rd2 = acts.read_port()
        m.d.comb += [
            act_rd.addr.eq(t5.aaddr),
            act_rd.en.eq(en),
            act_rd2.addr.eq(self.act_read.addr),
            self.act_read.data.eq(act_rd2.data),
        ]

        # position H: weight select and perturbation, input select
        t6 = pipe[H]
        delta = self.delta
        w7 = [Signal(signed(8), name=f"w7_{k}") for k in range(lanes)]
        x7 = Signal(signed(8))
        x6 = Signal(signed(8))
        with m.If(t6.last):
            m.d.comb += x6.eq(BIAS_INPUT)
        with m.Elif(t6.layer == 0):
            m.d.comb += x6.eq(self.samples.rdata)
        with m.Else():
            m.d.comb += x6.eq(act_rd.data[t6.byte])
        m.d.comb += [
            self.signs.bank.eq(t6.sign_bank),
            self.signs.row.eq(t6.row),
            self.signs.data.eq(sign_bits),
            self.signs.en.eq(en & t6.valid & t6.perturb),
        ]
        # what the neuron draws give, carried from H to H+4 (a * n, a * s or tl per lane)
        drawn = [[Signal(signed(_DRAWN_BITS), name=f"drawn{pos}_{k}") for k in range(lanes)]
                 for pos in range(4)] if (self.inject_layers or projection) else None
        if drawn is not None:
            with m.If(en):
                for k in range(lanes):
                    word = draws[k].o
                    if projection:
                        value = projection_value(word)
                    else:
                        noise = Mux(t_alr[t6.layer], gaussian_noise(word),
                                    Mux(word[31], -1, 1))
                        value = Mux(t6.negate, -noise, noise)
                    m.d.sync += drawn[0][k].eq(value)
                    for pos in range(1, 4):
                        m.d.sync += drawn[pos][k].eq(drawn[pos - 1][k])
        with m.If(en):
            m.d.sync += x7.eq(x6)
            for k in range(lanes):
                w8 = Value.cast(self.weights.rdata[k])[wb - 8:wb].as_signed()
                minus = sign_bits[k] ^ t6.negate  # a * s = -1
                step = Mux(minus, -delta, delta)
                perturbed = narrow(w8 + step, 8, ovf)
                m.d.sync += w7[k].eq(Mux(t6.perturb, perturbed, w8))

        # position H+1: products
        p8 = [Signal(signed(16), name=f"p8_{k}") for k in range(lanes)]
        with m.If(en):
            for k in range(lanes):
                m.d.sync += p8[k].eq(w7[k] * x7)

        # position H+2: accumulate (exact: the configuration sizes acc_bits for it)
        acc_bits = geo.acc_bits
        acc = [Signal(signed(acc_bits), name=f"acc{k}") for k in range(lanes)]
        t8 = pipe[H + 2]
        with m.If(en & t8.valid):
            for k in range(lanes):
                m.d.sync += acc[k].eq(Mux(t8.first, p8[k], (acc[k] + p8[k])[:acc_bits]))
        m.d.comb += self.mac_active.eq(en & t8.valid)

        # position H+3: on the bias token, the injection and narrowing to acc_bits; the
        # injection (sigma * a * n for ALR, node_delta * a * s for MGD node) is registered
        # from the value drawn at H when the token is at H+2
        acc10 = [Signal(signed(acc_bits), name=f"acc10_{k}") for k in range(lanes)]
        injection = [Signal(signed(INJECT_BITS), name=f"inj{k}") for k in range(lanes)]
        if self.inject_layers:
            with m.If(en):
                for k in range(lanes):
                    an = drawn[1][k]
                    node = Mux(an[-1], -self.node_delta, self.node_delta)
                    m.d.sync += injection[k].eq(Mux(t8.inject & t8.last,
                                                    Mux(t_alr[t8.layer], self.sigma * an, node), 0))
        with m.If(en):
            for k in range(lanes):
                m.d.sync += acc10[k].eq(narrow(acc[k] + injection[k], acc_bits, ovf))

        # position H+4: requantise and activate; into the output register
        t10 = pipe[H + 4]
        q10 = Signal(data.ArrayLayout(signed(8), lanes))
        y10 = Signal(data.ArrayLayout(signed(8), lanes))
        mask10 = Signal(lanes)
        with m.Switch(t10.layer):
            for lay in layers:
                with m.Case(lay.index):
                    for k in range(lanes):
                        q = narrow(round_shift(acc10[k], lay.shift, geo.rounding), 8, ovf)
                        m.d.comb += [q10[k].eq(q), y10[k].eq(activation(q10[k], lay.activation))]
                    with m.Switch(t10.group):
                        for g in range(lay.groups):
                            with m.Case(g):
                                m.d.comb += mask10.eq((1 << lay.lane_count(g, lanes)) - 1)
        out = self.result.payload
        with m.If(en):
            m.d.sync += [
                out_valid.eq(t10.valid),
                out.layer.eq(t10.layer),
                out.group.eq(t10.group),
                out.last.eq(t10.pass_last),
                out.mask.eq(mask10),
                out.q.eq(q10),
                out.y.eq(y10),
            ]
        m.d.comb += [
            act_wr.addr.eq(Cat((t_out_base[t10.layer] + t10.group)[:act_word_bits], t10.bank)),
            act_wr.data.eq(y10),
            act_wr.en.eq(en & t10.valid),
        ]
        if geo.factor_bits:
            self._factors(m, t10, q10, y10, drawn[3], act_wr)
        with m.If(en & t10.valid):
            m.d.sync += [
                wr_parity.eq(t10.parity),
                wr_layer_p1.eq(t10.layer + 1),
                wr_groups.eq(t10.group + 1),
            ]

        # -- result stream and tags ------------------------------------------------------------
        m.d.comb += [
            self.result.valid.eq(out_valid),
            out.tag.eq(tags.r_data),
            tags.r_en.eq(self.result.valid & self.result.ready & out.last),
        ]

        # -- status ----------------------------------------------------------------------------
        in_pipe = Cat(*(p.valid for p in pipe[1:]), out_valid).any()
        m.d.comb += [
            self.busy.eq(active | tags.r_rdy),
            self.stall.eq((~en & in_pipe) | (active & ~ok)),
        ]
        return m

    def _factors(self, m: Module, t10: Value, q10: Value, y10: Value, drawn: list[Signal],
                 act_wr: object) -> None:
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
            self.factor_read.data.eq(rd.data),
            wr.addr.eq(act_wr.addr),
            wr.en.eq(act_wr.en),
        ]
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
                        e = projection_error(kind, y10[k], drawn[k], target)
                        m.d.comb += wr.data[k].eq(activation_gate(gate, q10[k], e))
