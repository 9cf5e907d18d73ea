"""The host-side trainer: one loop for every :class:`~perturbo.backend.TrainingBackend`.

A run lives in one directory::

    out_dir/
        checkpoint.ckpt   the last good checkpoint (replaced atomically)
        history.json      step, mean train loss, validation accuracy, wall time
        curves.png        loss and validation accuracy against step

A step consumes ``cfg.rule.samples_per_step`` samples from a stream that is
reshuffled every epoch from ``cfg.seed`` (:class:`perturbo.data.SampleStream`).
The stream's cursor, the step counter, the history and the backend's state are
all in the checkpoint, so ``train(..., resume=True)`` continues an interrupted
run and ends bit-identical to a run that was never interrupted.

Checkpoint file layout (format version 1)::

    b"PERTURBO-CHECKPOINT\\n"
    one line of JSON (the header), ending in b"\\n":
        {"format": "perturbo-checkpoint", "version": 1, "payload_bytes": N,
         "sha256": "<hex digest of the payload>", "step": ..., "config_name": ...,
         "perturbo": "<version>"}
    N bytes of payload: torch.save() of a dict of plain containers and tensors
        {"config":  cfg.model_dump(mode="json"),
         "backend": {"name", "float_reference", "class", "state": backend.state_dict()},
         "trainer": {"step", "epoch", "position", "loss_sum", "loss_count",
                     "elapsed", "history"}}

The payload's length and SHA-256 are checked before it is deserialised, and it is
then read with ``torch.load(weights_only=True)`` (no arbitrary pickles).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from tqdm.auto import tqdm

from . import __version__
from .backend import BackendFailure, TrainingBackend
from .config import Config, ConfigError, parse_config
from .data import SampleStream, Split, Splits, load_dataset

__all__ = [
    "CHECKPOINT_NAME",
    "CURVES_NAME",
    "FORMAT_VERSION",
    "HISTORY_NAME",
    "Checkpoint",
    "CheckpointError",
    "TrainResult",
    "TrainerState",
    "TrainingInterrupted",
    "accuracy",
    "decode_checkpoint",
    "encode_checkpoint",
    "evaluate",
    "load_checkpoint",
    "plot_history",
    "save_checkpoint",
    "train",
]

CHECKPOINT_NAME = "checkpoint.ckpt"
HISTORY_NAME = "history.json"
CURVES_NAME = "curves.png"

#: Version of the checkpoint layout described in the module docstring.
FORMAT_VERSION = 1
_FORMAT = "perturbo-checkpoint"
_MAGIC = b"PERTURBO-CHECKPOINT\n"
_MAX_HEADER = 4096
#: Predictions are made this many samples at a time.
PREDICT_CHUNK = 1024


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt, of another format or another run."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train`.

    Attributes
    ----------
    step : int
        Steps done when it stopped.
    saved : bool
        Whether a checkpoint of that step was written (the first Ctrl-C lets the step
        finish and saves; a second one, or a backend that can no longer be read, stops
        without saving and leaves the previous checkpoint intact).
    """

    def __init__(self, step: int, saved: bool) -> None:
        super().__init__(f"interrupted at step {step}" + ("" if saved else " (not saved)"))
        self.step = step
        self.saved = saved


