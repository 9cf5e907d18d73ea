"""Speed of the accelerator on the Verilator co-simulation, and what it means on a board.

    python bench/cosim_speed.py [CONFIG] [--steps 512] [--fmax-mhz F]

Prints: the co-simulation's cycles per second while training (host link, TCP bridge
and Python driver included), the bare verilated model's cycles per second (idle, no
socket), training steps per second, the cycles per training step and the MAC
utilisation read from the accelerator's counters, and those cycles at a board's
Fmax turned into hardware training steps per second.  ``--fmax-mhz`` defaults to the
Fmax of the latest iCEBreaker build report of this configuration, if there is one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from perturbo.backend import samples_per_step
from perturbo.config import load_config
from perturbo.data import SampleStream, load_dataset
from perturbo.sim.backend import VerilatorBackend
from perturbo.sim.cosim import cache_root

#: the bare 8-lane INT8 MAC array with its memories under Verilator -O3 (shared/TOOLCHAIN.md)
REFERENCE_BARE_CYCLES_PER_S = 3.2e6


def board_fmax(name: str) -> float | None:
    """Fmax (MHz) of the newest cached iCEBreaker build of a configuration named ``name``."""
    reports = sorted((cache_root() / "boards").glob("icebreaker-*/report.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(reports):
        data = json.loads(path.read_text())
        if data.get("config_name") in (None, name):
            fmax = data.get("fmax_mhz")
            if isinstance(fmax, dict):
                fmax = min(fmax.values())
            if fmax:
                return float(fmax)
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
        stream = SampleStream(splits.train.x, splits.train.y, cfg.seed)
        x, y = stream.take(args.steps * n)
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
    rate = c.cycles / wall
    fmax = args.fmax_mhz or board_fmax(cfg.name)
    rows = [
        ("configuration", f"{cfg.name}: {'-'.join(map(str, cfg.network.layers))}, {cfg.hardware.lanes} lanes, "
                          f"{n} samples x {cfg.rule.copies} perturbation(s) per step"),
        ("bare verilated model (idle, no socket)", f"{bare.rate / 1e6:.2f} M cycles/s"),
        ("co-simulation while training", f"{rate / 1e6:.2f} M cycles/s "
                                         f"({rate / bare.rate:.0%} of bare; {rate / REFERENCE_BARE_CYCLES_PER_S:.0%} "
                                         f"of the 3.2 M cycles/s bare 8-lane MAC array)"),
        ("training steps per second (co-sim)", f"{args.steps / wall:.1f} ({args.steps} steps in {wall:.1f} s)"),
        ("cycles per training step (counters)", f"{c.cycles / c.steps:.0f}"),
        ("cycles per sample", f"{c.cycles / (c.steps * n):.0f}"),
        ("MAC utilisation while busy", f"{c.mac_utilisation:.1%}"),
        ("stall cycles", f"{c.stalls}"),
        ("inference, test split (co-sim)", f"{len(splits.test.y) / infer_wall:.0f} samples/s"),
    ]
    if fmax:
        rows.append((f"at {fmax:.1f} MHz (board Fmax)", f"{fmax * 1e6 / (c.cycles / c.steps):.0f} training steps/s, "
                                                     f"{fmax * 1e6 / (c.cycles / c.steps) * n:.0f} samples/s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
