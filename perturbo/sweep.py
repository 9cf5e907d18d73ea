"""``perturbo sweep SWEEP.yaml``: searches over configuration keys on Ray Tune.

A sweep file names a base configuration and a search space over any of its keys
(dotted, as ``perturbo config show`` prints them)::

    name: digits-drtp-lr
    base: ../digits-drtp.yaml        # relative to the sweep file
    method: grid                     # grid | random | tpe (Optuna's TPE)
    trials: 1                        # grid: repeats of the grid; random / tpe: trials
    steps: 2000                      # optional: training.steps of every trial
    space:
      rule.lr_shift: {grid: [[9, 6], [11, 6]]}
      network.init_scale: {uniform: [0.25, 1.0]}
    cpus_per_trial: 1
    early_stop: {grace_steps: 500, reduction_factor: 3}   # ASHA on validation accuracy

Every trial is an ordinary ``perturbo train`` run of the base configuration with
the trial's values, in its own run directory ``<out>/trials/<trial id>/`` with its
checkpoint, ``history.json`` and ``curves.png``; it reports its **validation**
accuracy at every evaluation (the test split is never evaluated by a sweep). The
sweep writes ``results.csv`` and ``results.json`` (one row per trial, the best
first), ``best.yaml`` (the best trial's whole configuration, ready for
``perturbo train``), ``curves.png`` (validation accuracy against step of the best
trials) and ``keys.png`` (final validation accuracy against each swept key).

The whole file is checked before Ray is imported, let alone a trial started: an
unknown sweep key, an empty space or domain, a key that is not a configuration
key, or a value the configuration refuses ends in one :class:`SweepError`.

Ray runs on this machine (a local instance, started on demand) unless
``address`` names a cluster; an interrupted sweep continues with ``resume=True``
(Ray Tune's experiment state, and each unfinished trial from its own perturbo
checkpoint).
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Config, ConfigError, load_config, parse_config, read_yaml
from .limits import check_fits_target

__all__ = ["SweepError", "SweepFile", "SweepResult", "check_sweep", "load_sweep", "run_sweep"]

#: The metric every trial reports and the sweep maximises.
METRIC = "val_accuracy"
#: What to install when Ray or Optuna is missing.
EXTRA_HINT = "pip install 'perturbo[sweep]'"
TRIALS_DIR = "trials"
RAY_DIR = "ray"
PARAMS_NAME = "params.json"
#: A trial's board build report (``SynthReport``), when the sweep builds its trials.
SYNTH_NAME = "synth.json"
#: Ray's increment of its workers' niceness over the raylet's (read when a local instance starts).
WORKER_NICENESS_ENV = "RAY_worker_niceness"


class SweepError(ValueError):
    """A sweep that cannot run: a bad sweep file, a missing extra, an unusable output directory."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Domain(_Strict):
    """One key's values: exactly one of the fields."""

    grid: list[Any] | None = Field(None, description="every value, crossed with the other grid keys")
    choice: list[Any] | None = Field(None, description="one value drawn per trial (random, tpe)")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], drawn uniformly")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], drawn uniformly in log")
    randint: tuple[int, int] | None = Field(None, description="[low, high], an integer, both ends included")

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def endpoints(self) -> list[Any]:
        """Values to check against the configuration: every listed value, or both ends of a range."""
        v = getattr(self, self.kind)
        return list(v)


class EarlyStop(_Strict):
    """ASHA (asynchronous successive halving) on validation accuracy."""

    grace_steps: int = Field(..., ge=1, description="no trial is stopped before this many steps")
    reduction_factor: int = Field(3, ge=2, description="keep the best 1/reduction_factor at every rung")


class SynthTrials(_Strict):
    """Build every finished trial's accelerator for a board as well (``perturbo synth``)."""

    board: str = Field(..., description="the board every trial is built for (perturbo synth --board)")
    seed: int = Field(1, ge=0, description="nextpnr placement seed")


