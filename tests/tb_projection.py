"""cocotb testbench of hdl/projection.py (TargetProjectionTerms).

Checked == against golden.units: ``pass_key``/``draw``/``projection_value`` (the local
target ``tl = B_l[label, i]``), ``projection_error``, ``activation_gate`` and
``target_projection_terms``; the projection indices come from
``golden.integer.layer_layouts`` and ``tl`` is also checked against
``golden.integer.projection_matrices``.  The stimulus is shaped like the
target-projection correlation phase of a small network (per sample, per layer, per
group of ``lanes`` neurons, one pass over the layer's inputs), with every error kind
crossed with every gate, q at the gate boundaries, y - tl at +-255, and seed changes
that must invalidate the front end's cached projection key.
"""

from __future__ import annotations

import random
from typing import Any

import cocotb
import torch
from frontend_tb import (
    BACKPRESSURE,
    IDLE,
    Packer,
    Pass,
    StreamBench,
    check_last,
    config,
    int8_edge,
    rng_for,
    start,
)

from perturbo.config import Activation, Config
from perturbo.golden import integer
from perturbo.golden import units as u
from perturbo.hdl.frontend import x_layout
from perturbo.hdl.projection import ErrorKind, Gate, TargetProjectionTerms
from perturbo.hdl.random import MIX32_LATENCY

UNIT = "target_projection_terms"

RULE = {ErrorKind.DRTP: "drtp", ErrorKind.TPSGD_L1: "tpsgd-l1", ErrorKind.TPSGD_L2: "tpsgd-l2"}
ACTIVATION = {Gate.NONE: None, Gate.RELU: Activation.RELU, Gate.LEAKY_RELU: Activation.LEAKY_RELU,
              Gate.HARD_SIGMOID: Activation.HARD_SIGMOID}
Q_EDGES = [-128, -65, -64, -63, -1, 0, 1, 61, 62, 63, 64, 127]


def unit_for_config() -> TargetProjectionTerms:
    cfg = config()
    return TargetProjectionTerms(lanes=cfg["lanes"], classes=cfg["classes"],
                                 max_width=cfg["max_width"], grad_bits=cfg["grad_bits"],
                                 overflow=cfg["overflow"])


class Workload:
    """Samples of a small network and the passes the projection front end sees.

    Parameters
    ----------
    rng
        The test's generator.
    layers
        Widths from the input to the output (the last one is ``classes``).
    samples
        Number of samples.
    seed, target_on
        The values of the front end's ``seed`` and ``target_on`` ports.
    offset_bias
        Added to every projection offset (mod 2^32) to reach indices that wrap.
    extreme_y
        Make every y the INT8 end opposite to its tl (|y - tl| up to 255).
    """

    def __init__(self, rng: random.Random, lanes: int, layers: list[int], samples: int, *,
                 seed: int, target_on: int, offset_bias: int = 0,
                 extreme_y: bool = False) -> None:
        self.layers, self.seed, self.target_on = layers, seed, target_on
        classes = layers[-1]
        cfg = Config(seed=seed, network={"layers": layers})
        layouts = integer.layer_layouts(cfg)
        matrices = integer.projection_matrices(cfg) if offset_bias == 0 else None
        key = u.pass_key(seed, u.STREAM_PROJECTION, 0)
        n_layers = len(layers) - 1
        self.passes: list[Pass] = []
        for s in range(samples):
            label = rng.randrange(classes)
            for li, lay in enumerate(layouts):
                output = li == n_layers - 1
                if output and rng.random() < 0.7:
                    kind, gate = ErrorKind.DELTA, Gate.NONE
                else:
                    kind, gate = rng.choice(list(ErrorKind)), rng.choice(list(Gate))
                q = [rng.choice(Q_EDGES) if rng.random() < 0.3 else int8_edge(rng)
                     for _ in range(lay.n_out)]
                qt = torch.tensor(q, dtype=torch.int64)
                offset = (lay.projection_offset + offset_bias) & 0xFFFF_FFFF
                idx = offset + label * lay.n_out + torch.arange(lay.n_out)
                tl = u.projection_value(u.draw(key, idx))
                y = u.activation(qt, ACTIVATION[gate]).tolist()
                y = [int8_edge(rng) if rng.random() < 0.3 else v for v in y]
                if extreme_y:
                    y = [127 if v < 0 else -128 for v in tl.tolist()]
                x = [int8_edge(rng) for _ in range(lay.n_in)] + [u.BIAS_INPUT]
                if matrices is not None and matrices[li] is not None:
                    assert torch.equal(tl, matrices[li][label]), "testbench: projection index"
                yt = torch.tensor(y, dtype=torch.int64)
                if kind == ErrorKind.DELTA:
                    t = (torch.arange(lay.n_out) == label).to(torch.int64) * target_on
                    e = yt - t
                else:
                    e = u.projection_error(RULE[kind], yt, tl)
                g = u.activation_gate(qt, e, ACTIVATION[gate])
                xt = torch.tensor(x, dtype=torch.int64)
                terms = u.target_projection_terms(g[None], xt[None])[0]
                for base in range(0, lay.n_out, lanes):
                    ctx = {"error": kind.value, "gate": gate.value, "label": label, "base": base,
                           "n_out": lay.n_out, "offset": offset,
                           "y": y[base:base + lanes], "q": q[base:base + lanes]}
                    info = {"label": label, "kind": kind, "gate": gate, "tl": tl, "y": y, "q": q,
                            "e": e, "g": g, "terms": terms}
                    self.passes.append(Pass(ctx, x, li, s, base, info))


