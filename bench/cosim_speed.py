"""Speed of the accelerator on the Verilator co-simulation, and what it means on a board.

    python bench/cosim_speed.py [CONFIG] [--steps 512] [--fmax-mhz F]

Prints: the co-simulation's cycles per second (the harness's own count over the whole
session, host link and TCP bridge included), the accelerator's busy cycles per wall
second while training (what is left after the host link has moved the samples and the
Python driver has waited), the bare verilated model's cycles per second (idle, no
socket), training steps per second, the cycles per training step and the MAC
utilisation read from the accelerator's counters, and those cycles at a board's
Fmax turned into hardware training steps per second.  ``--fmax-mhz`` defaults to the
Fmax of the latest build of this configuration that fits a board, if there is one.

For scale, it also builds and times :class:`BareMacArray`, the bare ``lanes``-lane INT8
MAC array with its weight and activation memories that shared/TOOLCHAIN.md measured at
3.2 M cycles/s (8 lanes), in the same harness at the same moment: these machines are
shared, and their load moves every speed by a factor of two or more, so only figures
taken together are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from amaranth.back import verilog
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from perturbo.backend import samples_per_step
from perturbo.config import load_config
from perturbo.data import SampleStream, load_dataset
from perturbo.hdl.geometry import Geometry
from perturbo.sim.backend import VerilatorBackend
from perturbo.sim.cosim import VerilatorSim, cache_root


class BareMacArray(wiring.Component):
    """``lanes`` INT8 x INT8 MAC lanes sweeping their weight memories forever.

    Every cycle each lane reads a weight (``depth`` words) and the shared activation
    (``inputs`` words), multiplies, and accumulates, restarting the accumulator at the
    end of each row; the accumulators are folded onto ``tx.payload`` so that Verilator
    cannot remove them.  The ports are the co-simulation harness's (``rx``, ``tx``).
    """

    def __init__(self, lanes: int, depth: int, inputs: int) -> None:
        self.lanes, self.depth, self.inputs = lanes, depth, inputs
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.acts = acts = Memory(shape=signed(8), depth=self.inputs,
                                          init=[(7 * j) % 255 - 127 for j in range(self.inputs)])
        addr = Signal(range(self.depth))
        col = Signal(range(self.inputs))
        first = Signal()
        m.d.sync += [addr.eq(addr + 1), col.eq(col + 1), first.eq(col == 0)]
        with m.If(addr == self.depth - 1):
            m.d.sync += addr.eq(0)
        with m.If(col == self.inputs - 1):
            m.d.sync += col.eq(0)
        x = acts.read_port()
        m.d.comb += x.addr.eq(col)
        folded = 0
        for k in range(self.lanes):
            w_mem = m.submodules[f"w{k}"] = Memory(
                shape=signed(8), depth=self.depth, init=[(31 * i + 17 * k) % 255 - 127 for i in range(self.depth)])
            w = w_mem.read_port()
            product = Signal(signed(16), name=f"p{k}")
            acc = Signal(signed(32), name=f"acc{k}")
            m.d.comb += w.addr.eq(addr)
            m.d.sync += product.eq(w.data * x.data)
            m.d.sync += acc.eq((acc & ~first.replicate(32)) + product)
            folded = folded ^ acc[:8] ^ acc[24:32]
        m.d.comb += [self.tx.payload.eq(folded), self.tx.valid.eq(0), self.rx.ready.eq(1)]
        return m


def bare_mac_array_rate(lanes: int, depth: int, inputs: int, cycles: int) -> float:
    """Cycles per second of :class:`BareMacArray` in the co-simulation harness (built and cached)."""
    text = verilog.convert(BareMacArray(lanes, depth, inputs), name="bare_mac_array", emit_src=False)
    return VerilatorSim(text, "bare_mac_array").bench(cycles).rate


def board_fmax(name: str) -> tuple[str, float] | None:
    """Board and Fmax (MHz) of the newest cached build of configuration ``name`` that fits."""
    reports = sorted((cache_root() / "boards").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(reports):
        data = json.loads(path.read_text())
        if data.get("config_name") == name and data.get("status") == "ok":
            fmax = data.get("fmax_mhz")
            if isinstance(fmax, dict):
                fmax = min(fmax.values())
            if fmax:
                return str(data.get("board")), float(fmax)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="examples/digits-mgd-weight.yaml")
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--fmax-mhz", type=float)
    args = p.parse_args()
    cfg = load_config(args.config)
    splits = load_dataset(cfg)
    n = samples_per_step(cfg)
    t0 = time.perf_counter()
    hw = VerilatorBackend(cfg)
    print(f"model built/started in {time.perf_counter() - t0:.1f} s")
    try:
        bare = hw.sim.bench(5_000_000)
        geo = Geometry(cfg)
        mac_array = bare_mac_array_rate(geo.lanes, geo.weight_depth, geo.n_inputs, 5_000_000)
        samples = SampleStream(splits.train.x, splits.train.y, cfg.seed)
        x, y = samples.take(args.steps * n)
        hw.clear_counters()
        t0 = time.perf_counter()
        hw.train_steps(x, y, args.steps)
        wall = time.perf_counter() - t0
        c = hw.counters()
        t0 = time.perf_counter()
        hw.predict(splits.test.x)
        infer_wall = time.perf_counter() - t0
    finally:
        hw.close()
    session = hw.sim.stats  # the harness's own clock over the whole session
    busy_rate = c.cycles / wall
    board = ("--fmax-mhz", args.fmax_mhz) if args.fmax_mhz else board_fmax(cfg.name)
    rows = [
        ("configuration", f"{cfg.name}: {'-'.join(map(str, cfg.network.layers))}, {cfg.hardware.lanes} lanes, "
                          f"{n} samples x {cfg.rule.copies} perturbation(s) per step"),
        (f"bare {geo.lanes}-lane INT8 MAC array with memories", f"{mac_array / 1e6:.2f} M cycles/s"),
        ("bare verilated model (idle, no socket)", f"{bare.rate / 1e6:.2f} M cycles/s "
                                                   f"({bare.rate / mac_array:.0%} of the MAC array)"),
        ("co-simulation, every simulated cycle", "?" if session is None else
                                                 f"{session.rate / 1e6:.2f} M cycles/s "
                                                 f"({session.rate / bare.rate:.0%} of the bare model, "
                                                 f"{session.rate / mac_array:.0%} of the bare MAC array; "
                                                 f"harness, whole session)"),
        ("accelerator busy cycles while training", f"{busy_rate / 1e6:.2f} M per second "
                                                   f"({busy_rate / bare.rate:.0%} of the bare model; the "
                                                   f"rest is the host link moving samples and the driver)"),
        ("machine load average (1 min, 2 cores)", f"{os.getloadavg()[0]:.1f}"),
        ("training steps per second (co-sim)", f"{args.steps / wall:.1f} ({args.steps} steps in {wall:.1f} s)"),
        ("cycles per training step (counters)", f"{c.cycles / c.steps:.0f}"),
        ("cycles per sample", f"{c.cycles / (c.steps * n):.0f}"),
        ("MAC utilisation while busy", f"{c.mac_utilisation:.1%}"),
        ("stall cycles", f"{c.stalls}"),
        ("inference, test split (co-sim)", f"{len(splits.test.y) / infer_wall:.0f} samples/s"),
    ]
    if board:
        name, fmax = board
        rows.append((f"at {fmax:.1f} MHz ({name} Fmax)", f"{fmax * 1e6 / (c.cycles / c.steps):.0f} training steps/s, "
                                                     f"{fmax * 1e6 / (c.cycles / c.steps) * n:.0f} samples/s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
