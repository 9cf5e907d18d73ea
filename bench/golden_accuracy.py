"""Full training runs of every rule on the golden backend: test accuracy, steps, wall time.

    python bench/golden_accuracy.py                      # every digits example
    python bench/golden_accuracy.py examples/fashion-*.yaml --threads 2

Prints a Markdown table (the README's accuracy table comes from here) and
writes each run to ``runs/bench/<name>``.  The integer rules run bit-exact; the
``bp`` row and ``--float`` rows are the float references.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import torch

from perturbo.backend import make_backend, samples_per_step
from perturbo.config import Rule, load_config
from perturbo.data import load_dataset
from perturbo.train import evaluate, train


def run(path: str, float_reference: bool, out_root: Path, steps: int | None) -> dict:
    cfg = load_config(path)
    if steps is not None:
        data = cfg.model_dump(mode="json")
        data["training"]["steps"] = steps
        cfg = type(cfg).model_validate(data)
    splits = load_dataset(cfg)
    backend = make_backend(cfg, "golden", float_reference=float_reference)
    kind = "float" if float_reference or cfg.rule.name == Rule.BP else "integer"
    out = out_root / f"{cfg.name}-{kind}"
    t0 = time.perf_counter()
    result = train(cfg, backend, out, progress=False, overwrite=True, splits=splits,
                   backend_name="golden", float_reference=float_reference)
    wall = time.perf_counter() - t0
    return {
        "name": cfg.name, "rule": cfg.rule.name.value, "kind": kind, "steps": result.step,
        "samples": result.step * samples_per_step(cfg), "val": result.val_accuracy,
        "test": evaluate(cfg, backend, "test", splits=splits), "wall": wall,
        "steps_per_s": result.step / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=sorted(glob.glob("examples/digits-*.yaml")))
    p.add_argument("--float", dest="also_float", action="store_true",
                   help="also train each rule's float reference")
    p.add_argument("--steps", type=int, help="override training.steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.configs:
        for flt in ([False, True] if args.also_float else [False]):
            if flt and load_config(path).rule.name == Rule.BP:
                continue
            row = run(path, flt, args.out, args.steps)
            rows.append(row)
            print(f"{row['name']:28s} {row['kind']:7s} test {row['test']:.3f} val {row['val']:.3f} "
                  f"{row['steps']} steps {row['wall']:.1f} s ({row['steps_per_s']:.0f} steps/s)", flush=True)
    print("\n| config | rule | model | steps | samples | val acc | test acc | wall time | steps/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['rule']} | {r['kind']} | {r['steps']} | {r['samples']} | "
              f"{100 * r['val']:.1f} % | {100 * r['test']:.1f} % | {r['wall']:.0f} s | {r['steps_per_s']:.0f} |")


if __name__ == "__main__":
    main()