async def run_and_check(dut: Any, work: Workload, *, idle: float, backpressure: float,
                        rng: random.Random) -> StreamBench:
    unit = unit_for_config()
    dut.seed.value = work.seed
    dut.target_on.value = work.target_on
    bench = StreamBench(dut, Packer(unit.ctx_layout), Packer(x_layout()), Packer(unit.terms_layout),
                        idle=idle, backpressure=backpressure, rng=rng)
    beats = await bench.run(work.passes, UNIT)
    for p, pb in zip(work.passes, beats, strict=True):
        check_last(UNIT, p, pb)
        n_out = work.layers[p.layer + 1]
        info = p.info
        for j, beat in enumerate(pb):
            for k in range(min(unit.lanes, n_out - p.base)):
                i = p.base + k
                want = int(info["terms"][i, j])
                assert beat["term"][k] == want, (
                    f"{UNIT}: layer {p.layer}, sample {p.event} (label {info['label']}, "
                    f"error {info['kind'].name}, gate {info['gate'].name}), neuron i={i} "
                    f"(lane {k}), input j={j}: term {beat['term'][k]} != golden {want} "
                    f"(tl={int(info['tl'][i])}, y={info['y'][i]}, q={info['q'][i]}, "
                    f"e={int(info['e'][i])}, g={int(info['g'][i])}, x_j={p.xs[j]}, "
                    f"seed={work.seed:#x}, target_on={work.target_on})")
    return bench


def random_layers(rng: random.Random) -> list[int]:
    cfg = config()
    lanes, width, classes = cfg["lanes"], cfg["max_width"], cfg["classes"]
    return [rng.randint(3, 10), rng.randint(lanes, min(width, 2 * lanes + 1)),
            rng.randint(1, min(width, lanes + 2)), classes]


@cocotb.test()
@cocotb.parametrize(idle=IDLE, backpressure=BACKPRESSURE)
async def random_samples(dut: Any, idle: float, backpressure: float) -> None:
    """Random samples of a random network, every error kind x gate, with gaps and backpressure."""
    lanes = config()["lanes"]
    rng = rng_for("random", idle, backpressure)
    await start(dut)
    work = Workload(rng, lanes, random_layers(rng), samples=rng.randint(10, 14),
                    seed=rng.getrandbits(32), target_on=rng.choice([96, 127, 1, rng.randint(1, 127)]))
    bench = await run_and_check(dut, work, idle=idle, backpressure=backpressure, rng=rng)
    await bench.assert_drained(UNIT)
    dut._log.info("%s: %d passes, %d cycles", UNIT, len(work.passes), bench.cycles)


@cocotb.test()
async def edges(dut: Any) -> None:
    """Seed changes (the cached key), wrapping projection indices, y - tl at +-255, short passes."""
    cfg = config()
    lanes = cfg["lanes"]
    rng = rng_for("edges")
    await start(dut)
    seeds = [rng.getrandbits(32), 0, 0xFFFF_FFFF]
    phases = [(seeds[0], 96, 0), (seeds[1], 127, 0), (seeds[0], 1, 0xFFFF_FFF0),
              (seeds[2], 64, 0), (seeds[2], 64, 0)]
    for n, (seed, target_on, bias) in enumerate(phases):
        # Short passes (2 inputs) stress the hand-over between setup and stream stage.
        layers = [1 if n % 2 else 4, rng.randint(lanes, 2 * lanes + 1), cfg["classes"]]
        work = Workload(rng, lanes, layers, samples=4, seed=seed, target_on=target_on,
                        offset_bias=bias, extreme_y=n >= 3)
        idle, bp = ((0.0, 0.0), (0.3, 0.5))[n % 2]
        bench = await run_and_check(dut, work, idle=idle, backpressure=bp, rng=rng)
        await bench.assert_drained(UNIT)


@cocotb.test()
async def back_to_back(dut: Any) -> None:
    """Passes longer than the setup follow each other without a bubble (setup overlaps)."""
    lanes = config()["lanes"]
    rng = rng_for("back_to_back")
    await start(dut)
    setup = 2 * lanes + 2 * MIX32_LATENCY + 2  # a context's setup, key cached
    first = setup + MIX32_LATENCY + 2  # the first one also computes the key
    layers = [setup + 2, config()["classes"]]  # every pass has setup + 3 inputs
    work = Workload(rng, lanes, layers, samples=6, seed=rng.getrandbits(32), target_on=96)
    bench = await run_and_check(dut, work, idle=0.0, backpressure=0.0, rng=rng)
    await bench.assert_drained(UNIT)
    beats = sum(len(p.xs) for p in work.passes)
    assert bench.cycles <= beats + first + 3, (
        f"{UNIT}: {beats} inputs in passes of >= {setup} took {bench.cycles} cycles: "
        f"the setup does not overlap the previous pass")
