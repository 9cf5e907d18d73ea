"""Whole training runs on the Verilator co-simulation, checked bit for bit against the golden model.

    python bench/verilator_vs_golden.py [CONFIG ...] [--steps N] [--measure-steps 64]

For each CONFIG (default: every shipped digits example of an integer rule, at the
board budget of examples/digits-*.yaml, the iCEBreaker variant left out) this trains the
whole run on the verilated accelerator through the host link, then the same run on the
golden integer model (or reuses the golden run a previous call left in ``--out`` for the
same configuration), and compares the final weights with ``==``.

Then, on the same co-simulation, it clears the accelerator's counters and trains
``--measure-steps`` more steps to read the cycles per training step and how busy the
MAC lanes were, from the accelerator's own counters:

- *MAC busy*: cycles in which the lanes multiply-accumulate, over all busy cycles;
- *lane use*: the multiply-accumulates the network needs (``n_out * (n_in + 1)`` per
  layer and pass) over ``lanes`` times the busy cycles (lanes idle in a layer whose
  width is not a multiple of the lane count count against it).

With more than one perturbed copy per sample it also builds the accelerator without
the overlap of passes and correlations (``Accelerator(overlap=False)``: each pass waits
until the previous correlation is done) and prints the cycles per copy with and without.
Cycles per step turn into steps per second at the Fmax of the newest fitting board build
of the configuration (``perturbo synth``), or at ``--fmax-mhz``.

Prints one Markdown table (the README's), then exits non-zero if any run differed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from perturbo.backend import make_backend
from perturbo.config import TARGET_PROJECTION_RULES, Config, Rule, load_config
from perturbo.data import SampleStream, Splits, load_dataset
from perturbo.host.accelerator import Counters
from perturbo.sim.backend import VerilatorBackend
from perturbo.train import CheckpointError, evaluate, load_checkpoint, train

sys.path.insert(0, str(Path(__file__).parent))
from cosim_speed import board_fmax  # noqa: E402  (a sibling script, not a package)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def default_configs() -> list[Path]:
    """The shipped digits examples of integer rules, one board budget each."""
    out = []
    for path in sorted(EXAMPLES.glob("digits-*.yaml")):
        cfg = load_config(path)
        if Rule.BP not in cfg.layer_rules() and "icebreaker" not in path.stem:
            out.append(path)
    return out


@dataclass
class Row:
    name: str
    rules: str
    steps: int
    hw_test: float
    gold_test: float
    hw_wall: float
    gold_wall: float
    identical: bool
    counters: Counters
    lane_use: float
    cycles_per_copy: tuple[float, float] | None  # with and without the overlap
    fmax: tuple[str, float] | None


def passes_per_step(cfg: Config) -> int:
    """Forward passes in one training step: a baseline and ``copies`` perturbed passes per
    sample (target projection: the baseline alone)."""
    if cfg.layer_rules()[0] in TARGET_PROJECTION_RULES:
        return cfg.rule.samples_per_step
    return cfg.rule.samples_per_step * (1 + cfg.rule.copies)


def lane_use(cfg: Config, c: Counters) -> float:
    sizes = cfg.network.layers
    macs = sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    return macs * passes_per_step(cfg) * c.steps / (cfg.hardware.lanes * c.cycles)


def measure(cfg: Config, hw: VerilatorBackend, splits: Splits, steps: int) -> Counters:
    """Counters over ``steps`` training steps from the backend's current state."""
    stream = SampleStream(splits.train.x, splits.train.y, cfg.seed + 1)
    x, y = stream.take(steps * cfg.rule.samples_per_step)
    hw.clear_counters()
    hw.train_steps(x, y, steps)
    return hw.counters()


