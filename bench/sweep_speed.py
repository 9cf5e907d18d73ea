"""Speed-up of ``perturbo sweep`` on Ray against the same trials run one after another.

    python bench/sweep_speed.py                      # 4 digits mgd-node trials of 10 000 steps, 2 CPUs
    python bench/sweep_speed.py --trials 6 --steps 5000 --cpus 2

Both halves run the same golden trials (the configurations of one grid over
``seed``) single-threaded: first one after another in this process with the
ordinary trainer, then as a sweep on a new local Ray instance with one CPU per
trial.  The Ray wall time includes starting Ray and every trial's worker;
the trials' validation accuracies must agree exactly (same runs).  Prints one
Markdown table row.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from perturbo.backend import make_backend
from perturbo.data import load_dataset
from perturbo.sweep import WORKER_NICENESS_ENV, check_sweep, run_sweep
from perturbo.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/digits-mgd-node.yaml")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="sweep-speed-"))
    sweep = check_sweep({"name": "speed", "base": str(Path(args.config).resolve()), "steps": args.steps,
                         "eval_every": args.steps // 4, "space": {"seed": {"grid": list(range(1, args.trials + 1))}},
                         "cpus_per_trial": 1}, work / "speed.yaml")

    t0 = time.perf_counter()
    seq = {}
    for seed in range(1, args.trials + 1):
        cfg = sweep.trial_config({"seed": seed})
        backend = make_backend(cfg, "golden")
        result = train(cfg, backend, work / f"seq-{seed}", progress=False, overwrite=True,
                       splits=load_dataset(cfg), backend_name="golden")
        seq[seed] = result.val_accuracy
    t_seq = time.perf_counter() - t0
    print(f"one after another: {t_seq:.1f} s", flush=True)

    import ray

    os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # trials at this process's niceness, as the first half
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    t_init = time.perf_counter() - t0
    result = run_sweep(sweep, work / "ray", overwrite=True)
    t_ray = time.perf_counter() - t0
    ray.shutdown()
    par = {r["params"]["seed"]: r["val_accuracy"] for r in result.trials}
    same = par == seq
    load = os.getloadavg()
    print(f"Ray ({args.cpus} CPUs): {t_ray:.1f} s, of which {t_init:.1f} s starting Ray; same accuracies: {same}")
    print("| trials | steps | one after another | Ray sweep | speed-up | Ray start | load avg (1/5/15 min) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(f"| {args.trials} x {Path(args.config).stem} | {args.steps} | {t_seq:.0f} s | {t_ray:.0f} s | "
          f"**{t_seq / t_ray:.2f}x** | {t_init:.0f} s | {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} |")
    if not same:
        raise SystemExit(f"the sweep's trials differ from the sequential runs: {par} vs {seq}")


if __name__ == "__main__":
    main()
