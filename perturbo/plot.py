"""``perturbo plot``: PNGs of training curves, weight histograms and board reports.

Three figures, drawn with matplotlib's Agg canvas (no display, no pyplot state):

- :func:`plot_runs`: loss and validation accuracy against step of several runs (their
  ``history.json``), one colour per run, labelled by the run directory's name;
- :func:`plot_histograms`: per layer, histograms of one checkpoint's weights (master
  weights, the INT8 MAC weights derived from them, and the momentum accumulator when
  the run keeps one; the float weights of a float reference). The correlation
  accumulator G is cleared after every update, so a checkpoint holds none to plot;
- :func:`plot_boards`: resources (as a share of the device) and Fmax of ``perturbo
  synth`` builds, from their ``report.json`` files.

Missing or unreadable inputs raise :class:`PlotError`, one line naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .train import HISTORY_NAME, _atomic_write, load_checkpoint

__all__ = ["PlotError", "plot_boards", "plot_histograms", "plot_runs"]

#: Resources drawn for board reports, in this order, with their axis labels.
BOARD_RESOURCES = {"logic": "logic (LC / LUT4)", "ff": "flip-flops", "dsp": "DSP / multipliers",
                   "bram": "block RAM", "spram": "SPRAM"}


class PlotError(RuntimeError):
    """An input that cannot be plotted (missing, not JSON, of the wrong shape) or an unwritable output."""


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: no GUI backend is ever chosen
    return fig


def _save(fig: Any, out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as err:
        raise PlotError(f"cannot write {out}: {err.strerror or err}; choose another -o") from None
    return out


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlotError(f"no {what} at {path}") from None
    except OSError as err:
        raise PlotError(f"cannot read {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PlotError(f"{path} is not valid JSON ({err}); it is damaged") from None


# -- training curves -----------------------------------------------------------------


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / HISTORY_NAME if run.is_dir() or not run.suffix else run
    doc = _read_json(path, f"{HISTORY_NAME} (a run directory of perturbo train)")
    records = doc.get("history") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("step"), int) and "train_loss" in r and "val_accuracy" in r
        for r in records
    ):
        raise PlotError(f"{path} is not a perturbo history (no list of step, train_loss, val_accuracy records)")
    return records


def _labels(runs: Sequence[Path]) -> list[str]:
    """Run directory names, or the whole paths where two runs share a name."""
    names = [(r if r.is_dir() or not r.suffix else r.parent).resolve().name for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names, strict=True)]


def plot_runs(runs: Sequence[Path], out: Path | None = None) -> Path:
    """Train loss and validation accuracy against step of every run on one figure; returns the PNG's path."""
    histories = [_history(Path(r)) for r in runs]
    fig = _figure(9, 6.5)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    all_losses: list[float] = []
    for label, hist in zip(_labels([Path(r) for r in runs]), histories, strict=True):
        pts = [(r["step"], r["train_loss"]) for r in hist if isinstance(r["train_loss"], (int, float))]
        # a run with one or two records would draw no visible line without markers
        (line,) = ax_loss.plot([s for s, _ in pts], [v for _, v in pts], lw=1, label=label,
                               marker="o" if len(pts) < 3 else None, ms=3)
        all_losses += [v for _, v in pts if math.isfinite(v)]
        evals = [(r["step"], r["val_accuracy"]) for r in hist if isinstance(r["val_accuracy"], (int, float))]
        ax_acc.plot([s for s, _ in evals], [a for _, a in evals], "o-", ms=3, color=line.get_color(), label=label)
    if all_losses and min(all_losses) > 0 and max(all_losses) > 20 * min(all_losses):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss (mean since last record)")
    ax_acc.set(ylabel="validation accuracy", xlabel="step", ylim=(0.0, 1.0))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize="small")
    return _save(fig, Path(out) if out is not None else Path("runs.png"))


# -- weight histograms ---------------------------------------------------------------


def _weight_panels(state: dict[str, Any], weight_bits: int) -> list[dict[str, np.ndarray]]:
    """Per layer, the named weight arrays of a backend state."""
    weights = state.get("weights")
    if not isinstance(weights, list) or not all(isinstance(w, torch.Tensor) for w in weights):
        raise PlotError("the checkpoint's backend state holds no list of weight tensors")
    if state.get("kind") != "integer":  # a float reference
        return [{"weights (float)": w.detach().double().numpy()} for w in weights]
    momentum = state.get("momentum") or [None] * len(weights)
    panels = []
    for w, m in zip(weights, momentum, strict=True):
        shift = weight_bits - 8
        panel = {"master weights W": w.numpy(), f"MAC weights w8 = W >> {shift}": (w >> shift).numpy()}
        if isinstance(m, torch.Tensor):
            panel["momentum M"] = m.numpy()
        panels.append(panel)
    return panels


