"""Full training runs of every rule on the golden backend: test accuracy, steps, wall time.

    python bench/golden_accuracy.py                      # every digits example, its own seed
    python bench/golden_accuracy.py --seeds 2 3 4 --float  # three training seeds on one split, and float twins
    python bench/golden_accuracy.py examples/fashion-*.yaml --seeds 2 3 4 --threads 1
    python bench/golden_accuracy.py examples/digits-alr.yaml --float --set rule.float_lr=0.001 --split val

Prints a Markdown table (the README's accuracy tables come from here) and
writes each run to ``runs/bench/<name>-<kind>-s<seed>``.  The integer rules run
bit-exact; the ``bp`` row and ``--float`` rows are the float references.

With ``--seeds`` every seed trains on the **same** split: ``data.split_seed`` is
fixed to the configuration's split seed (its ``data.split_seed``, else its
``seed``) and only ``seed`` (initial weights, sample order, random sources)
changes.  Each row then gives the median over the seeds and the spread
(min-max); ``--json FILE`` keeps every run.  Report seeds that were not used
for tuning (docs/tuning.md: tuning used seed 1; the README reports 2, 3, 4).
``--split val`` prints no test accuracy at all (for tuning).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from perturbo.backend import make_backend
from perturbo.config import Config, Rule, load_config, parse_config
from perturbo.data import load_dataset
from perturbo.train import evaluate, train


def with_overrides(cfg: Config, overrides: dict[str, object], source: str) -> Config:
    """``cfg`` with dotted keys (``rule.float_lr``) replaced; validated like a file."""
    data = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(data, f"{source} with {', '.join(f'{k}={v}' for k, v in overrides.items())}")


def run(cfg: Config, float_reference: bool, out_root: Path, with_test: bool) -> dict:
    splits = load_dataset(cfg)
    backend = make_backend(cfg, "golden", float_reference=float_reference)
    kind = "float" if float_reference or cfg.rule.name == Rule.BP else "integer"
    out = out_root / f"{cfg.name}-{kind}-s{cfg.seed}"
    t0 = time.perf_counter()
    result = train(cfg, backend, out, progress=False, overwrite=True, splits=splits,
                   backend_name="golden", float_reference=float_reference)
    wall = time.perf_counter() - t0
    best = max((r for r in result.history if r["val_accuracy"] is not None), key=lambda r: r["val_accuracy"])
    return {
        "name": cfg.name, "rule": "+".join(dict.fromkeys(r.value for r in cfg.layer_rules())), "kind": kind,
        "seed": cfg.seed, "split_seed": cfg.split_seed, "steps": result.step,
        "samples": result.step * cfg.rule.samples_per_step, "val": result.val_accuracy,
        "best_val": best["val_accuracy"], "best_val_step": best["step"],
        "test": evaluate(cfg, backend, "test", splits=splits) if with_test else None, "wall": wall,
        "steps_per_s": result.step / wall,
    }


def _pct(values: list[float]) -> str:
    """Median and spread (min-max) in percent; one value is shown alone."""
    med = 100 * statistics.median(values)
    if len(values) == 1:
        return f"{med:.1f} %"
    return f"{med:.1f} % ({100 * min(values):.1f}–{100 * max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=sorted(glob.glob("examples/digits-*.yaml")))
    p.add_argument("--float", dest="also_float", action="store_true",
                   help="also train each rule's float reference")
    p.add_argument("--float-only", action="store_true", help="only the float references")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="training seeds, all on the configuration's split (default: its own seed)")
    p.add_argument("--steps", type=int, help="override training.steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value), e.g. rule.float_lr=0.001; repeatable")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: never evaluate the test split (tuning)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--json", type=Path, metavar="FILE", help="append every run as one JSON line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set takes KEY=VALUE, not {item!r}")
        overrides[key] = yaml.safe_load(value)
    if args.steps is not None:
        overrides["training.steps"] = args.steps
    with_test = args.split == "test"

    groups: list[list[dict]] = []
    for path in args.configs:
        base = load_config(path)
        if overrides:
            base = with_overrides(base, overrides, path)
        kinds = [True] if args.float_only else ([False, True] if args.also_float else [False])
        for flt in kinds:
            if flt and base.rule.name == Rule.BP and len(kinds) > 1:
                continue
            group = []
            for seed in args.seeds or [base.seed]:
                per_run: dict[str, object] = {"seed": seed, "data.split_seed": base.split_seed}
                cfg = with_overrides(base, per_run, path)
                row = run(cfg, flt, args.out, with_test)
                group.append(row)
                test = "" if row["test"] is None else f"test {row['test']:.3f} "
                print(f"{row['name']:28s} {row['kind']:7s} seed {seed} {test}val {row['val']:.3f} "
                      f"(best {row['best_val']:.3f} at {row['best_val_step']}) {row['steps']} steps "
                      f"{row['wall']:.1f} s ({row['steps_per_s']:.0f} steps/s)", flush=True)
                if args.json is not None:
                    with args.json.open("a") as f:
                        f.write(json.dumps({**row, "overrides": overrides, "config": path}) + "\n")
            groups.append(group)

    seeds = " ".join(str(s) for s in (args.seeds or []))
    print(f"\nmedian over seeds {seeds or '(each config its own)'} (min–max)" if args.seeds else "")
    print("| config | rule | model | steps | samples | val acc | test acc | wall time | steps/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for g in groups:
        r = g[0]
        wall = statistics.median(x["wall"] for x in g)
        test = "–" if r["test"] is None else f"**{_pct([x['test'] for x in g])}**"
        print(f"| {r['name']} | {r['rule']} | {r['kind']} | {r['steps']} | {r['samples']} | "
              f"{_pct([x['val'] for x in g])} | {test} | {wall:.0f} s | "
              f"{statistics.median(x['steps_per_s'] for x in g):.0f} |")


if __name__ == "__main__":
    main()
