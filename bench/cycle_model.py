"""The cycle model (``perturbo estimate``) beside the accelerator's counters, as a table.

    python bench/cycle_model.py [CONFIG ...] [--steps 3]

For each configuration (default: every shipped example the accelerator trains), runs
``--steps`` one-step ``TRAIN`` commands, a ``TRAIN`` of four steps and one of eight
(where the build has the loss record and the buffer holds them) and an ``INFER`` on the
Verilator co-simulation (built once per configuration, cached) and prints, per rule, the
predicted and counted ``CYCLES`` of a one-step command (the last, warm, one), of a step
within a run (the eight-step run's cycles less the four-step run's, over four: the run
start and the last step's tail cancel) and of an inference sample, the counted MAC
utilisation (``MAC_BUSY / CYCLES``) of both, and the largest error over every command.  The Fashion-MNIST
models take several minutes each to build.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from perturbo.config import load_config
from perturbo.estimate import compare_with_counters, estimate
from perturbo.hdl.accelerator import SUPPORTED_RULES
from perturbo.sim.backend import VerilatorBackend

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", type=Path)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    paths = args.configs or sorted(EXAMPLES.glob("*.yaml"))
    print("| example | rule | lanes | one-step TRAIN cycles predicted | counted | MAC util. | "
          "cycles/step within a run predicted | counted | MAC util. | cycles/inference sample predicted "
          "| counted | largest error |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in paths:
        cfg = load_config(path)
        if any(r not in SUPPORTED_RULES for r in cfg.layer_rules()):
            continue  # a float baseline
        hw = VerilatorBackend(cfg)
        try:
            rows = compare_with_counters(cfg, hw, args.steps, runs=(4, 8))
        finally:
            hw.close()
        step = [r for r in rows if r.what.startswith("step")][-1]
        run = [r for r in rows if r.what.startswith("run")]
        infer = rows[-1]
        count = int(infer.what.split()[1])
        rules = ", ".join(dict.fromkeys(r.value for r in cfg.layer_rules()))
        worst = max(rows, key=lambda r: abs(r.error))
        if len(run) < 2:
            in_run = "– | – | –"
        else:  # the marginal step: run start and the last tail cancel
            short, long = run
            n = int(long.what.split()[2]) - int(short.what.split()[2])
            cycles = long.counted_cycles - short.counted_cycles
            in_run = (f"{(long.predicted_cycles - short.predicted_cycles) / n:.1f} | {cycles / n:.1f} "
                      f"| {(long.counted_mac_busy - short.counted_mac_busy) / cycles:.1%}")
        print(f"| {cfg.name} | {rules} | {estimate(cfg).lanes} | {step.predicted_cycles} | {step.counted_cycles} "
              f"| {step.counted_mac_busy / step.counted_cycles:.1%} | {in_run} "
              f"| {infer.predicted_cycles / count:.1f} | {infer.counted_cycles / count:.1f} "
              f"| {worst.error:+.2%} ({worst.what}) |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
