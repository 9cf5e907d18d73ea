"""The trainer: atomic checkpoints, bit-identical resume, corruption detection, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import perturbo.cli as cli
import perturbo.train as train_mod
from perturbo.backend import OneStepAtATime
from perturbo.config import Config, parse_config
from perturbo.train import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainerState,
    encode_checkpoint,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)


class DummyBackend(OneStepAtATime):
    """A tiny deterministic learner with its own RNG: resuming must restore all of it.

    Integer weights (classes x features) move towards each sample's label row, plus
    noise from the backend's generator; ``fail_at`` raises ``exc`` on that step.
    """

    def __init__(self, cfg: Config, fail_at: int | None = None, exc: type[BaseException] = RuntimeError) -> None:
        self.w = torch.zeros(cfg.network.layers[-1], cfg.network.layers[0], dtype=torch.int64)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.steps = 0
        self.fail_at, self.exc = fail_at, exc
        self.lr_mult: int | None = None

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        if self.fail_at is not None and self.steps + 1 == self.fail_at:
            raise self.exc(f"dummy failure at step {self.fail_at}")
        self.steps += 1
        scores = self.predict(x).double()
        loss = float((scores.max(dim=1).values - scores.gather(1, labels[:, None])[:, 0]).mean())
        onehot = torch.nn.functional.one_hot(labels, self.w.shape[0]).T.to(torch.int64)
        self.w += onehot @ x.to(torch.int64)
        self.w += torch.randint(-50, 51, self.w.shape, generator=self.gen)
        return loss + float(torch.rand((), generator=self.gen, dtype=torch.float64))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.int64) @ self.w.T

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.clone(), "gen": self.gen.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = state["w"].clone()
        self.gen.set_state(state["gen"])
        self.steps = state["steps"]


def make_cfg(steps: int = 20, seed: int = 7) -> Config:
    # 6 samples per step over 50 training samples: epochs end in the middle of steps
    return parse_config(
        {
            "name": "dummy",
            "seed": seed,
            "data": {"train_limit": 50},
            "rule": {"name": "mgd-weight", "tau_theta": 2, "batch": 3},
            "training": {"steps": steps, "eval_every": 5},
        }
    )


def temp_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".tmp")]


def without_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in history]


def run(cfg: Config, out: Path, backend: DummyBackend | None = None, **kw: Any) -> DummyBackend:
    backend = backend or DummyBackend(cfg)
    train(cfg, backend, out, progress=False, **kw)
    return backend


def test_samples_per_step_crosses_epochs() -> None:
    assert make_cfg().rule.samples_per_step == 6


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_resume_after_failure_is_bit_identical(tmp_path: Path, exc: type[BaseException]) -> None:
    cfg = make_cfg()
    whole = run(cfg, tmp_path / "whole")

    out = tmp_path / "broken"
    with pytest.raises(exc, match="dummy failure at step 13"):
        run(cfg, out, DummyBackend(cfg, fail_at=13, exc=exc))
    assert temp_files(out) == []
    kept = load_checkpoint(out / CHECKPOINT_NAME)
    assert kept.trainer.step == 10, "the last good checkpoint survives the failure"
    assert (kept.trainer.epoch, kept.trainer.position) == (1, 10)  # 60 samples of 50

    resumed = run(cfg, out, DummyBackend(cfg), resume=True)
    assert torch.equal(resumed.w, whole.w)
    assert torch.equal(resumed.gen.get_state(), whole.gen.get_state())
    a = load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME)
    b = load_checkpoint(out / CHECKPOINT_NAME)
    assert without_time(a.trainer.history) == without_time(b.trainer.history)
    assert (
        (a.trainer.step, a.trainer.epoch, a.trainer.position)
        == (b.trainer.step, b.trainer.epoch, b.trainer.position)
        == (20, 2, 20)
    )
    hist = json.loads((out / "history.json").read_text())["history"]
    assert without_time(hist) == without_time(a.trainer.history)


def test_resume_with_more_steps_equals_longer_run(tmp_path: Path) -> None:
    whole = run(make_cfg(steps=30), tmp_path / "whole")
    run(make_cfg(steps=20), tmp_path / "ext")
    extended = run(make_cfg(steps=30), tmp_path / "ext", resume=True)
    assert torch.equal(extended.w, whole.w)
    a = load_checkpoint(tmp_path / "whole").trainer.history
    b = load_checkpoint(tmp_path / "ext").trainer.history
    assert without_time(a) == without_time(b)


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    run(make_cfg(steps=5), tmp_path)
    with pytest.raises(CheckpointError, match=r"differs in seed \(7 in the checkpoint, now 8\)"):
        run(make_cfg(steps=10, seed=8), tmp_path, resume=True)


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        run(make_cfg(), tmp_path, resume=True)


def test_fresh_run_does_not_clobber_a_checkpoint(tmp_path: Path) -> None:
    run(make_cfg(steps=5), tmp_path)
    with pytest.raises(CheckpointError, match="already exists"):
        run(make_cfg(steps=5), tmp_path)
    run(make_cfg(steps=10), tmp_path, overwrite=True)
    assert load_checkpoint(tmp_path).trainer.step == 10


def test_interrupted_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(make_cfg(steps=10), tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def fsync(fd: int) -> None:
        raise KeyboardInterrupt("power cut while writing")

    monkeypatch.setattr(train_mod.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(steps=20), tmp_path, resume=True)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert temp_files(tmp_path) == []


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint from a killed process")
    run(make_cfg(steps=5), tmp_path, overwrite=True)
    assert not stale.exists()


def test_outputs_png_history_and_evaluate(tmp_path: Path) -> None:
    cfg = make_cfg(steps=10)
    backend = DummyBackend(cfg)
    result = train(cfg, backend, tmp_path, progress=False, log_every=2)
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    doc = json.loads((tmp_path / "history.json").read_text())
    assert [r["step"] for r in doc["history"]] == [2, 4, 5, 6, 8, 10]
    assert [r["step"] for r in doc["history"] if r["val_accuracy"] is not None] == [5, 10]
    assert all({"step", "train_loss", "val_accuracy", "wall_time"} <= r.keys() for r in doc["history"])
    assert result.val_accuracy == doc["history"][-1]["val_accuracy"]
    acc = evaluate(cfg, backend, "val")
    assert acc == result.val_accuracy and 0.0 <= evaluate(cfg, backend, "test") <= 1.0


# -- corrupt checkpoints -------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> bytes:
    cfg = make_cfg(steps=5)
    run(cfg, tmp_path / "run")
    return (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-10], "truncated: .* payload bytes present"),
        (lambda b: b[:30], "truncated: its header is incomplete"),
        (lambda b: b[:5], r"truncated \(5 bytes\)"),
        (lambda b: b"", r"truncated \(0 bytes\)"),
        (lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:], "corrupt: the SHA-256"),
        (lambda b: b + b"\x00", "corrupt: 1 bytes of trailing data"),
        (lambda b: b"PK\x03\x04" + b[4:], "not a perturbo checkpoint"),
        (lambda b: b.replace(b'"version": 1', b'"version": 9', 1), "format version 9"),
        (lambda b: b.replace(b'"sha256"', b'"sha257"', 1), "header is unreadable"),
    ],
    ids=[
        "payload-cut",
        "header-cut",
        "magic-cut",
        "empty",
        "bit-flip",
        "trailing",
        "wrong-format",
        "future-version",
        "bad-header",
    ],
)
def test_damaged_checkpoint_is_refused(tmp_path: Path, good: bytes, mangle: Any, message: str) -> None:
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(mangle(good))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_unsafe_backend_state_is_refused_before_writing(tmp_path: Path) -> None:
    cfg = make_cfg()

    class Odd(DummyBackend):
        def state_dict(self) -> dict[str, Any]:
            return {"w": self.w, "odd": Path("x")}

    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "c.ckpt", cfg, Odd(cfg), TrainerState())
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_layout(good: bytes) -> None:
    magic, header, payload = good.split(b"\n", 2)
    assert magic == b"PERTURBO-CHECKPOINT"
    head = json.loads(header)
    assert head["format"] == "perturbo-checkpoint" and head["version"] == 1
    assert head["payload_bytes"] == len(payload) and head["step"] == 5
    cfg = make_cfg(steps=5)
    state = TrainerState(step=5)
    assert encode_checkpoint(cfg, {}, {}, state).startswith(b"PERTURBO-CHECKPOINT\n{")


# -- the command line ----------------------------------------------------------------


def test_cli_eval_corrupt_checkpoint_exits_2(tmp_path: Path, good: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(good[: len(good) // 2])
    assert cli.main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and str(path) in err and "Traceback" not in err


def test_cli_train_unavailable_backend_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nrule: {name: bp}\n")
    assert cli.main(["train", str(cfg), "--backend", "verilator", "--out", str(tmp_path)]) == 2
    assert "--backend golden" in capsys.readouterr().err
    cfg.write_text("name: c\n")
    assert cli.main(["train", str(cfg), "--backend", "serial", "--out", str(tmp_path)]) == 2
    assert "--port" in capsys.readouterr().err


def test_cli_train_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  step: 10\n")
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "training.step" in err and "steps, eval_every" in err


def test_cli_train_resume_and_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[tuple[str, bool]] = []

    def fake_make_backend(
        cfg: Config, name: str, float_reference: bool = False, port: str | None = None, waves: object = None
    ) -> DummyBackend:
        built.append((name, float_reference))
        return DummyBackend(cfg)

    monkeypatch.setattr(cli, "make_backend", fake_make_backend)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: tiny\ndata:\n  train_limit: 40\ntraining:\n  eval_every: 4\n")
    out = tmp_path / "run"
    base = ["train", str(cfg), "--out", str(out), "--no-progress", "--backend", "golden"]
    assert cli.main([*base, "--steps", "4", "--float"]) == 0
    assert cli.main([*base, "--steps", "6"]) == 2  # would clobber the checkpoint
    assert cli.main([*base, "--steps", "8", "--float", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "already exists" in captured.err and "tiny: step 8" in captured.out
    ckpt = load_checkpoint(out)
    assert ckpt.trainer.step == 8 and ckpt.config.training.steps == 8
    assert ckpt.backend["name"] == "golden" and ckpt.backend["float_reference"] is True

    assert cli.main(["eval", str(out), "--split", "val"]) == 0
    assert "tiny at step 8: val accuracy" in capsys.readouterr().out
    assert built[-1] == ("golden", True)


def test_cli_default_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "make_backend", lambda cfg, name, **options: DummyBackend(cfg))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("name: my run\ntraining:\n  steps: 2\n  eval_every: 1\n")
    assert cli.main(["train", "c.yaml", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "my_run" / CHECKPOINT_NAME).is_file()


def test_cli_interrupted_run_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        cli,
        "make_backend",
        lambda cfg, name, **options: DummyBackend(cfg, fail_at=3, exc=KeyboardInterrupt),
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  steps: 5\n  eval_every: 2\n")
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 130
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(out).trainer.step == 2 and temp_files(out) == []


def test_lr_mult_schedule_reaches_the_backend(tmp_path: Path) -> None:
    from perturbo.golden.integer import IntegerModel

    class Recording(IntegerModel):
        seen: list[int] = []

        def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
            self.seen.append(self.lr_mult)
            return super().train_step(x, labels)

    cfg = parse_config(
        {
            "rule": {"name": "tpsgd-l2", "batch": 2, "lr_mult": 5},
            "training": {"steps": 8, "eval_every": 4, "lr_mult_schedule": [[3, 2], [6, 1]]},
        }
    )
    model = Recording(cfg)
    train(cfg, model, tmp_path, progress=False)
    assert model.seen == [5, 5, 5, 2, 2, 2, 1, 1]
    # resuming mid-schedule restores the multiplier in force at that step
    resumed = Recording(cfg)
    resumed.seen = []
    cfg10 = parse_config(
        {**cfg.model_dump(mode="json"), "training": {**cfg.training.model_dump(mode="json"), "steps": 10}}
    )
    train(cfg10, resumed, tmp_path, resume=True, progress=False)
    assert resumed.seen == [1, 1]


def test_float_reference_trains_without_the_lr_mult_schedule(tmp_path: Path) -> None:
    """The schedule writes the integer rules' LR_MULT; the float twin of an example that has one
    still trains (at ``rule.float_lr``), as ``perturbo train --float`` and the benches run it."""
    from perturbo.backend import make_backend

    cfg = parse_config(
        {
            "rule": {"name": "tpsgd-l2", "batch": 2, "lr_mult": 4},
            "training": {"steps": 4, "eval_every": 2, "lr_mult_schedule": [[2, 2]]},
        }
    )
    model = make_backend(cfg, "golden", float_reference=True)
    assert model.lr_mult is None
    result = train(cfg, model, tmp_path, progress=False, float_reference=True)
    assert result.step == 4 and result.val_accuracy is not None
