"""cocotb: the forward engine against golden.units, pass by pass, group by group.

Random master weights and inputs, extreme cases (saturation at both ends, zero inputs,
all -128 weights, the longest accumulation), baseline and perturbed passes with both
antithetic signs, back-to-back commands with random gaps and random back-pressure.
Besides the results and the sign writes, the factor memory: what each pass left there
for the correlation walker (target projection's gated errors, with labels at both ends
of the class range; ALR's sign(a * n), a noise of 0 included; MGD node's a * s), read
back through ``factor_read``.
"""

from __future__ import annotations

import random

import cocotb
import torch
from hdl_model import pass_outputs, sign_writes, weight_rows
from hdl_tbutil import Bench, Packer, config

from perturbo.config import Rule
from perturbo.golden import units as u
from perturbo.hdl.forward import ForwardEngine
from perturbo.hdl.geometry import Geometry

cfg = config()
geo = Geometry(cfg)
ENGINE = ForwardEngine(geo, tag_shape=16)
#: the run parameters the engine takes beyond delta (sigma, node_delta, target_on)
HARNESS_PARAMS = [name for name in ("sigma", "node_delta", "target_on") if name in ENGINE.signature.members]
WB = geo.weight_bits


def new_bench(dut, seed: object) -> Bench:
    """A :class:`Bench` whose factor read port reads word 0 until a :class:`FactorWatch`
    drives it: the port holds its last word while disabled, and the word a previous test
    left there (a masked lane's) may be undefined, which the reset check refuses."""
    bench = Bench(dut, seed)
    if geo.factor_bits:
        dut.factor_read__en.value = 1
    return bench


async def load_weights(bench: Bench, weights: list[torch.Tensor]) -> None:
    rows = weight_rows(geo, weights)
    writes = []
    for r, vals in enumerate(rows[: geo.rows]):
        data = 0
        for k, v in enumerate(vals):
            data |= (v & ((1 << WB) - 1)) << (k * WB)
        writes.append({"wload__addr": r, "wload__data": data, "wload__we": (1 << geo.lanes) - 1})
    await bench.write_cycles(writes)


async def load_samples(bench: Bench, samples: torch.Tensor) -> None:
    # at the accelerator's stride (docs/protocol.md, SAMPLES): a first layer that splits its
    # inputs reads them in windows aligned to the sample's start
    writes = [{"sload__addr": n * geo.sample_stride + j, "sload__data": int(v) & 0xFF, "sload__we": 1}
              for n, sample in enumerate(samples.tolist()) for j, v in enumerate(sample)]
    await bench.write_cycles(writes)


def random_weights(rng: random.Random, kind: str = "random") -> list[torch.Tensor]:
    lo, hi = -(1 << (WB - 1)), (1 << (WB - 1)) - 1
    out = []
    for lay in geo.layers:
        shape = (lay.n_out, lay.cols)
        if kind == "min":
            w = torch.full(shape, lo)
        elif kind == "max":
            w = torch.full(shape, hi)
        elif kind == "small":  # realistic He-like magnitudes: activations stay in range
            w = torch.tensor([[rng.randint(-40, 40) << (WB - 8) | rng.randrange(1 << (WB - 8))
                               for _ in range(shape[1])] for _ in range(shape[0])])
        else:
            w = torch.tensor([[rng.randint(lo, hi) for _ in range(shape[1])]
                              for _ in range(shape[0])])
        out.append(w.to(torch.int64))
    return out