def golden_run(cfg: Config, splits: Splits, out: Path) -> tuple[object, float]:
    gold = make_backend(cfg, "golden")
    gold_dir = out / f"{cfg.name}-integer"
    try:
        ckpt = load_checkpoint(gold_dir)
        if ckpt.config != cfg or ckpt.trainer.step != cfg.training.steps:
            raise CheckpointError("a different run")
        gold.load_state_dict(ckpt.backend_state)
        return gold, ckpt.trainer.elapsed
    except CheckpointError:
        t0 = time.perf_counter()
        train(cfg, gold, gold_dir, overwrite=True, splits=splits, backend_name="golden")
        return gold, time.perf_counter() - t0


def run(cfg: Config, out: Path, measure_steps: int, fmax_mhz: float | None) -> Row:
    splits = load_dataset(cfg)
    hw = VerilatorBackend(cfg)
    try:
        t0 = time.perf_counter()
        train(cfg, hw, out / f"{cfg.name}-verilator", overwrite=True, splits=splits, backend_name="verilator")
        hw_wall = time.perf_counter() - t0
        hw_test = evaluate(cfg, hw, "test", splits=splits)
        hw_state = hw.state_dict()
        counters = measure(cfg, hw, splits, measure_steps)
    finally:
        hw.close()
    gold, gold_wall = golden_run(cfg, splits, out)
    gold_test = evaluate(cfg, gold, "test", splits=splits)
    identical = (hw_state["step"] == gold.step
                 and all(torch.equal(a, b) for a, b in zip(hw_state["weights"], gold.weights, strict=True)))
    per_copy = None
    if cfg.rule.copies > 1:
        serial = VerilatorBackend(cfg, overlap=False)
        try:
            serial.load_state_dict(hw_state)
            without = measure(cfg, serial, splits, measure_steps)
        finally:
            serial.close()
        copies = cfg.rule.samples_per_step * cfg.rule.copies
        per_copy = (counters.cycles / counters.steps / copies, without.cycles / without.steps / copies)
    fmax = ("--fmax-mhz", fmax_mhz) if fmax_mhz else board_fmax(cfg)
    return Row(cfg.name, "/".join(dict.fromkeys(r.value for r in cfg.layer_rules())), cfg.training.steps,
               hw_test, gold_test, hw_wall, gold_wall, identical, counters, lane_use(cfg, counters), per_copy,
               fmax)


def table(rows: list[Row]) -> str:
    lines = [
        "| example | rule | steps | test acc (verilator / golden) | wall (verilator / golden) | bit-identical "
        "| cycles/step | MAC busy | lane use | cycles per copy (overlap / none) | steps/s at Fmax |",
        "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        c = r.counters
        cps = c.cycles / c.steps
        copy = f"{r.cycles_per_copy[0]:.0f} / {r.cycles_per_copy[1]:.0f}" if r.cycles_per_copy else "—"
        rate = f"{r.fmax[1] * 1e6 / cps:,.0f} ({r.fmax[1]:.1f} MHz, {r.fmax[0]})" if r.fmax else "no build"
        lines.append(
            f"| {r.name} | {r.rules} | {r.steps} | {r.hw_test:.4f} / {r.gold_test:.4f} "
            f"| {r.hw_wall:.0f} s / {r.gold_wall:.0f} s | {'**yes**' if r.identical else '**NO**'} "
            f"| {cps:,.0f} | {c.mac_utilisation:.1%} | {r.lane_use:.1%} | {copy} | {rate} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", type=Path, help="default: every digits example of an integer rule")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--steps", type=int, help="train this many steps instead of each config's training.steps")
    p.add_argument("--measure-steps", type=int, default=64)
    p.add_argument("--fmax-mhz", type=float)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for path in args.configs or default_configs():
        cfg = load_config(path)
        if args.steps:
            cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
                update={"steps": args.steps, "eval_every": args.steps})})
        rows.append(run(cfg, args.out, args.measure_steps, args.fmax_mhz))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if not all(r.identical for r in rows):
        raise SystemExit("a Verilator run differs from the golden model")


if __name__ == "__main__":
    main()