class _DeferredInterrupt:
    """While active, the first SIGINT only sets :attr:`requested`; a second raises KeyboardInterrupt.

    Installed only in the main thread, and not where SIGINT is ignored (a ``nohup`` job).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# -- state ---------------------------------------------------------------------------


@dataclass
class TrainerState:
    """The trainer's own part of a checkpoint.

    Parameters
    ----------
    step : int
        Updates done so far.
    epoch, position : int
        The sample stream's cursor: the next sample is ``position`` in epoch ``epoch``.
    loss_sum, loss_count : float, int
        Train losses accumulated since the last history record.
    elapsed : float
        Wall-clock seconds spent training, summed over resumed sessions.
    history : list of dict
        Records ``{"step", "train_loss", "val_accuracy", "wall_time"}``;
        ``val_accuracy`` is None on records between evaluations.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "elapsed": self.elapsed,
            "history": [dict(r) for r in self.history],
        }

    @classmethod
    def from_dict(cls, d: Any, source: str) -> TrainerState:
        """Rebuild from a checkpoint's ``trainer`` entry, checking every field's type."""

        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{source}: the trainer state is malformed ({what})")

        if not isinstance(d, dict):
            raise bad("not a mapping")
        types: dict[str, tuple[type, ...]] = {
            "step": (int,),
            "epoch": (int,),
            "position": (int,),
            "loss_sum": (float, int),
            "loss_count": (int,),
            "elapsed": (float, int),
            "history": (list,),
        }
        for key, allowed in types.items():
            if not isinstance(d.get(key), allowed) or isinstance(d.get(key), bool):
                raise bad(f"{key} = {d.get(key)!r}")
        if min(d["step"], d["epoch"], d["position"], d["loss_count"]) < 0:
            raise bad("negative counter")
        for r in d["history"]:
            if not isinstance(r, dict) or not {"step", "train_loss", "val_accuracy", "wall_time"} <= r.keys():
                raise bad(f"history record {r!r}")
        return cls(
            d["step"],
            d["epoch"],
            d["position"],
            float(d["loss_sum"]),
            d["loss_count"],
            float(d["elapsed"]),
            [dict(r) for r in d["history"]],
        )

    def add_losses(self, losses: Iterable[float], steps: int) -> None:
        """Count ``steps`` more updates and their losses (summed in step order, whatever the chunk)."""
        self.step += steps
        for v in losses:
            self.loss_sum += float(v)
        self.loss_count += steps

    def record(self, val_accuracy: float | None, wall_time: float) -> dict[str, Any]:
        """Append a history record: the mean loss since the last one, and restart that mean."""
        rec = {"step": self.step, "train_loss": self.loss_sum / self.loss_count, "val_accuracy": val_accuracy,
               "wall_time": wall_time}
        self.history.append(rec)
        self.loss_sum, self.loss_count = 0.0, 0
        return rec

    @property
    def val_accuracy(self) -> float | None:
        """The most recent validation accuracy, if any."""
        for r in reversed(self.history):
            if r["val_accuracy"] is not None:
                return float(r["val_accuracy"])
        return None


@dataclass
class Checkpoint:
    """A decoded, verified checkpoint.

    Parameters
    ----------
    config : Config
        The resolved configuration the run was trained with.
    backend_state : dict
        What ``backend.state_dict()`` returned.
    backend : dict
        ``{"name", "float_reference", "class"}``: which backend wrote it.
    trainer : TrainerState
        Step, data cursor and history.
    """

    config: Config
    backend_state: dict[str, Any]
    backend: dict[str, Any]
    trainer: TrainerState


@dataclass
class TrainResult:
    """What :func:`train` leaves behind.

    Parameters
    ----------
    out_dir, checkpoint, history_path, curves_path : Path
        The run directory and the files in it.
    step : int
        Steps done.
    val_accuracy : float or None
        Validation accuracy at the last evaluation.
    history : list of dict
        The records of ``history.json``.
    """

    out_dir: Path
    checkpoint: Path
    history_path: Path
    curves_path: Path
    step: int
    val_accuracy: float | None
    history: list[dict[str, Any]]


# -- files ---------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a directory
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, rename.

    Readers see the old file or the new one, never a mixture; whatever goes wrong
    (an exception or a KeyboardInterrupt), the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; use the usual mode
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Temporary files that a killed process (SIGKILL, power loss) could not remove."""
    for name in (CHECKPOINT_NAME, HISTORY_NAME, CURVES_NAME):
        for stale in out_dir.glob(f"{_tmp_prefix(Path(name))}*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def _json_safe(x: Any) -> Any:
    """NaN and infinities become null: history.json stays standard JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


# -- checkpoints ---------------------------------------------------------------------


