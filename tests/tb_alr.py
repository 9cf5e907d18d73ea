"""cocotb testbench of hdl/alr.py (AlrSignTerms), checked == against golden.units.alr_sign_terms.

The stimulus is shaped like the ALR correlation phase of a small network: for every
noisy copy, every layer, every group of ``lanes`` neurons, one pass over the layer's
inputs (bias input last).  The noise comes from the real random source (stream 1,
antithetic pairs share a draw), with edges forced in: zero noise, +-1, +-510, dC at
both ends of 32 bits, x = 0, -128 and 127.
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
    dc_value,
    int8_edge,
    rng_for,
    start,
)

from perturbo.config import Overflow
from perturbo.golden import units as u
from perturbo.hdl.alr import AlrSignTerms
from perturbo.hdl.frontend import x_layout

#: Cycles from an input taken to its terms valid.
LATENCY = 1
UNIT = "alr_sign_terms"


class Workload:
    """Noisy copies of a small network and the passes the sign units see."""

    def __init__(self, rng: random.Random, lanes: int, layers: list[int], copies: int,
                 events: list[dict[str, Any]] | None = None) -> None:
        self.layers = layers
        self.seed = rng.getrandbits(32)
        n_layers = len(layers) - 1
        offsets = [sum(layers[1:li + 1]) for li in range(n_layers)]
        self.events = events if events is not None else []
        if events is None:
            for e in range(copies):
                pair = e >> 1  # antithetic pairs share a draw
                key = u.pass_key(self.seed, u.STREAM_NODE, 1000 + pair)
                ev: dict[str, Any] = {"dc": dc_value(rng), "a": 1 - 2 * (e & 1),
                                     "noise": [], "x": []}
                for li in range(n_layers):
                    idx = offsets[li] + torch.arange(layers[li + 1])
                    noise = u.gaussian_noise(u.draw(key, idx)).tolist()
                    for i in range(len(noise)):
                        if rng.random() < 0.1:
                            noise[i] = rng.choice([0, 1, -1, 510, -510])
                    ev["noise"].append(noise)
                    ev["x"].append([int8_edge(rng) for _ in range(layers[li])] + [u.BIAS_INPUT])
                self.events.append(ev)
        self.passes: list[Pass] = []
        for e, ev in enumerate(self.events):
            for li in range(n_layers):
                for base in range(0, layers[li + 1], lanes):
                    noise = ev["noise"][li][base:base + lanes]
                    ctx = {"dc": ev["dc"], "antithetic": int(ev["a"] < 0), "noise": noise}
                    self.passes.append(Pass(ctx, ev["x"][li], li, e, base))

    def golden(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(terms, sign products)`` of ``layer``, ``(E, n_out, n_in + 1)``, from golden.units."""
        dc = torch.tensor([ev["dc"] for ev in self.events], dtype=torch.int64)
        a = torch.tensor([ev["a"] for ev in self.events], dtype=torch.int64)
        noise = torch.tensor([ev["noise"][layer] for ev in self.events], dtype=torch.int64)
        x = torch.tensor([ev["x"][layer] for ev in self.events], dtype=torch.int64)
        terms = u.alr_sign_terms(dc, a[:, None] * noise, x)
        signs = u.sign(a[:, None] * noise)[:, :, None] * u.sign(x)[:, None, :]
        return terms, signs


