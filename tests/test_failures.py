"""Every failure a user can meet ends in one ``perturbo: error:`` line, exit status 2,
with nothing lost: the last checkpoint stays whole and loadable, no temporary file is
left, and the message gives the command that resumes the run when a checkpoint exists.

Also: ``kill -9`` at any moment, then ``--resume``, ends bit-identical to an
uninterrupted run (golden and Verilator backends), and Ctrl-C saves the step under way.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import perturbo.cli as cli
import perturbo.train as train_mod
from perturbo.backend import OneStepAtATime, make_backend
from perturbo.config import load_config, parse_config
from perturbo.train import (
    CHECKPOINT_NAME,
    TrainingInterrupted,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
MGD = ROOT / "examples" / "digits-mgd-weight.yaml"
FASHION = ROOT / "examples" / "fashion-drtp.yaml"


def temp_files(out: Path) -> list[Path]:
    return sorted(out.glob(".*.tmp")) if out.exists() else []


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], first: str) -> list[str]:
    """Run the CLI in-process: exit status 2, one ``perturbo: error:`` line starting with ``first``."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert err[0].startswith(f"perturbo: error: {first}"), err[0]
    assert not any("Traceback" in line for line in err)
    return err


def small_config(tmp_path: Path, steps: int = 12, **training: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: tiny\nseed: 3\ndata: {train_limit: 200}\nrule: {name: mgd-weight, batch: 4}\n"
        f"training: {json.dumps({'steps': steps, 'eval_every': 4, **training})}\n"
    )
    return path


# -- links that never work ------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "why"),
    [
        ("socket://127.0.0.1:1", "Connection refused"),
        ("/dev/ttyNONE", "No such file or directory"),
        ("/dev/null", "Inappropriate ioctl"),
    ],
)
def test_serial_port_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: str, why: str
) -> None:
    out = tmp_path / "run"
    err = fails(capsys, ["train", str(MGD), "--backend", "serial", "--port", port, "--steps", "5",
                         "--out", str(out), "--no-progress"], f"no perturbo accelerator answers on {port}")
    assert why in err[0] and "check --port" in err[0]
    assert not out.exists(), "nothing is written before the backend answers"


# -- inputs that cannot be read ----------------------------------------------------------