def _bins(values: np.ndarray) -> Any:
    if values.dtype.kind in "iu" and values.size and int(values.max()) - int(values.min()) <= 256:
        return np.arange(int(values.min()), int(values.max()) + 2) - 0.5  # one bar per integer
    return 64


def plot_histograms(run: Path, out: Path | None = None) -> Path:
    """Per-layer histograms of the weights in ``run``'s checkpoint; returns the PNG's path."""
    run = Path(run)
    ckpt = load_checkpoint(run)
    panels = _weight_panels(ckpt.backend_state, ckpt.config.numerics.weight_bits)
    cols = max(len(p) for p in panels)
    fig = _figure(4 * cols, 2.6 * len(panels))
    axes = np.atleast_2d(fig.subplots(len(panels), cols, squeeze=False))
    shapes = ckpt.config.layer_shapes()
    for k, panel in enumerate(panels):
        for c in range(cols):
            ax = axes[k, c]
            if c >= len(panel):
                ax.set_visible(False)
                continue
            name, values = list(panel.items())[c]
            ax.hist(values.ravel(), bins=_bins(values), color=f"C{c}")
            ax.set_title(f"layer {k} ({shapes[k][0]}x{shapes[k][1]}): {name}", fontsize="small")
            ax.grid(alpha=0.3)
    fig.suptitle(f"{ckpt.config.name} at step {ckpt.trainer.step}")
    default = (run if run.is_dir() else run.parent) / "histograms.png"
    return _save(fig, Path(out) if out is not None else default)


# -- board reports -------------------------------------------------------------------


def _report_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("report.json"))
            if not found:
                raise PlotError(f"no report.json under {p} (perturbo synth writes one per build)")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise PlotError(f"no board report at {p}")
    return files


def _load_reports(paths: Sequence[Path]) -> list[Any]:
    from perturbo.boards.report import SynthReport

    reports = []
    for path in _report_files(paths):
        data = _read_json(path, "board report")
        try:
            report = SynthReport.from_dict(data)
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise PlotError(f"{path} is not a perturbo synth report ({err})") from None
        reports.append(report)
    return sorted(reports, key=lambda r: (r.board, r.lanes, r.config_name))


def plot_boards(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Resource use and Fmax of board builds, one group of bars per build; returns the PNG's path."""
    reports = _load_reports(paths)
    labels = [f"{r.board}\n{r.lanes} lane{'s' if r.lanes != 1 else ''}\n{r.config_name}"
              + ("" if r.fits else f"\n({r.status})") for r in reports]
    x = np.arange(len(reports))
    fig = _figure(max(7.5, 1.6 * len(reports) + 2), 7.5)
    ax_use, ax_f = fig.subplots(2, 1, sharex=True)
    names = [n for n in BOARD_RESOURCES if any(r.resources.get(n) and r.resources[n].fraction is not None
                                                  for r in reports)]
    width = 0.8 / max(1, len(names))
    top = 100.0
    for i, name in enumerate(names):
        use = [r.resources.get(name) for r in reports]
        pct = [100 * u.fraction if u is not None and u.fraction is not None else 0.0 for u in use]
        top = max(top, *pct)
        bars = ax_use.bar(x + (i - (len(names) - 1) / 2) * width, pct, width, label=BOARD_RESOURCES[name])
        ax_use.bar_label(bars, [f"{u.used}" if u is not None else "" for u in use], fontsize=6, rotation=90)
    ax_use.axhline(100, color="black", lw=0.8, ls="--")
    ax_use.set_ylim(0, 1.3 * top)  # room for the counts above the bars and the legend
    ax_use.set_ylabel("share of the device (%)")
    ax_use.legend(fontsize="small", ncols=min(3, max(1, len(names))))
    fmax = [r.fmax_mhz or 0.0 for r in reports]
    bars = ax_f.bar(x, fmax, 0.5, color="tab:green", label="Fmax")
    ax_f.bar_label(bars, [f"{f:.1f}" if f else "not routed" for f in fmax], fontsize=7)
    wanted = [r.clk_mhz or None for r in reports]
    ax_f.plot(x, [w if w else np.nan for w in wanted], "k_", ms=30, mew=2, label="board clock")
    ax_f.set(ylabel="MHz", xticks=x)
    ax_f.set_xticklabels(labels, fontsize="small")
    ax_f.legend(fontsize="small")
    for ax in (ax_use, ax_f):
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, Path(out) if out is not None else Path("boards.png"))

