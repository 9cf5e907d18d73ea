"""A whole training run on the Verilator co-simulation, checked bit for bit against the golden model.

    python bench/verilator_vs_golden.py [CONFIG]

Trains CONFIG (default: the README's main job, examples/digits-mgd-weight.yaml) on
the verilated accelerator through the host link, then the same run on the golden
integer model (or reuses the golden run bench/golden_accuracy.py left in
runs/bench/ for the same configuration), and compares the final weights with ``==``.
Prints both test accuracies and wall times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from perturbo.backend import make_backend
from perturbo.config import load_config
from perturbo.data import load_dataset
from perturbo.train import CheckpointError, evaluate, load_checkpoint, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="examples/digits-mgd-weight.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    splits = load_dataset(cfg)

    hw = make_backend(cfg, "verilator")
    t0 = time.perf_counter()
    try:
        train(cfg, hw, args.out / f"{cfg.name}-verilator", overwrite=True, splits=splits, backend_name="verilator")
        hw_wall = time.perf_counter() - t0
        hw_test = evaluate(cfg, hw, "test", splits=splits)
        hw_state = hw.state_dict()
    finally:
        hw.close()

    gold = make_backend(cfg, "golden")
    gold_dir = args.out / f"{cfg.name}-integer"
    gold_wall = None
    try:
        ckpt = load_checkpoint(gold_dir)
        if ckpt.config != cfg or ckpt.trainer.step != cfg.training.steps:
            raise CheckpointError("a different run")
        gold.load_state_dict(ckpt.backend_state)
        gold_wall = ckpt.trainer.elapsed
    except CheckpointError:
        t0 = time.perf_counter()
        train(cfg, gold, gold_dir, overwrite=True, splits=splits, backend_name="golden")
        gold_wall = time.perf_counter() - t0
    gold_test = evaluate(cfg, gold, "test", splits=splits)

    same = all(torch.equal(a, b) for a, b in zip(hw_state["weights"], gold.weights, strict=True))
    print(f"{cfg.name}: {cfg.training.steps} steps")
    print(f"  verilator: test accuracy {hw_test:.4f}, {hw_wall:.0f} s ({cfg.training.steps / hw_wall:.1f} steps/s)")
    print(f"  golden:    test accuracy {gold_test:.4f}, {gold_wall:.0f} s")
    print(f"  final weights bit-identical: {same}; step counters {hw_state['step']} / {gold.step}")
    if not same:
        raise SystemExit("the Verilator run differs from the golden model")


if __name__ == "__main__":
    main()