class SweepFile(_Strict):
    """A sweep file (YAML)."""

    name: str = Field(..., min_length=1, description="the sweep's name (default output: sweeps/<name>)")
    base: str = Field(..., description="the base perturbo configuration, relative to the sweep file")
    method: Literal["grid", "random", "tpe"] = Field("grid", description="grid | random | tpe (Optuna)")
    trials: int = Field(1, ge=1, description="grid: repeats of the whole grid; random, tpe: trials")
    search_seed: int = Field(0, ge=0, description="seed of the random and TPE searchers")
    steps: int | None = Field(None, ge=1, description="training.steps of every trial")
    eval_every: int | None = Field(None, ge=1, description="training.eval_every of every trial")
    backend: Literal["golden", "verilator"] = Field("golden", description="where each trial trains")
    float_reference: bool = Field(False, description="train the rule's float reference (like --float)")
    space: dict[str, Domain] = Field(..., description="config key -> values")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs Ray reserves for each trial")
    threads_per_trial: int | None = Field(None, ge=1, description="torch threads per trial (default: its CPUs)")
    max_concurrent: int | None = Field(None, ge=1, description="at most this many trials at once")
    early_stop: EarlyStop | None = Field(None, description="stop hopeless trials (ASHA)")
    synth: SynthTrials | None = Field(None, description="also build each finished trial for a board")


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: the file, where it came from and its resolved base configuration."""

    spec: SweepFile
    source: Path
    base: Config

    @property
    def steps(self) -> int:
        return self.trial_config({}).training.steps

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The base configuration with the sweep's overrides and one trial's values."""
        data = self.base.model_dump(mode="json")
        fixed: dict[str, Any] = {}
        if self.spec.steps is not None:
            fixed["training.steps"] = self.spec.steps
        if self.spec.eval_every is not None:
            fixed["training.eval_every"] = self.spec.eval_every
        for key, value in {**fixed, **params}.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return parse_config(data, f"{self.source} ({shown})" if shown else str(self.source))


# -- checking ------------------------------------------------------------------------