@pytest.mark.parametrize(("argv", "first"), [
    (["synth", "c.yaml", "--board", "ulx3s-85f", "--placer", "quick"],
     "argument --placer: invalid choice: 'quick' (choose from 'heap', 'static', 'sa')"),
    (["train"], "the following arguments are required: CONFIG"),
    (["teach"], "argument COMMAND: invalid choice: 'teach'"),
])
def test_command_line_that_argparse_refuses(capsys: pytest.CaptureFixture[str], argv: list[str],
                                            first: str) -> None:
    """argparse's refusals are perturbo's one line too, naming the help that lists the options."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"perturbo: error: {first}"), err
    assert err[0].endswith("--help` lists the options)"), err


def test_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    fails(capsys, ["train", str(bad), "--backend", "golden"], f"{bad} is not UTF-8 text (byte 0xe9 at offset 9)")


def test_fashion_gzip_with_corrupt_deflate_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = {"train-images-idx3-ubyte.gz": 3, "train-labels-idx1-ubyte.gz": 1,
           "t10k-images-idx3-ubyte.gz": 3, "t10k-labels-idx1-ubyte.gz": 1}
    for name, ndim in idx.items():
        header = bytes([0, 0, 8, ndim]) + b"".join((4).to_bytes(4, "big") for _ in range(ndim))
        (tmp_path / name).write_bytes(gzip.compress(header + bytes(4 ** ndim)))
    good = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    # keep the gzip header, break the deflate stream after it
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(good[:10] + b"\xff" * 40 + good[-8:])
    monkeypatch.setenv("PERTURBO_FASHION_MNIST_DIR", str(tmp_path))
    err = fails(capsys, ["train", str(FASHION), "--backend", "golden", "--out", str(tmp_path / "run")],
                f"cannot read {tmp_path / 'train-images-idx3-ubyte.gz'}")
    assert "reinstall" in err[0]


# -- checkpoints whose hash is right but whose content does not fit --------------------


@pytest.mark.parametrize("defect", ["shape", "missing key"])
def test_checkpoint_with_wrong_tensors(tmp_path: Path, capsys: pytest.CaptureFixture[str], defect: str) -> None:
    cfg = small_config(tmp_path, steps=4)
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg), "--backend", "golden", "--out", str(out), "--no-progress"]) == 0
    path = out / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    state = dict(ckpt.backend_state)
    if defect == "shape":
        state["weights"] = [w[:, :-1] for w in state["weights"]]
    else:
        del state["weights"]
    data = encode_checkpoint(ckpt.config, state, ckpt.backend, ckpt.trainer)
    decode_checkpoint(data)  # the hash and the layout are right
    path.write_bytes(data)
    capsys.readouterr()
    err = fails(capsys, ["train", str(cfg), "--backend", "golden", "--out", str(out), "--steps", "8",
                         "--resume"], f"cannot resume from {path}: its backend state does not fit")
    assert "--overwrite" in err[0]
    assert path.read_bytes() == data, "the checkpoint is left as it was"


# -- run directories that cannot be written ------------------------------------------------


def test_run_directory_that_is_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second checkpoint cannot be written (ENOSPC): the first stays, whole, and the message resumes it."""
    cfg = small_config(tmp_path)
    out = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 3:  # checkpoint, history and their directory, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(train_mod.os, "fsync", fsync)
    err = fails(capsys, ["train", str(cfg), "--backend", "golden", "--out", str(out), "--no-progress"],
                f"cannot write the run directory {out}")
    monkeypatch.undo()
    assert "No space left on device" in err[0]
    assert err[1].strip() == f"the checkpoint of step 4 in {out} is intact; continue with:"
    assert err[2].strip() == f"perturbo train {cfg} --out {out} --resume --backend golden"
    assert load_checkpoint(out).trainer.step == 4 and temp_files(out) == []
    assert cli.main(err[2].strip().split()[1:] + ["--no-progress"]) == 0
    assert load_checkpoint(out).trainer.step == 12