class SignWatch:
    """Records the engine's sign-memory writes as ``(bank, row, bits)`` (a bench sink)."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.received: list[tuple[int, int, int]] = []

    def drive(self) -> None:
        pass

    def sample(self) -> None:
        d = self.dut
        if int(d.signs__en.value):
            self.received.append((int(d.signs__bank.value), int(d.signs__row.value),
                                  int(d.signs__data.value)))


#: ALR noise scale and MGD node amplitude of the injected layers (the largest allowed),
#: the one-hot target of target projection (the largest: errors reach -255)
PARAMS = {"sigma": 4095, "node_delta": 1 << 20, "target_on": 127}
TP = geo.projection
#: factors that ``rule.dead_zone`` zeroed so far (a dead-zone configuration must hit some)
DEAD_ZONE_HITS = [0]


class FactorWatch:
    """Reads the factor memory through ``factor_read`` (a bench sink): when the last result
    of a pass is taken, every word the pass wrote (its bank, every layer's groups) is read,
    one a cycle, before any later pass can write that bank again."""

    def __init__(self, dut, res, passes: list[dict]) -> None:
        self.dut, self.res, self.passes = dut, res, passes
        self.packer = Packer(ENGINE.factor_layout)
        self.seen = 0  # results looked at
        self.queue: list[tuple[int, int, int, int]] = []  # (pass, layer, group, address)
        self.cur = self.prev = None
        self.words: dict[tuple[int, int, int], list[int]] = {}

    def drive(self) -> None:
        self.cur = self.queue.pop(0) if self.queue else None
        if self.cur is not None:
            self.dut.factor_read__addr.value = self.cur[3]
        self.dut.factor_read__en.value = int(self.cur is not None)

    def sample(self) -> None:
        if self.prev is not None:  # read data: the address presented in the previous cycle
            n, li, g, _ = self.prev
            self.words[(n, li, g)] = self.packer.unpack(self.dut.factor_read__data.value.to_unsigned())
        self.prev = self.cur
        for got in self.res.received[self.seen:]:
            if got["last"]:
                n = got["tag"]
                bank = pass_bank(n, self.passes[n])
                self.queue += [(n, lay.index, g, bank << geo.act_bank_bits | (lay.act_base + g))
                               for lay in geo.layers for g in range(lay.groups)]
        self.seen = len(self.res.received)

    @property
    def idle(self) -> bool:
        return not self.queue and self.cur is None and self.prev is None


def pass_bank(n: int, p: dict) -> int:
    """The activation (and factor) bank of pass ``n``: as the sequencer picks them, perturbed
    passes in banks 2 and 3, baseline passes in 0 and 1."""
    return 2 * p["perturb"] + n % 2


def golden_factors(p: dict, outs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """The factor of every neuron of the layers whose factors the correlation reads, per
    layer (docs/numerics.md §6; hdl/forward.py ``ForwardEngine._factors``): target
    projection the gated error ``g`` (every pass, every layer); a perturbed pass the
    (negative, zero) bits of ``sign(a * n)`` (ALR) or the bit ``a * s = -1`` (MGD node)."""
    out = {}
    if TP:
        for li, lay in enumerate(geo.layers):
            q, y = outs[li]
            if li == geo.n_layers - 1:  # the delta rule
                out[li] = y - u.one_hot_target(torch.tensor(p["label"]), lay.n_out, PARAMS["target_on"])
                continue
            index = lay.projection_offset + p["label"] * lay.n_out + torch.arange(lay.n_out)
            tl = u.projection_value(u.draw(torch.tensor(p["key"]), index))
            e = u.projection_error(lay.rule.value, y, tl, cfg.rule.dead_zone)
            out[li] = u.activation_gate(q, e, lay.activation)
            # neurons whose factor the dead zone zeroed (the plain sign would have moved them)
            plain = u.activation_gate(q, u.projection_error(lay.rule.value, y, tl), lay.activation)
            DEAD_ZONE_HITS[0] += int((plain != out[li]).sum())
        return out
    if not p["perturb"]:
        return out
    a = -1 if p["negate"] else 1
    for li in ENGINE.inject_layers:
        lay = geo.layers[li]
        word = u.draw(torch.tensor(p["node_key"]), lay.neuron_offset + torch.arange(lay.n_out))
        an = a * (u.gaussian_noise(word) if lay.rule == Rule.ALR else u.perturbation_sign(word))
        bits = (an < 0).to(torch.int64) | ((an == 0).to(torch.int64) << 1)
        out[li] = bits & ((1 << geo.factor_bits) - 1)
    return out


def injections_of(p: dict) -> dict[int, torch.Tensor]:
    """What each injected layer's neurons get in a perturbed pass (docs/numerics.md §5)."""
    out = {}
    a = -1 if p["negate"] else 1
    for li in ENGINE.inject_layers:
        lay = geo.layers[li]
        word = u.draw(torch.tensor(p["node_key"]), lay.neuron_offset + torch.arange(lay.n_out))
        if lay.rule.value == "alr":
            out[li] = PARAMS["sigma"] * a * u.gaussian_noise(word)
        else:
            out[li] = PARAMS["node_delta"] * a * u.perturbation_sign(word)
    return out


async def run_passes(bench: Bench, weights: list[torch.Tensor], samples: torch.Tensor,
                     passes: list[dict], idle: float, backpressure: float, tag: str) -> None:
    """Send the passes back to back; check every group result of every layer, the sign
    writes, and pass keys asked for on the way (they borrow lane 0's hash pipe)."""
    cmd = bench.source("cmd", ENGINE.cmd_layout, idle)
    key_req = bench.source("key_req", 32, idle)
    keys = bench.sink("key", 32, backpressure)
    seed = random.Random(tag + "seed").getrandbits(32)
    bench.dut.seed.value = seed
    key_words = []
    res = bench.sink("result", ENGINE.result_layout, backpressure)
    signs = SignWatch(bench.dut)
    bench.sinks.append(signs)
    rng = random.Random(tag)
    expected = []
    expected_signs = []
    factors = FactorWatch(bench.dut, res, passes) if geo.factor_bits else None
    if factors is not None:
        bench.sinks.append(factors)
    expected_factors = []
    for n, p in enumerate(passes):
        cmd.send({"perturb": p["perturb"], "negate": p["negate"], "bank": pass_bank(n, p),
                  "key": p["key"], "node_key": p["node_key"], "sign_bank": n % 2,
                  "sample_base": p["sample"] * geo.sample_stride, "label": p.get("label", 0), "tag": n})
        if p["perturb"]:
            expected_signs += [(n, *w) for w in sign_writes(cfg, geo, p["key"], n % 2)]
        for _ in range(2):
            key_words.append(rng.getrandbits(32))
            key_req.send(key_words[-1])
        injections = injections_of(p) if p["perturb"] else {}
        outs = pass_outputs(cfg, weights, samples[p["sample"]], perturb=bool(p["perturb"]),
                            key=p["key"], negate=bool(p["negate"]), delta=p["delta"],
                            injections=injections)
        for li, lay in enumerate(geo.layers):
            for g in range(lay.groups):
                expected.append((n, li, g, outs[li]))
        expected_factors.append(golden_factors(p, outs))
    bench.dut.delta.value = passes[0]["delta"]
    for name, value in PARAMS.items():
        if name in HARNESS_PARAMS:
            getattr(bench.dut, name).value = value
    await bench.run(lambda: len(res.received) >= len(expected) and len(keys.received) == len(key_words)
                    and (factors is None or factors.idle),
                    max_cycles=40 * sum(lay.rows for lay in geo.layers) * len(passes) + 1000,
                    what=f"{tag}: the passes")
    bench.sources.remove(cmd)
    bench.sinks.remove(res)
    bench.sinks.remove(signs)
    bench.sources.remove(key_req)
    bench.sinks.remove(keys)
    if factors is not None:
        bench.sinks.remove(factors)
        check_factors(factors.words, expected_factors, passes, tag)
    for word, got in zip(key_words, keys.received, strict=True):
        gold = int(u.pass_key(seed, word & 3, word >> 2))
        assert got == gold, (f"forward engine pass key differs: {tag}: seed {seed:#x} stream "
                             f"{word & 3} event {word >> 2:#x}: rtl {got:#x} golden {gold:#x}")
    assert len(signs.received) == len(expected_signs), \
        f"{tag}: {len(signs.received)} sign rows written, golden {len(expected_signs)}"
    for got, (n, bank, row, bits, live) in zip(signs.received, expected_signs, strict=True):
        if got[:2] != (bank, row) or got[2] & live != bits:
            lanes = [k for k in range(geo.lanes) if ((got[2] ^ bits) & live) >> k & 1]
            layer = next(lay.index for lay in geo.layers if row < lay.row_base + lay.rows)
            raise AssertionError(
                f"forward engine signs differ: {tag}: pass {n} row {row} (layer {layer}): "
                f"rtl (bank, row, bits) {got} golden {(bank, row, bits)}, lanes {lanes}")
    for got, (n, li, g, (q, y)) in zip(res.received, expected, strict=True):
        lay = geo.layers[li]
        where = f"{tag}: pass {n} ({passes[n]}) rule {lay.rule.value} layer {li} group {g}"
        assert got["tag"] == n and got["layer"] == li and got["group"] == g, \
            f"{where}: result order: got tag {got['tag']} layer {got['layer']} group {got['group']}"
        count = lay.neurons_in(g)
        assert got["mask"] == (1 << count) - 1, f"{where}: mask {got['mask']:b}"
        assert got["last"] == int(li == geo.n_layers - 1 and g == lay.groups - 1), f"{where}: last"
        for k in range(count):
            i = g * lay.per_group + k
            assert got["q"][k] == int(q[i]), \
                f"forward q differ: {where} neuron {i}: rtl {got['q'][k]} golden {int(q[i])}"
            assert got["y"][k] == int(y[i]), \
                f"forward y differ: {where} neuron {i}: rtl {got['y'][k]} golden {int(y[i])}"


def check_factors(words: dict, expected: list[dict[int, torch.Tensor]], passes: list[dict],
                  tag: str) -> None:
    """The factor words read back against golden, named by pass, rule, layer and neuron."""
    for n, gold in enumerate(expected):
        for li, values in gold.items():
            lay = geo.layers[li]
            for i in range(lay.n_out):
                g, k = divmod(i, geo.lanes)
                assert (n, li, g) in words, f"{tag}: pass {n}: factor word of layer {li} group {g} not read"
                got = words[(n, li, g)][k]
                assert got == int(values[i]), (
                    f"forward engine factors differ: {tag}: pass {n} ({passes[n]}) rule "
                    f"{lay.rule.value}{' (output: delta rule)' if TP and li == geo.n_layers - 1 else ''} "
                    f"layer {li} neuron {i}: rtl {got} golden {int(values[i])}")


ALR_LAYERS = [li for li in ENGINE.inject_layers if geo.layers[li].rule == Rule.ALR]


def zero_noise_key(rng: random.Random) -> int:
    """A stream-1 key under which a neuron of the first ALR layer draws the noise ``n = 0``
    (its injection is 0 and its factor has the zero bit: the sign of zero)."""
    lay = geo.layers[ALR_LAYERS[0]]
    index = lay.neuron_offset + torch.arange(lay.n_out)
    while True:
        keys = torch.tensor([rng.getrandbits(32) for _ in range(4096)])
        hit = (u.gaussian_noise(u.draw(keys[:, None], index[None])) == 0).any(1).nonzero()
        if len(hit):
            return int(keys[int(hit[0, 0])])


def labels(rng: random.Random, count: int) -> list[int]:
    """Labels for ``count`` passes: both ends of the class range, then random."""
    return [[0, geo.classes - 1][m] if m < 2 else rng.randrange(geo.classes) for m in range(count)]


@cocotb.test()
@cocotb.parametrize(traffic=[(0.0, 0.0), (0.3, 0.4)])
async def random_passes(dut, traffic: tuple[float, float]) -> None:
    """Random weights and samples; baseline and perturbed passes back to back."""
    idle, bp = traffic
    bench = new_bench(dut, ("random", traffic))
    await bench.reset()
    rng = random.Random(repr(traffic))
    n_samples = min(4, geo.sample_depth)
    samples = torch.tensor([[rng.randint(0, 127) for _ in range(geo.n_inputs)]
                            for _ in range(n_samples)])
    samples[0, : geo.n_inputs // 2] = 0  # zero inputs
    await load_samples(bench, samples)
    for kind in ("small", "random"):
        weights = random_weights(rng, kind)
        await load_weights(bench, weights)
        delta = rng.choice([1, 2, 127, rng.randint(1, 127)])
        passes = [{"perturb": m % 3 != 0, "negate": rng.randint(0, 1), "key": rng.getrandbits(32),
                   "node_key": rng.getrandbits(32), "sample": rng.randrange(n_samples), "delta": delta,
                   "label": label}
                  for m, label in enumerate(labels(rng, 6))]
        if ALR_LAYERS:  # a perturbed pass in which a neuron draws the noise n = 0
            passes[1]["node_key"] = zero_noise_key(rng)
        await run_passes(bench, weights, samples, passes, idle, bp, f"{kind} weights")
    assert not cfg.rule.dead_zone or DEAD_ZONE_HITS[0] > 0, "no factor fell in rule.dead_zone: widen the test's"


@cocotb.test()
async def extremes(dut) -> None:
    """Saturation at both ends, zero inputs, all -128 weights, the longest accumulation."""
    bench = new_bench(dut, "extremes")
    await bench.reset()
    samples = torch.stack([torch.full((geo.n_inputs,), 127), torch.zeros(geo.n_inputs),
                           torch.full((geo.n_inputs,), 1)])[: geo.sample_depth].to(torch.int64)
    await load_samples(bench, samples)
    rng = random.Random(7)
    for kind in ("min", "max"):
        weights = random_weights(rng, kind)
        await load_weights(bench, weights)
        passes = [{"perturb": p, "negate": neg, "key": rng.getrandbits(32),
                   "node_key": rng.getrandbits(32), "sample": s,
                   "delta": 127, "label": [0, geo.classes - 1, rng.randrange(geo.classes)][neg + p]}
                  for s in range(len(samples)) for p, neg in ((0, 0), (1, 0), (1, 1))]
        await run_passes(bench, weights, samples, passes, 0.0, 0.2, f"all-{kind} weights")


@cocotb.test()
async def pass_keys(dut) -> None:
    """pass_key(seed, stream, e) on the idle engine for extreme and random seeds and events."""
    bench = new_bench(dut, "keys")
    await bench.reset()
    rng = random.Random(5)
    for seed in (0, 0xFFFF_FFFF, rng.getrandbits(32)):
        dut.seed.value = seed
        req = bench.source("key_req", 32, 0.3)
        out = bench.sink("key", 32, 0.3)
        events = [(0, 0), (0xFFFF_FFFF, 3), (0x4000_0000, 1)] + [
            (rng.getrandbits(rng.choice([8, 32])), rng.randrange(3)) for _ in range(12)]
        for e, s in events:
            req.send(((e << 2) | s) & 0xFFFF_FFFF)
        await bench.run(lambda out=out, events=events: len(out.received) == len(events), 5_000,
                        "the keys")
        bench.sources.remove(req)
        bench.sinks.remove(out)
        for (e, s), got in zip(events, out.received, strict=True):
            gold = int(u.pass_key(seed, s, e))
            assert got == gold, f"pass_key differs: seed {seed:#x} stream {s} event {e:#x}: " \
                                f"rtl {got:#x} golden {gold:#x}"