def _config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the configuration (``rule.lr_shift``, ``seed``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _config_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _format(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            if len(e["loc"]) >= 3 and e["loc"][0] == "space":  # an unknown domain kind
                allowed = list(Domain.model_fields)
            else:
                nested = {"early_stop": EarlyStop, "synth": SynthTrials}.get(str(e["loc"][0]), SweepFile)
                allowed = list(SweepFile.model_fields if len(e["loc"]) == 1 else nested.model_fields)
            msg = f"unknown key; allowed: {', '.join(allowed)}"
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}")
    return out


def check_sweep(data: Any, source: str | Path) -> Sweep:
    """Validate a sweep file's contents; every problem found ends in one :class:`SweepError`."""
    source = Path(source)
    where = f"invalid sweep {source}"
    if not isinstance(data, dict):
        raise SweepError(f"{where}: the top level must be a mapping, not {type(data).__name__}")
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as err:
        raise SweepError(f"{where}: {'; '.join(_format(err))}") from None
    problems: list[str] = []
    if not spec.space:
        raise SweepError(f"{where}: space is empty; give at least one config key and its values")
    try:
        base = load_config((source.parent / spec.base) if not Path(spec.base).is_absolute() else spec.base)
    except ConfigError as err:
        raise SweepError(f"{where}: base: {' '.join(str(err).split())}") from None
    sweep = Sweep(spec, source, base)
    if spec.synth is not None:
        from .boards.top import board_names

        if spec.synth.board not in board_names():
            raise SweepError(f"{where}: synth.board: {spec.synth.board!r} is not a board; allowed: "
                             f"{', '.join(board_names())}")
    keys = _config_keys()
    for key, domain in spec.space.items():
        kinds = [k for k in Domain.model_fields if getattr(domain, k) is not None]
        if len(kinds) != 1:
            problems.append(f"space.{key}: give exactly one of {', '.join(Domain.model_fields)}"
                            + (f", not {', '.join(kinds)}" if kinds else ""))
            continue
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            problems.append(f"space.{key}: not a configuration key" + (f" (did you mean {close[0]!r}?)" if close
                                                                      else " (perturbo config show lists them)"))
            continue
        kind, values = domain.kind, domain.endpoints()
        if not values:
            problems.append(f"space.{key}: {kind} is empty")
            continue
        if kind in ("uniform", "loguniform", "randint") and values[0] > values[1]:
            problems.append(f"space.{key}: {kind} needs [low, high] with low <= high, not {values}")
            continue
        if kind == "loguniform" and values[0] <= 0:
            problems.append(f"space.{key}: loguniform needs a positive low end, not {values[0]}")
            continue
        if kind == "grid" and spec.method == "tpe":
            problems.append(f"space.{key}: method tpe samples its values; use choice, not grid")
            continue
        if kind != "grid" and spec.method == "grid":
            problems.append(f"space.{key}: method grid takes grid values only, not {kind} (or use method random)")
            continue
        for v in values:
            try:
                cfg = sweep.trial_config({key: v})
                if spec.synth is not None:
                    check_fits_target(cfg, f"{source} ({key}={v!r})")
            except ConfigError as err:
                detail = str(err).split("\n", 1)[-1].strip()
                problems.append(f"space.{key} = {v!r}: {detail}")
                break
    if not problems:
        try:
            sweep.trial_config({})
        except ConfigError as err:
            problems.append(str(err).replace("\n", " "))
    if problems:
        raise SweepError(f"{where}: {'; '.join(problems)}")
    return sweep


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file."""
    path = Path(path)
    try:
        data = read_yaml(path, "sweep")
    except ConfigError as err:
        raise SweepError(str(err)) from None
    return check_sweep(data, path)


def grid_size(sweep: Sweep) -> int:
    """Trials of a grid sweep (grid points times repeats)."""
    sizes = [len(d.grid) for d in sweep.spec.space.values() if d.grid is not None]
    return math.prod(sizes) * sweep.spec.trials


# -- running -------------------------------------------------------------------------


def _import_ray(method: str) -> Any:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SweepError(f"perturbo sweep needs Ray, which is not installed: {EXTRA_HINT}") from None
    if method == "tpe":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SweepError(f"method tpe needs Optuna, which is not installed: {EXTRA_HINT}") from None
    return ray, tune


def _tune_space(sweep: Sweep, tune: Any) -> dict[str, Any]:
    space = {}
    for key, d in sweep.spec.space.items():
        if d.grid is not None:
            space[key] = tune.grid_search(list(d.grid))
        elif d.choice is not None:
            space[key] = tune.choice(list(d.choice))
        elif d.uniform is not None:
            space[key] = tune.uniform(*d.uniform)
        elif d.loguniform is not None:
            space[key] = tune.loguniform(*d.loguniform)
        else:
            low, high = d.randint
            space[key] = tune.randint(low, high + 1)  # Tune's upper end is exclusive
    return space


def _run_trial(params: dict[str, Any], *, sweep: Sweep, out: str) -> None:
    """One trial: an ordinary perturbo run in ``<out>/trials/<trial id>``, reporting validation accuracy."""
    import torch
    from ray import tune

    from .backend import make_backend
    from .data import load_dataset
    from .train import CHECKPOINT_NAME, train

    torch.set_num_threads(sweep.spec.threads_per_trial or max(1, int(sweep.spec.cpus_per_trial)))
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}  # numpy scalars
    cfg = sweep.trial_config(params)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(out) / TRIALS_DIR / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PARAMS_NAME).write_text(json.dumps({"trial": trial_id, "params": params}, indent=1) + "\n")
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    resume = (run_dir / CHECKPOINT_NAME).exists()
    backend = make_backend(cfg, sweep.spec.backend, float_reference=sweep.spec.float_reference)
    try:
        def report(record: dict[str, Any]) -> None:
            tune.report({METRIC: record["val_accuracy"], "step": record["step"], "wall_time": record["wall_time"]})

        reported: list[int] = []
        result = train(cfg, backend, run_dir, resume=resume, progress=False, overwrite=not resume,
                       splits=load_dataset(cfg), backend_name=sweep.spec.backend,
                       float_reference=sweep.spec.float_reference,
                       on_eval=lambda r: (reported.append(r["step"]), report(r)))
        if not reported:  # resumed a run that had finished before the sweep was interrupted
            last = [r for r in result.history if r["val_accuracy"] is not None]
            if last:
                report(last[-1])
    finally:
        backend.close()
    if sweep.spec.synth is not None and not (run_dir / SYNTH_NAME).exists():
        _synth_trial(cfg, sweep.spec.synth, run_dir)


def _synth_trial(cfg: Config, synth: SynthTrials, run_dir: Path) -> None:
    """Build a finished trial's accelerator (through the shared build cache); keep the report beside the run."""
    from .boards.build import build

    report = build(cfg, synth.board, seed=synth.seed, quiet=True)
    (run_dir / SYNTH_NAME).write_text(report.to_json())


@dataclass
class SweepResult:
    """What :func:`run_sweep` leaves behind: the trials, best first, and the files written."""

    out_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    wall_time: float
    #: trials Ray had not ended (the sweep was interrupted): ``--resume`` continues them
    unfinished: int = 0

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"


def _ensure_ray(ray: Any, address: str | None, cpus: int | None) -> None:
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "WARNING"}
    if address is not None:
        ray.init(address=address, **kwargs)
    else:
        # Ray raises its workers' niceness by 15; the trials are the sweep's work, so on a shared
        # machine they run at the niceness of the sweep itself (an increment of 0), like `perturbo train`.
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        ray.init(num_cpus=cpus, **kwargs)


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path | None = None,
    *,
    address: str | None = None,
    cpus: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int = 0,
) -> SweepResult:
    """Run (or, with ``resume``, continue) a checked sweep on Ray Tune; write its results.

    Parameters
    ----------
    sweep : Sweep
        From :func:`load_sweep` or :func:`check_sweep`.
    out_dir : path, optional
        Default ``sweeps/<name>``.
    address : str, optional
        An existing Ray cluster (``ray://host:10001`` or ``host:6379``); default:
        the Ray instance this process already has, else a new local one.
    cpus : int, optional
        CPUs of a new local instance (default: all).
    resume, overwrite : bool
        Continue an interrupted sweep in ``out_dir``, or start it afresh.
    verbose : int
        Ray Tune's verbosity (0 silent, 1 a status table now and then).
    """
    spec = sweep.spec
    out = Path(out_dir if out_dir is not None else Path("sweeps") / spec.name).resolve()
    ray_root = out / RAY_DIR
    exp_dir = ray_root / spec.name
    ray, tune = _import_ray(spec.method)
    if exp_dir.exists() and not (resume or overwrite):
        raise SweepError(f"{out} already holds sweep {spec.name}; continue it with --resume or start over with "
                         "--overwrite")
    if resume and not exp_dir.exists():
        raise SweepError(f"nothing to resume in {out}: no sweep {spec.name} there")
    if overwrite and out.exists():
        for part in (ray_root, out / TRIALS_DIR):
            shutil.rmtree(part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    # Tune's experiment state is saved at its own ("auto") pace: forcing it every second cost the
    # driver half a core on this 2-core machine. Resume does not need it fresher: an unfinished
    # trial continues from its own perturbo checkpoint, a finished one reports its last record again.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    _ensure_ray(ray, address, cpus)

    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(tune.with_parameters(_run_trial, sweep=sweep, out=str(out)),
                                    {"cpu": spec.cpus_per_trial})
    t0 = time.perf_counter()
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise SweepError(f"the sweep state in {exp_dir} cannot be restored; start over with --overwrite")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if spec.early_stop is not None:
            scheduler: Any = ASHAScheduler(time_attr="step", max_t=sweep.steps,
                                           grace_period=spec.early_stop.grace_steps,
                                           reduction_factor=spec.early_stop.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        search_alg = None
        if spec.method == "tpe":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search_seed))
        elif spec.method == "random":
            from ray.tune.search.basic_variant import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=spec.search_seed)
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_space(sweep, tune),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=spec.trials, scheduler=scheduler,
                                        search_alg=search_alg, max_concurrent_trials=spec.max_concurrent,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(ray_root), verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    errors = {r.metrics.get("trial_id") or Path(r.path).name: str(r.error).splitlines()[0]
              for r in grid if r.error is not None}
    # Tune's own view of every trial: TERMINATED (finished or stopped by ASHA), ERROR, or
    # PENDING / RUNNING / PAUSED when the sweep was interrupted (Ctrl-C) before they ended
    analysis = tune.ExperimentAnalysis(str(exp_dir))
    unfinished = {t.trial_id for t in analysis.trials if t.status not in ("TERMINATED", "ERROR")}
    return write_results(sweep, out, wall, errors, unfinished)