def encode_checkpoint(
    cfg: Config, backend_state: dict[str, Any], backend: dict[str, Any], trainer: TrainerState
) -> bytes:
    """The bytes of a checkpoint file (layout in the module docstring).

    Raises
    ------
    TypeError
        ``backend_state`` holds objects that ``torch.load(weights_only=True)``
        cannot read back (only tensors and plain containers/scalars are allowed).
    """
    obj = {
        "config": cfg.model_dump(mode="json"),
        "backend": {**backend, "state": backend_state},
        "trainer": trainer.to_dict(),
    }
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    try:  # refuse to write what could not be read back safely
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:
        raise TypeError(
            "the backend's state_dict() holds objects a checkpoint cannot store "
            f"(only tensors, dicts, lists, tuples, str, int, float, bool, None): {err}"
        ) from err
    header = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "step": trainer.step,
        "config_name": cfg.name,
        "perturbo": __version__,
    }
    return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def decode_checkpoint(data: bytes, source: str = "<checkpoint>") -> Checkpoint:
    """Verify and decode checkpoint bytes; raise :class:`CheckpointError` on any defect."""
    if not data.startswith(_MAGIC):
        if _MAGIC.startswith(data):
            raise CheckpointError(f"{source} is truncated ({len(data)} bytes): no header")
        raise CheckpointError(f"{source} is not a perturbo checkpoint (wrong format)")
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        if len(data) < len(_MAGIC) + _MAX_HEADER:
            raise CheckpointError(f"{source} is truncated: its header is incomplete")
        raise CheckpointError(f"{source} is corrupt: no header line")
    try:
        header = json.loads(data[len(_MAGIC) : end])
        version, size, digest = header["version"], header["payload_bytes"], header["sha256"]
        if header["format"] != _FORMAT or not isinstance(size, int):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{source} is corrupt: its header is unreadable") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {version}; this perturbo "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    payload = data[end + 1 :]
    if len(payload) < size:
        raise CheckpointError(f"{source} is truncated: {len(payload)} of {size} payload bytes present")
    if len(payload) > size:
        raise CheckpointError(f"{source} is corrupt: {len(payload) - size} bytes of trailing data")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{source} is corrupt: the SHA-256 of its payload does not match")
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{source}: cannot decode the payload: {err}") from None
    if not isinstance(obj, dict) or not {"config", "backend", "trainer"} <= obj.keys():
        raise CheckpointError(f"{source}: the payload lacks config, backend or trainer")
    try:
        cfg = parse_config(obj["config"], f"{source} (its stored configuration)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    backend = obj["backend"]
    if not isinstance(backend, dict) or not isinstance(backend.get("state"), dict):
        raise CheckpointError(f"{source}: the backend state is malformed")
    info = {k: v for k, v in backend.items() if k != "state"}
    return Checkpoint(cfg, backend["state"], info, TrainerState.from_dict(obj["trainer"], source))


def save_checkpoint(
    path: str | Path,
    cfg: Config,
    backend: TrainingBackend,
    trainer: TrainerState,
    backend_info: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically: the previous file stays intact until the new one is whole."""
    path = Path(path)
    info = backend_info if backend_info is not None else _backend_info(backend, "custom", False)
    data = encode_checkpoint(cfg, backend.state_dict(), info, trainer)
    _atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint file (or the checkpoint in a run directory).

    Raises
    ------
    CheckpointError
        Missing, unreadable, truncated, corrupt, or not a perturbo checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    return decode_checkpoint(data, str(path))


def _backend_info(backend: TrainingBackend, name: str, float_reference: bool) -> dict[str, Any]:
    cls = type(backend)
    return {"name": name, "float_reference": bool(float_reference), "class": f"{cls.__module__}.{cls.__qualname__}"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_resumable(ckpt: Checkpoint, cfg: Config, info: dict[str, Any], path: Path) -> None:
    """A run may be resumed with another name or training schedule, nothing else."""

    def comparable(c: Config) -> dict[str, Any]:
        return _flatten({k: v for k, v in c.model_dump(mode="json").items() if k not in ("name", "training")})

    old, new = comparable(ckpt.config), comparable(cfg)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k} ({old.get(k)!r} in the checkpoint, now {new.get(k)!r})" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise CheckpointError(
            f"cannot resume from {path}: the configuration differs in {shown}{more}; "
            "only name and training.* may change on resume"
        )
    if ckpt.backend.get("class") != info["class"]:
        raise CheckpointError(
            f"cannot resume from {path}: it was written by backend {ckpt.backend.get('class')}, not {info['class']}"
        )


# -- evaluation ----------------------------------------------------------------------


@torch.no_grad()
def accuracy(backend: TrainingBackend, x: torch.Tensor, y: torch.Tensor, chunk: int = PREDICT_CHUNK) -> float:
    """Share of samples whose argmax of ``backend.predict`` is the label (predicted in chunks)."""
    if len(y) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(y), chunk):
        scores = backend.predict(x[i : i + chunk])
        if scores.ndim != 2 or scores.shape[0] != len(y[i : i + chunk]):
            raise ValueError(
                f"backend.predict returned shape {tuple(scores.shape)} for "
                f"{len(y[i : i + chunk])} samples; expected (samples, classes)"
            )
        correct += int((scores.argmax(dim=1).cpu() == y[i : i + chunk]).sum())
    return correct / len(y)


def evaluate(
    cfg: Config, backend: TrainingBackend, split: str = "val", splits: Splits | None = None, chunk: int = PREDICT_CHUNK
) -> float:
    """Accuracy of ``backend`` on the ``train``, ``val`` or ``test`` split of ``cfg``'s data set.

    ``splits`` avoids reloading the data set when the caller already has it.
    """
    splits = splits if splits is not None else load_dataset(cfg)
    part: Split = splits.split(split)
    return accuracy(backend, part.x, part.y, chunk)


# -- plots and history ---------------------------------------------------------------


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Train loss and validation accuracy against step, as a PNG (Agg, no display needed)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(8, 6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    steps = [r["step"] for r in history if r["train_loss"] is not None]
    losses = [r["train_loss"] for r in history if r["train_loss"] is not None]
    ax_loss.plot(steps, losses, color="tab:blue", lw=1)
    ax_loss.set_ylabel("train loss (mean since last record)")
    finite = [v for v in losses if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 20 * min(finite):
        ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    evals = [(r["step"], r["val_accuracy"]) for r in history if r["val_accuracy"] is not None]
    ax_acc.plot([s for s, _ in evals], [a for _, a in evals], "o-", color="tab:orange", ms=3)
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))


def _write_history(path: Path, cfg: Config, info: dict[str, Any], state: TrainerState) -> None:
    doc = {
        "name": cfg.name,
        "rules": [r.value for r in cfg.layer_rules()],
        "backend": info,
        "samples_per_step": cfg.rule.samples_per_step,
        "steps": cfg.training.steps,
        "history": state.history,
    }
    text = json.dumps(_json_safe(doc), indent=1) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))


# -- the loop ------------------------------------------------------------------------


def _initial_state(cfg: Config, backend: TrainingBackend, ckpt_path: Path, info: dict[str, Any], *,
                   resume: bool, overwrite: bool) -> TrainerState:
    """The trainer's state to start from: the checkpoint's (its backend state loaded) or a fresh one."""
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt, cfg, info, ckpt_path)
        try:
            backend.load_state_dict(ckpt.backend_state)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as err:
            if isinstance(err, (CheckpointError, BackendFailure)):
                raise  # a checkpoint problem already, or the link failed while loading
            raise CheckpointError(
                f"cannot resume from {ckpt_path}: its backend state does not fit this configuration "
                f"({type(err).__name__}: {err}); start afresh with --overwrite"
            ) from None
        return ckpt.trainer
    if ckpt_path.exists() and not overwrite:
        raise CheckpointError(
            f"{ckpt_path} already exists; resume it (resume=True, --resume) "
            "or start over (overwrite=True, --overwrite)"
        )
    return TrainerState()


def train(
    cfg: Config,
    backend: TrainingBackend,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    overwrite: bool = False,
    splits: Splits | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    log_every: int | None = None,
    backend_name: str = "custom",
    float_reference: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``backend`` for ``cfg.training.steps`` steps, checkpointing into ``out_dir``.

    Parameters
    ----------
    cfg : Config
        The resolved configuration (data set, seed, schedule).
    backend : TrainingBackend
        The model; with ``resume`` its state is replaced by the checkpoint's.
    out_dir : path
        Run directory; created if missing.
    resume : bool
        Continue from ``out_dir/checkpoint.ckpt``. The configuration may differ
        from the checkpoint's only in ``name`` and ``training`` (e.g. more steps).
    progress : bool
        Show a tqdm progress bar (loss and validation accuracy in its postfix).
    overwrite : bool
        Start afresh even if ``out_dir`` already holds a checkpoint.
    splits : Splits, optional
        Use these instead of ``load_dataset(cfg)``.
    checkpoint_every : int, optional
        Steps between checkpoints; default ``training.eval_every``. A checkpoint
        is always written after the last step.
    checkpoint_seconds : float, optional
        Also write a checkpoint once this many seconds have passed since the last one
        (after the step that crosses it); default ``training.checkpoint_seconds``; 0 turns
        the timer off.
    log_every : int, optional
        Steps between history records; default ``max(1, eval_every // 10)``.
        Every evaluation step is also recorded.
    backend_name, float_reference : str, bool
        Recorded in the checkpoint so ``perturbo eval`` can rebuild the backend.
    on_eval : callable, optional
        Called with every history record that holds a validation accuracy, after
        the checkpoint of that step is written (``perturbo sweep`` reports it to
        its scheduler, which may stop the run there).

    Returns
    -------
    TrainResult

    Raises
    ------
    CheckpointError
        ``resume`` without a usable checkpoint, a checkpoint of another
        configuration, or a fresh run over an existing checkpoint without ``overwrite``.

    TrainingInterrupted
        Ctrl-C (SIGINT, in the main thread): the step under way finishes and its state
        is saved before this is raised (``saved``); a second Ctrl-C stops at once.

    Notes
    -----
    If the run fails (an exception, KeyboardInterrupt), the last good
    checkpoint is left intact and no temporary file remains: resume from it.
    A backend may return from ``train_steps`` either the mean loss of its steps or
    the sequence of their losses (then the history sums them in step order, exactly
    as a one-step backend's).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    info = _backend_info(backend, backend_name, float_reference)

    state = _initial_state(cfg, backend, ckpt_path, info, resume=resume, overwrite=overwrite)
    if splits is None:
        splits = load_dataset(cfg)
    n = cfg.rule.samples_per_step
    total = cfg.training.steps
    eval_every = cfg.training.eval_every
    checkpoint_every = checkpoint_every or eval_every
    if checkpoint_seconds is None:
        checkpoint_seconds = cfg.training.checkpoint_seconds
    log_every = log_every or max(1, eval_every // 10)
    stream = SampleStream(splits.train.x, splits.train.y, cfg.seed, state.epoch, state.position)

    base, t0 = state.elapsed, time.perf_counter()

    def elapsed() -> float:
        return base + time.perf_counter() - t0

    last = state.history[-1] if state.history else None
    postfix: dict[str, str] = {}
    if last is not None:
        postfix["loss"] = f"{last['train_loss']:.4g}"
    if state.val_accuracy is not None:
        postfix["val"] = f"{state.val_accuracy:.3f}"

    def save() -> None:
        state.elapsed = elapsed()
        save_checkpoint(ckpt_path, cfg, backend, state, info)
        _write_history(out_dir / HISTORY_NAME, cfg, info, state)

    last_save = time.monotonic()
    with _DeferredInterrupt() as stop, tqdm(
        total=total,
        initial=min(state.step, total),
        disable=not progress,
        unit="step",
        desc=cfg.name,
        dynamic_ncols=True,
    ) as bar:
        bar.set_postfix(postfix, refresh=False)
        # Backends behind a link (Verilator, boards) run many steps per call: the
        # samples go over in one burst and the accelerator runs them without the host.
        max_chunk = backend.max_steps_per_call
        # The schedule writes the integer rules' LR_MULT register; a float reference trains at
        # its own Adam rate (rule.float_lr) and has no such register, so it trains without it.
        schedule = cfg.training.lr_mult_schedule if backend.lr_mult is not None else []
        while state.step < total:
            if schedule:  # the LR_MULT register in force from this step on
                backend.lr_mult = next((m for s, m in reversed(schedule) if s <= state.step), cfg.rule.lr_mult)
            boundary = min(
                [total]
                + [(state.step // m + 1) * m for m in (eval_every, log_every, checkpoint_every)]
                + [s for s, _ in schedule if s > state.step]
            )
            k = max(1, min(max_chunk, boundary - state.step))
            x, y = stream.take(n * k)
            state.add_losses(backend.train_steps(x, y, k), k)
            state.epoch, state.position = stream.cursor
            is_eval = state.step % eval_every == 0 or state.step == total
            if is_eval or state.step % log_every == 0:
                rec = state.record(accuracy(backend, splits.val.x, splits.val.y) if is_eval else None, elapsed())
                postfix["loss"] = f"{rec['train_loss']:.4g}"
                if is_eval:
                    postfix["val"] = f"{rec['val_accuracy']:.3f}"
                bar.set_postfix(postfix, refresh=False)
            due = checkpoint_seconds > 0 and time.monotonic() - last_save >= checkpoint_seconds
            if state.step % checkpoint_every == 0 or state.step == total or due or stop.requested:
                try:
                    save()
                except Exception:
                    if stop.requested:  # the backend can no longer be read: keep the last checkpoint
                        raise TrainingInterrupted(state.step, saved=False) from None
                    raise
                last_save = time.monotonic()
            bar.update(k)
            if on_eval is not None and is_eval:
                on_eval(dict(state.history[-1]))
            if stop.requested:
                raise TrainingInterrupted(state.step, saved=True)

    history_path, curves_path = out_dir / HISTORY_NAME, out_dir / CURVES_NAME
    if not history_path.exists():  # resumed a finished run whose history.json was removed
        _write_history(history_path, cfg, info, state)
    plot_history(state.history, curves_path, f"{cfg.name}: {', '.join(sorted({r.value for r in cfg.layer_rules()}))}")
    return TrainResult(out_dir, ckpt_path, history_path, curves_path, state.step, state.val_accuracy, state.history)
