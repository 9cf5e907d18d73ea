"""Speed of the accelerator on the Verilator co-simulation, and what it means on a board.

    python bench/cosim_speed.py [CONFIG] [--steps 512] [--refill stream,batch,step] [--fmax-mhz F]

For each way the host driver feeds the accelerator (``--refill``, :data:`REFILL_MODES`:
``stream`` refills the sample ring while it trains, ``batch`` runs all the steps of a full
sample buffer per command, ``step`` one command per step), one co-simulation session
trains ``--steps`` steps and reports: the fraction of the session's simulated cycles the
accelerator was busy training (its ``CYCLES`` counter, which leaves out waits for samples,
over the harness's own cycle count of the whole session: connection, weights, training),
the co-simulation's cycles per second and the training steps per second.

Beside them, measured in the same run: the bare verilated model's cycles per second (idle,
no socket), and :class:`BareMacArray`, the bare ``lanes``-lane INT8 MAC array with its
weight and activation memories that shared/TOOLCHAIN.md measured at 3.2 M cycles/s (8
lanes), in the same harness: these machines are shared, and their load moves every speed
by a factor of two or more, so only figures taken together are compared.  Then the cycles
per training step and the MAC utilisation from the accelerator's counters, inference
speed, and those cycles at a board's Fmax turned into hardware training steps per second
(``--fmax-mhz`` defaults to the Fmax of a cached build of this very RTL that fits a board,
if there is one).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from perturbo.boards import board_names
from perturbo.boards.build import find_cached
from perturbo.config import Config, load_config
from perturbo.data import SampleStream, load_dataset
from perturbo.hdl.geometry import Geometry
from perturbo.host.accelerator import REFILL_MODES, Counters
from perturbo.sim.backend import COSIM_TOP, VerilatorBackend, cosim_verilog
from perturbo.sim.cosim import RunStats, VerilatorSim
from perturbo.sim.toolchain import ToolchainError
from perturbo.sim.top import harness_verilog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
    text = harness_verilog(BareMacArray(lanes, depth, inputs), "bare_mac_array")
    return VerilatorSim(text, "bare_mac_array").bench(cycles).rate


def board_fmax(cfg: Config) -> tuple[str, float] | None:
    """Board and Fmax (MHz) of a cached build of exactly this RTL (seed 1, the build
    :func:`perturbo.boards.build.find_cached` finds: not another lane count, a build of
    older RTL or one with other hardware keys) that fits, on the first board that has one."""
    for name in board_names():
        try:
            report = find_cached(cfg, name)
        except (ValueError, ToolchainError):  # a board that cannot make the clock or hold
            continue  # the design (PLLError, ConfigError), or whose tools are missing
        if report is not None and report.fits and report.fmax_mhz:
            return name, report.fmax_mhz
    return None


@dataclass(frozen=True)
class Session:
    """One co-simulation session that trained ``steps`` steps (see the module docstring)."""

    refill: str
    steps: int
    wall: float  #: seconds train_steps took
    counters: Counters
    stats: RunStats | None  #: the harness's whole session

    @property
    def busy(self) -> float | None:
        """Busy training cycles over every simulated cycle of the session."""
        return self.counters.cycles / self.stats.cycles if self.stats else None


def train_session(cfg: Config, refill: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> Session:
    """Start a co-simulation, train ``steps`` steps fed the ``refill`` way, stop it."""
    hw = VerilatorBackend(cfg, refill=refill)
    try:
        hw.clear_counters()
        t0 = time.perf_counter()
        hw.train_steps(x, y, steps)
        wall = time.perf_counter() - t0
        counters = hw.counters()
    finally:
        hw.close()
    return Session(refill, steps, wall, counters, hw.sim.stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(EXAMPLES / "digits-mgd-weight.yaml"))
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--refill", default=",".join(REFILL_MODES),
                   help="driver modes to compare, comma-separated (default: all)")
    p.add_argument("--fmax-mhz", type=float)
    args = p.parse_args()
    cfg = load_config(args.config)
    modes = [m for m in args.refill.split(",") if m]
    if not set(modes) <= set(REFILL_MODES):
        p.error(f"--refill takes {', '.join(REFILL_MODES)}")
    if not cfg.hardware.streaming:
        modes = [m for m in modes if m == "step"]  # the only one without the loss record
    splits = load_dataset(cfg)
    n = cfg.rule.samples_per_step
    geo = Geometry(cfg)
    samples = SampleStream(splits.train.x, splits.train.y, cfg.seed)
    x, y = samples.take(args.steps * n)
    t0 = time.perf_counter()
    sim = VerilatorSim(cosim_verilog(cfg), COSIM_TOP)
    sim.build()
    print(f"model built in {time.perf_counter() - t0:.1f} s")
    sessions = []
    for mode in modes:
        sessions.append(train_session(cfg, mode, x, y, args.steps))
        print(f"  {mode}: {sessions[-1].steps / sessions[-1].wall:.1f} steps/s", flush=True)
    bare = sim.bench(5_000_000)
    mac_array = bare_mac_array_rate(geo.lanes, geo.weight_depth, geo.n_inputs, 5_000_000)
    hw = VerilatorBackend(cfg)
    try:
        t0 = time.perf_counter()
        hw.predict(splits.test.x)
        infer_wall = time.perf_counter() - t0
    finally:
        hw.close()
    c = sessions[0].counters
    board = ("--fmax-mhz", args.fmax_mhz) if args.fmax_mhz else board_fmax(cfg)
    rows = [
        ("configuration", f"{cfg.name}: {'-'.join(map(str, cfg.network.layers))}, {cfg.hardware.lanes} lanes, "
                          f"{n} samples x {cfg.rule.copies} perturbation(s) per step, {args.steps} steps"),
        (f"bare {geo.lanes}-lane INT8 MAC array with memories", f"{mac_array / 1e6:.2f} M cycles/s"),
        ("bare verilated model (idle, no socket)", f"{bare.rate / 1e6:.2f} M cycles/s "
                                                   f"({bare.rate / mac_array:.0%} of the MAC array)"),
    ]
    for ses in sessions:
        stats = ses.stats
        rows += [
            (f"[{ses.refill}] busy training", "?" if stats is None else
             f"{ses.busy:.1%} of {stats.cycles / 1e6:.2f} M simulated cycles"),
            (f"[{ses.refill}] co-simulation speed", "?" if stats is None else
             f"{stats.rate / 1e6:.2f} M cycles/s ({stats.rate / bare.rate:.0%} of the bare model, "
             f"{stats.rate / mac_array:.0%} of the bare MAC array)"),
            (f"[{ses.refill}] training steps per second", f"{ses.steps / ses.wall:.1f} "
             f"({ses.steps} steps in {ses.wall:.1f} s; busy cycles {ses.counters.cycles / ses.wall / 1e6:.2f} M/s)"),
        ]
    rows += [
        ("machine load average (1 min, 2 cores)", f"{os.getloadavg()[0]:.1f}"),
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