# -- results -------------------------------------------------------------------------


def collect_trials(sweep: Sweep, out: Path, errors: dict[str, str] | None = None,
                   unfinished: set[str] | None = None) -> list[dict[str, Any]]:
    """Every trial's parameters and history from its run directory, best final validation accuracy first."""
    errors, unfinished = errors or {}, unfinished or set()
    rows = []
    for params_file in sorted((out / TRIALS_DIR).glob(f"*/{PARAMS_NAME}")):
        info = json.loads(params_file.read_text())
        hist_file = params_file.parent / "history.json"
        history = json.loads(hist_file.read_text())["history"] if hist_file.exists() else []
        evals = [(r["step"], r["val_accuracy"]) for r in history if r["val_accuracy"] is not None]
        steps = history[-1]["step"] if history else 0
        trial = info["trial"]
        error = next((e for t, e in errors.items() if trial in t), None)
        target = sweep.trial_config(info["params"]).training.steps
        if error:
            status = "error"
        elif steps >= target:
            status = "done"
        else:
            status = "interrupted" if trial in unfinished else "stopped"
        rows.append({
            "trial": trial, "status": status, "steps": steps,
            METRIC: evals[-1][1] if evals else None,
            "best_val_accuracy": max((a for _, a in evals), default=None),
            "wall_time": history[-1]["wall_time"] if history else None,
            "run_dir": str(params_file.parent), "params": info["params"], "curve": evals,
            **({"error": error} if error else {}),
            **_synth_columns(params_file.parent / SYNTH_NAME),
        })
    rows.sort(key=lambda r: (r["status"] != "done", -(r[METRIC] if r[METRIC] is not None else -1.0)))
    _mark_pareto(rows)
    return rows