async def run_and_check(dut: Any, work: Workload, *, idle: float, backpressure: float,
                        rng: random.Random) -> StreamBench:
    cfg = config()
    lanes, grad_bits, overflow = cfg["lanes"], cfg["grad_bits"], Overflow(cfg["overflow"])
    unit = AlrSignTerms(lanes=lanes, grad_bits=grad_bits, overflow=overflow)
    bench = StreamBench(dut, Packer(unit.ctx_layout), Packer(x_layout()), Packer(unit.terms_layout),
                        idle=idle, backpressure=backpressure, rng=rng)
    beats = await bench.run(work.passes, UNIT)

    n_layers = len(work.layers) - 1
    golden = [work.golden(li) for li in range(n_layers)]
    rtl = [torch.zeros_like(golden[li][0]) for li in range(n_layers)]
    narrowed = 0
    for p, pb in zip(work.passes, beats, strict=True):
        check_last(UNIT, p, pb)
        terms, signs = golden[p.layer]
        n_out = work.layers[p.layer + 1]
        ev = work.events[p.event]
        for j, beat in enumerate(pb):
            for k in range(min(lanes, n_out - p.base)):
                i = p.base + k
                want = int(u.narrow(terms[p.event, i, j], unit.term_bits, overflow))
                where = (f"{UNIT}: layer {p.layer}, copy {p.event} (a={ev['a']:+d}), neuron i={i} "
                         f"(lane {k}), input j={j}")
                data = f"dC={ev['dc']}, n_i={ev['noise'][p.layer][i]}, x_j={p.xs[j]}"
                assert beat["sign"][k] == int(signs[p.event, i, j]), (
                    f"{where}: sign product {beat['sign'][k]} != golden "
                    f"{int(signs[p.event, i, j])} ({data})")
                assert beat["term"][k] == want, (
                    f"{where}: term {beat['term'][k]} != golden {want} "
                    f"(exact {int(terms[p.event, i, j])}, {unit.term_bits} bits; {data})")
                rtl[p.layer][p.event, i, j] = beat["term"][k]
                narrowed += want != int(terms[p.event, i, j])
    # The narrowed terms must leave the correlation lane's G exactly as the exact ones do.
    lo, hi = -(1 << (grad_bits - 1)), (1 << (grad_bits - 1)) - 1
    for li in range(n_layers):
        for g0 in (0, lo, hi, rng.randint(lo, hi)):
            g = torch.full(golden[li][0].shape[1:], g0, dtype=torch.int64)
            exact = u.accumulate(g, golden[li][0], grad_bits, overflow)
            ours = u.accumulate(g, rtl[li], grad_bits, overflow)
            assert torch.equal(exact, ours), (
                f"{UNIT}: layer {li}: G from the narrowed terms differs (G0={g0})")
    bench.narrowed = narrowed
    return bench


@cocotb.test()
@cocotb.parametrize(idle=IDLE, backpressure=BACKPRESSURE)
async def random_copies(dut: Any, idle: float, backpressure: float) -> None:
    """Random noisy copies of a random small network, crossed with gaps and backpressure."""
    lanes = config()["lanes"]
    rng = rng_for("random", idle, backpressure)
    await start(dut)
    layers = [rng.randint(3, 12), rng.randint(lanes, 2 * lanes + 1), rng.randint(1, lanes + 2)]
    work = Workload(rng, lanes, layers, copies=rng.randint(48, 64))
    bench = await run_and_check(dut, work, idle=idle, backpressure=backpressure, rng=rng)
    await bench.assert_drained(UNIT)
    beats = sum(len(p.xs) for p in work.passes)
    dut._log.info("%s: %d passes, %d beats, %d cycles", UNIT, len(work.passes), beats, bench.cycles)
    if idle == 0 and backpressure == 0:  # one input per cycle, also across passes
        assert bench.cycles <= beats + LATENCY + 2, (
            f"{UNIT}: {beats} inputs took {bench.cycles} cycles: bubbles between passes")


@cocotb.test()
async def edges(dut: Any) -> None:
    """dC at both ends of 32 bits, zero noise and zero inputs, all sign combinations."""
    lanes = config()["lanes"]
    rng = rng_for("edges")
    await start(dut)
    n_out = lanes + 1
    noise_pattern = [0, 1, -1, 510, -510, 7, -7, 0, 200]
    x = [0, 1, -1, 127, -128, 0, 55, -3, u.BIAS_INPUT]
    events = []
    for dc in (-(1 << 31), (1 << 31) - 1, 0, 1, -1, -(1 << 31) + 1):
        for a in (1, -1):
            noise = [noise_pattern[(i + len(events)) % len(noise_pattern)] for i in range(n_out)]
            events.append({"dc": dc, "a": a, "noise": [noise], "x": [x]})
    work = Workload(rng, lanes, [len(x) - 1, n_out], copies=0, events=events)
    for idle, bp in ((0.0, 0.0), (0.3, 0.5)):
        bench = await run_and_check(dut, work, idle=idle, backpressure=bp, rng=rng)
        await bench.assert_drained(UNIT)
        if config()["grad_bits"] + 1 < 33:  # the narrowing must have been exercised
            assert bench.narrowed > 0, f"{UNIT}: no term was narrowed by the edge cases"