def test_run_directory_that_is_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root writes anywhere: refuse the way a read-only directory does
        def mkstemp(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

        monkeypatch.setattr(train_mod.tempfile, "mkstemp", mkstemp)
    try:
        err = fails(capsys, ["train", str(cfg), "--backend", "golden", "--out", str(out), "--no-progress"],
                    f"cannot write the run directory {out}")
    finally:
        out.chmod(0o755)
    assert "Permission denied" in err[0]
    assert "no checkpoint was written" in err[1]
    assert list(out.iterdir()) == []


# -- Ctrl-C and kill -9 ---------------------------------------------------------------------


class InterruptAt(OneStepAtATime):
    """The golden integer model, sending this process SIGINT (Ctrl-C) during step ``at``."""

    def __init__(self, cfg: Any, at: int) -> None:
        from perturbo.golden.integer import IntegerModel

        self.model, self.at, self.steps = IntegerModel(cfg), at, 0

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.model.train_step(x, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@pytest.fixture
def terminal_sigint() -> Any:
    """Python's own SIGINT handler, as in a terminal, whatever an earlier test left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("terminal_sigint")
def test_ctrl_c_saves_the_step_under_way(tmp_path: Path) -> None:
    from perturbo.golden.integer import IntegerModel

    cfg = parse_config({"seed": 5, "rule": {"batch": 4}, "training": {"steps": 20, "eval_every": 8}})
    whole = IntegerModel(cfg)
    train(cfg, whole, tmp_path / "whole", progress=False)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, InterruptAt(cfg, 11), tmp_path / "cut", progress=False)
    assert stop.value.saved and stop.value.step == 11
    assert load_checkpoint(tmp_path / "cut").trainer.step == 11, "saved at the step Ctrl-C came in, not at 8"
    resumed = InterruptAt(cfg, 0)  # the same backend class, never interrupting
    train(cfg, resumed, tmp_path / "cut", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.weights, whole.weights, strict=True))
    a, b = (load_checkpoint(tmp_path / d).trainer.history for d in ("whole", "cut"))
    assert [{**r, "wall_time": 0} for r in a] == [{**r, "wall_time": 0} for r in b]


def run_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 2 threads: 5x slower under load
    return subprocess.Popen([sys.executable, "-m", "perturbo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(path: Path, proc: subprocess.Popen[str], timeout: float, after: int = 0) -> int:
    """The step of the first checkpoint at ``path`` later than step ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (step := load_checkpoint(path).trainer.step) > after:
            return step
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {after} within {timeout} s")


def kill9_and_resume(tmp_path: Path, backend: str, steps: int, seconds: str) -> None:
    """``kill -9`` a CLI run right after its second time-interval checkpoint; ``--resume`` must
    end bit-identical (weights and history) to an uninterrupted golden run.

    The kill follows a checkpoint the test has seen, not a fixed delay: a faster simulator
    or an idle machine must not let the run finish first."""
    from perturbo.golden.integer import IntegerModel

    torch.set_num_threads(1)
    out = tmp_path / backend
    common = ["train", str(MGD), "--backend", backend, "--out", str(out), "--steps", str(steps), "--no-progress"]
    proc = run_cli(*common, "--checkpoint-seconds", seconds)
    first = wait_for_checkpoint(out / CHECKPOINT_NAME, proc, 300)
    wait_for_checkpoint(out / CHECKPOINT_NAME, proc, 300, after=first)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    kept = load_checkpoint(out)
    assert 0 < first < kept.trainer.step < steps, "killed part-way, a time-interval checkpoint kept"
    resumed = run_cli(*common, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err

    cfg = load_config(MGD)
    cfg = parse_config({**cfg.model_dump(mode="json"),
                        "training": {**cfg.training.model_dump(mode="json"), "steps": steps}})
    gold = IntegerModel(cfg)
    train(cfg, gold, tmp_path / "whole", progress=False, backend_name="golden")
    done = load_checkpoint(out)
    assert done.trainer.step == steps
    assert all(torch.equal(a, b) for a, b in zip(done.backend_state["weights"], gold.weights, strict=True))
    whole = load_checkpoint(tmp_path / "whole").trainer.history
    assert [{**r, "wall_time": 0} for r in done.trainer.history] == [{**r, "wall_time": 0} for r in whole]


def test_kill_9_then_resume_golden(tmp_path: Path) -> None:
    kill9_and_resume(tmp_path, "golden", steps=600, seconds="0.3")


def test_kill_9_then_resume_verilator(tmp_path: Path) -> None:
    kill9_and_resume(tmp_path, "verilator", steps=512, seconds="0.5")


# -- a co-simulation that dies or freezes, a board that stops answering -----------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_cosim_that_dies_or_freezes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The harness is SIGKILLed (a co-simulation that dies) or SIGSTOPped (one that freezes,
    as a board that stops answering does) after the first checkpoint."""
    import yaml

    data = yaml.safe_load(MGD.read_text())  # the example's hardware: its cached verilated model
    data["training"] = {"steps": 40, "eval_every": 4}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))

    def build(*args: Any, **kwargs: Any) -> Any:
        backend = make_backend(*args, **kwargs)
        backend.link.timeout, backend.link.retries = 0.5, 1  # a frozen device fails fast
        pid = backend.sim._process.pid
        real_train, real_close, calls = backend.train_steps, backend.close, []

        def train_steps(*a: Any) -> Any:
            calls.append(1)
            if len(calls) == 6:  # log_every is 1 step here: a call per step
                os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            return real_train(*a)

        def close() -> None:
            os.kill(pid, signal.SIGCONT)
            real_close()

        backend.train_steps, backend.close = train_steps, close
        return backend

    monkeypatch.setattr(cli, "make_backend", build)
    out = tmp_path / "run"
    err = fails(capsys, ["train", str(cfg), "--out", str(out), "--no-progress"],
                "training on the verilator backend failed: ")
    assert "run again" in err[0]
    assert err[1].strip() == f"the checkpoint of step 4 in {out} is intact; continue with:"
    assert err[2].strip() == f"perturbo train {cfg} --out {out} --resume"
    assert load_checkpoint(out).trainer.step == 4 and temp_files(out) == []


# -- inputs that would exhaust the machine ----------------------------------------------------


#: The 477-byte kind: nine aliases of nine aliases ..., 9^9 leaves once expanded.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
BAD = "invalid configuration in"


@pytest.mark.parametrize(
    ("text", "first", "line"),
    [
        (ALIAS_BOMB, "malformed YAML in", "YAML aliases (*name) are not allowed"),
        ("network: {init_scale: .inf}\n", BAD, "network.init_scale = inf: Input should be a finite number"),
        ("rule: {float_lr: .nan}\n", BAD, "rule.float_lr = nan: Input should be a finite number"),
        ("hardware: {lanes: true}\n", BAD, "hardware.lanes = True: true/false is not a valid value"),
        ("network: {layers: [64, true, 10]}\n", BAD, "network.layers = [64, True, 10]: true/false"),
        ("hardware: {sample_depth: 200000}\n", BAD,
         "hardware.sample_depth = 200000: Input should be less than or equal to 65536"),
        ("network: {layers: [" + ", ".join(["4096"] * 64) + "]}\n", BAD,
         "network.layers = [4096, 4096, 4096, 4096, ...] has 1057222656 weights and biases; at most 4194304"),
    ],
    ids=["alias-bomb", "inf", "nan", "lanes-true", "bool-in-list", "sample-depth", "64x4096"],
)
def test_inputs_that_would_exhaust_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, first: str, line: str
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    err = fails(capsys, ["config", "show", str(path)], f"{first} {path}")
    assert time.perf_counter() - t0 < 5, "refused before anything large is built"
    assert any(line in e for e in err), err


def test_gen_refuses_what_no_target_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("network: {layers: [784, 32, 10]}\nhardware: {sample_depth: 65536}\n")
    t0 = time.perf_counter()
    err = fails(capsys, ["gen", str(path), "-o", str(tmp_path / "build")], f"invalid configuration in {path}: "
                "the accelerator needs 417980208 bits of memory")
    assert "hardware.sample_depth = 65536: at most 377 fit" in err[0]
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "build").exists()


@pytest.mark.parametrize("port", ["65536", "70000", "-1", "99999999999999999999"])
def test_harness_port_out_of_range(port: str) -> None:
    from perturbo.sim.backend import COSIM_TOP, cosim_verilog
    from perturbo.sim.cosim import build_harness

    binary = build_harness(cosim_verilog(load_config(MGD)), COSIM_TOP)  # cached
    result = subprocess.run([str(binary), "--port", port], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"harness: --port must be an integer from 0 to 65535, not '{port}'" in result.stderr


# -- a run that cannot be stopped --------------------------------------------------------------


def test_run_left_going_is_aborted_by_the_next_session(capsys: pytest.CaptureFixture[str]) -> None:
    """A host starts TRAIN for 2^32 - 1 steps and goes away; every write is then refused. The
    next session's driver ABORTs it (the step in progress ends whole) and trains as golden."""
    from hdl_configs import VERIFY_CONFIGS

    from perturbo.data import load_dataset
    from perturbo.hdl.bus import Command, Reg, Space, Status
    from perturbo.host.accelerator import AcceleratorBackend
    from perturbo.host.link import LinkError
    from perturbo.sim.backend import VerilatorBackend
    from perturbo.verify import SideBySide

    cfg = VERIFY_CONFIGS["alr"]
    first = VerilatorBackend(cfg)
    try:
        link = first.link
        x = load_dataset(cfg).train.x[: first.samples_per_step]
        first._load_samples(x, torch.zeros(x.shape[0], dtype=torch.int64))
        link.write_word(Space.REGS, Reg.SAMPLE_COUNT, x.shape[0])
        link.write_word(Space.REGS, Reg.STEPS, 0xFFFF_FFFF)
        link.write_word(Space.REGS, Reg.COMMAND, int(Command.TRAIN))
        time.sleep(0.5)
        assert link.read_word(Space.REGS, Reg.STATUS) & Status.BUSY
        with pytest.raises(LinkError, match="refused"):
            link.write_word(Space.REGS, Reg.STEPS, 1)
        second = AcceleratorBackend(cfg, link)  # what `perturbo train --backend serial` does
        assert "aborted it" in capsys.readouterr().err
        assert not link.read_word(Space.REGS, Reg.STATUS) & Status.BUSY
        diff = SideBySide(cfg, second).advance(6)
        assert diff is None, diff
    finally:
        first.close()