#: What a results row says of a trial's board build (None where the sweep builds nothing).
SYNTH_COLUMNS = ("synth_status", "logic", "logic_available", "dsp", "bram", "fmax_mhz")


def _synth_columns(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    from .boards.report import SynthReport

    report = SynthReport.load(path)
    use = report.resources
    return {
        "synth_status": report.status,
        "logic": use["logic"].used if "logic" in use else None,
        "logic_available": use["logic"].available if "logic" in use else None,
        "dsp": use["dsp"].used if "dsp" in use else None,
        "bram": use["bram"].used if "bram" in use else None,
        "fmax_mhz": report.fmax_mhz,
    }


def _mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: a finished, fitting trial that no other beats on both validation accuracy and logic."""
    built = [r for r in rows if r["status"] == "done" and r[METRIC] is not None
             and r.get("synth_status") == "ok" and r.get("logic") is not None]
    def beats(q: dict[str, Any], r: dict[str, Any]) -> bool:
        no_worse = q[METRIC] >= r[METRIC] and q["logic"] <= r["logic"]
        return no_worse and (q[METRIC] > r[METRIC] or q["logic"] < r["logic"])

    for r in rows:
        r["pareto"] = any(r is b for b in built) and not any(beats(q, r) for q in built)


def write_results(sweep: Sweep, out: Path, wall: float, errors: dict[str, str] | None = None,
                  unfinished: set[str] | None = None) -> SweepResult:
    """results.csv, results.json, best.yaml, curves.png and keys.png from the trials' run directories."""
    rows = collect_trials(sweep, out, errors, unfinished)
    done = [r for r in rows if r["status"] == "done" and r[METRIC] is not None]
    best = done[0] if done else None
    keys = list(sweep.spec.space)
    hardware = [*SYNTH_COLUMNS, "pareto"] if sweep.spec.synth is not None else []
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "steps", METRIC, "best_val_accuracy", "wall_time", *keys, *hardware,
                    "run_dir"])
        for r in rows:
            w.writerow([r["trial"], r["status"], r["steps"], r[METRIC], r["best_val_accuracy"], r["wall_time"],
                        *(json.dumps(r["params"].get(k)) for k in keys), *(r.get(c) for c in hardware),
                        r["run_dir"]])
    doc = {"name": sweep.spec.name, "sweep": sweep.spec.model_dump(mode="json"), "metric": METRIC,
           "selection": "final validation accuracy of finished trials (the test split is never evaluated)",
           "wall_time": wall, "best": best, "trials": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    if best is not None:
        cfg = sweep.trial_config(best["params"])
        (out / "best.yaml").write_text(f"# best trial {best['trial']} of sweep {sweep.spec.name}: validation "
                                       f"accuracy {best[METRIC]:.4f} after {best['steps']} steps\n" + cfg.to_yaml())
    _plot(rows, keys, out)
    if sweep.spec.synth is not None:
        _plot_pareto(rows, keys, sweep.spec.synth.board, out)
    return SweepResult(out, rows, best, wall, len(unfinished or ()))


def _plot(rows: list[dict[str, Any]], keys: list[str], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for r in rows[:8]:
        if r["curve"]:
            label = ", ".join(f"{k}={r['params'][k]!r}" for k in keys)
            ax.plot([s for s, _ in r["curve"]], [a for _, a in r["curve"]], "o-", ms=3,
                    label=f"{label} ({r['status']})"[:70])
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title("the best trials")
    fig.savefig(out / "curves.png", dpi=100)

    fig = Figure(figsize=(4 * len(keys), 3.5), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        pts = [(r["params"].get(key), r[METRIC]) for r in rows if r[METRIC] is not None]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v, _ in pts)
        labels = sorted({json.dumps(v) for v, _ in pts})
        xs = [v if numeric else labels.index(json.dumps(v)) for v, _ in pts]
        colours = ["tab:blue" if r["status"] == "done" else "tab:gray" for r in rows if r[METRIC] is not None]
        ax.scatter(xs, [a for _, a in pts], c=colours, s=18)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel("final validation accuracy")
        ax.grid(alpha=0.3)
    fig.savefig(out / "keys.png", dpi=100)


def _plot_pareto(rows: list[dict[str, Any]], keys: list[str], board: str, out: Path) -> None:
    """``pareto.png``: final validation accuracy against logic used, Fmax in colour, the front joined."""
    from matplotlib.figure import Figure

    built = [r for r in rows if r[METRIC] is not None and r.get("synth_status") == "ok"]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    if built:
        points = ax.scatter([r["logic"] for r in built], [r[METRIC] for r in built],
                            c=[r["fmax_mhz"] or 0.0 for r in built], cmap="viridis", s=30)
        fig.colorbar(points, ax=ax, label="Fmax (MHz)")
        front = sorted((r for r in built if r["pareto"]), key=lambda r: r["logic"])
        ax.step([r["logic"] for r in front], [r[METRIC] for r in front], where="post", color="tab:red",
                lw=1, label="Pareto front")
        for r in front:
            ax.annotate(", ".join(f"{k}={r['params'][k]!r}" for k in keys)[:40], (r["logic"], r[METRIC]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=7)
    ax.set_xlabel(f"logic used on {board}")
    ax.set_ylabel("final validation accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"accuracy against logic ({len(built)} trials built, fitting)")
    fig.savefig(out / "pareto.png", dpi=100)


def trial_grid(sweep: Sweep) -> list[dict[str, Any]]:
    """The grid points of a grid sweep, in order (for ``--dry-run``)."""
    grid = {k: d.grid for k, d in sweep.spec.space.items() if d.grid is not None}
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]

