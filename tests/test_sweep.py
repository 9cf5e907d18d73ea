"""``perturbo sweep``: bad sweep files fail before any trial, and tiny sweeps run, stop early and resume on Ray.

The sweeps run a few golden digits trials of a few hundred steps each through one
local Ray instance shared by this module (Ray takes seconds to start).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from perturbo.backend import make_backend
from perturbo.cli import main
from perturbo.config import load_config
from perturbo.data import load_dataset
from perturbo.sweep import WORKER_NICENESS_ENV, _mark_pareto
from perturbo.train import evaluate, train

# One worker runs this module: the tests start and join local Ray instances, one at a time.
pytestmark = pytest.mark.xdist_group("ray")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write_sweep(tmp_path: Path, name: str = "sweep.yaml", **fields: object) -> Path:
    doc = {"name": "t", "base": str(EXAMPLES / "digits-drtp.yaml"), "steps": 300, "eval_every": 100,
           "space": {"rule.lr_shift": {"grid": [[9, 6], [11, 6]]}}}
    doc.update(fields)
    doc = {k: v for k, v in doc.items() if v is not None}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("perturbo: error: ")
    return lines[0]


# -- bad sweep files: one line, exit 2, nothing started -------------------------------

BAD = [
    ("unknown-key", {"trails": 3}, "trails: unknown key", "did you mean 'trials'"),
    ("unknown-domain", {"space": {"seed": {"grdi": [1, 2]}}}, "space.seed.grdi: unknown key", "grid"),
    ("empty-space", {"space": {}}, "space is empty", None),
    ("not-a-config-key", {"space": {"rule.lr_shfit": {"grid": [5]}}}, "space.rule.lr_shfit: not a configuration key",
     "did you mean 'rule.lr_shift'"),
    ("not-a-leaf", {"space": {"rule": {"grid": [5]}}}, "space.rule: not a configuration key", None),
    ("empty-grid", {"space": {"seed": {"grid": []}}}, "space.seed: grid is empty", None),
    ("value-refused", {"space": {"rule.batch": {"grid": [8, 0]}}}, "space.rule.batch = 0:", "greater than or equal"),
    ("two-kinds", {"space": {"seed": {"grid": [1], "choice": [2]}}}, "space.seed: give exactly one of", None),
    ("tpe-grid", {"method": "tpe", "trials": 2}, "method tpe samples its values", None),
    ("grid-random", {"space": {"rule.float_lr": {"loguniform": [1e-4, 1e-2]}}}, "method grid takes grid values",
     None),
    ("bad-range", {"method": "random", "space": {"network.init_scale": {"uniform": [1.0, 0.5]}}},
     "low <= high", None),
    ("bad-method", {"method": "bayes"}, "method:", "'grid', 'random' or 'tpe'"),
    ("missing-base", {"base": "nowhere.yaml"}, "cannot read configuration", None),
    ("synth-unknown-key", {"synth": {"bord": "icebreaker"}}, "synth.bord: unknown key", "did you mean 'board'"),
    ("synth-not-a-board", {"synth": {"board": "de10-nano"}}, "synth.board: 'de10-nano' is not a board",
     "icebreaker"),
]


@pytest.mark.parametrize(("case", "fields", "expect", "also"), BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_file_fails_before_any_trial(case: str, fields: dict, expect: str, also: str | None,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, **fields)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and expect in line, line
    if also:
        assert also in line, line
    assert not out.exists(), "nothing may start for a bad sweep file"


def test_bad_base_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("rule: {lr_shfit: 9}\ndata: {datset: digits}\n")
    assert main(["sweep", str(write_sweep(tmp_path, base="base.yaml")), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "base: invalid configuration" in line and "rule.lr_shfit" in line and "data.datset" in line
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\nspace: {\n")
    assert main(["sweep", str(path)]) == 2
    assert "malformed YAML" in one_error_line(capsys)


def test_aliases_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep file is read like a configuration: an alias bomb is refused before it expands."""
    path = tmp_path / "bomb.yaml"
    path.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n')
    assert main(["sweep", str(path)]) == 2
    assert "YAML aliases (*name) are not allowed" in one_error_line(capsys)


@pytest.mark.parametrize(("module", "method"), [("ray", "grid"), ("optuna", "tpe")])
def test_missing_extra_names_it(module: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    extra = {"space": {"rule.lr_shift": {"choice": [[9, 6], [11, 6]]}}} if method == "tpe" else {}
    path = write_sweep(tmp_path, method=method, trials=2, **extra)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "pip install 'perturbo[sweep]'" in line and ("Ray" in line if module == "ray" else "Optuna" in line)


def test_dry_run_lists_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, space={"rule.lr_shift": {"grid": [[9, 6], [11, 6]]}, "seed": {"grid": [1, 2, 3]}})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 trials (grid) of 300 steps" in out and out.count("rule.lr_shift=") == 6


# -- on Ray ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # as perturbo sweep's own local instance
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def val_of_ordinary_run(cfg_path: Path, tmp_path: Path) -> float:
    """Validation accuracy of a plain training run of a configuration file (what `perturbo train` does)."""
    torch.set_num_threads(1)
    cfg = load_config(cfg_path)
    splits = load_dataset(cfg)
    backend = make_backend(cfg, "golden")
    out = tmp_path / f"plain-{cfg_path.parent.name}-{cfg_path.stem}"
    train(cfg, backend, out, progress=False, splits=splits, backend_name="golden")
    return evaluate(cfg, backend, "val", splits=splits)


def test_grid_sweep_runs_ordinary_trials_and_picks_on_validation(ray_address: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, space={"rule.lr_shift": {"grid": [[9, 6], [13, 6]]}, "seed": {"grid": [1, 2]}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "4 trials" in capsys.readouterr().out
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {(r["rule.lr_shift"], r["seed"]) for r in rows} == {
        (s, d) for s in ("[9, 6]", "[13, 6]") for d in ("1", "2")}
    assert "test" not in " ".join(rows[0]), "a sweep never looks at the test split"
    for r in rows:  # each trial is an ordinary run with its own directory, checkpoint and history
        run = Path(r["run_dir"])
        assert (run / "checkpoint.ckpt").is_file() and (run / "curves.png").is_file()
        history = json.loads((run / "history.json").read_text())["history"]
        assert history[-1]["step"] == 300 and history[-1]["val_accuracy"] == pytest.approx(float(r["val_accuracy"]))
    vals = [float(r["val_accuracy"]) for r in rows]
    assert float(rows[0]["val_accuracy"]) == max(vals), "the best trial (first row) has the best validation accuracy"
    doc = json.loads((out / "results.json").read_text())
    assert doc["best"]["trial"] == rows[0]["trial"] and len(doc["trials"]) == 4
    best = load_config(out / "best.yaml")
    params = doc["best"]["params"]
    assert best.seed == params["seed"] and best.layer_lr_shifts() == params["rule.lr_shift"]
    assert best.training.steps == 300
    # the best configuration, trained as an ordinary run, reproduces the trial exactly
    assert val_of_ordinary_run(out / "best.yaml", tmp_path) == pytest.approx(doc["best"]["val_accuracy"], abs=0)
    assert (out / "curves.png").stat().st_size > 0 and (out / "keys.png").stat().st_size > 0
    # a second start over a finished sweep is refused; resuming an empty directory too
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    assert "--resume" in one_error_line(capsys)
    assert main(["sweep", str(path), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume" in one_error_line(capsys)


def test_hopeless_trials_stop_early(ray_address: str, tmp_path: Path) -> None:
    # lr_shift 30 learns nothing; one trial at a time, so ASHA has the good trial's rung to compare with
    path = write_sweep(tmp_path, space={"rule.lr_shift": {"grid": [[11, 6], [30, 30]]}}, max_concurrent=1,
                       early_stop={"grace_steps": 100, "reduction_factor": 2})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    rows = {r["rule.lr_shift"]: r for r in read_csv(out / "results.csv")}
    assert rows["[11, 6]"]["status"] == "done" and int(rows["[11, 6]"]["steps"]) == 300
    assert rows["[30, 30]"]["status"] == "stopped" and int(rows["[30, 30]"]["steps"]) < 300
    assert float(rows["[30, 30]"]["val_accuracy"]) < float(rows["[11, 6]"]["val_accuracy"])


def test_random_and_tpe_share_one_interface(ray_address: str, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    space = {"rule.batch": {"choice": [4, 8]}, "network.init_scale": {"uniform": [0.3, 0.7]},
             "rule.float_lr": {"loguniform": [1e-4, 1e-2]}, "seed": {"randint": [1, 3]}}
    for method in ("random", "tpe"):
        path = write_sweep(tmp_path, f"{method}.yaml", method=method, trials=2, steps=100, space=space)
        assert main(["sweep", str(path), "--out", str(tmp_path / method)]) == 0
        rows = read_csv(tmp_path / method / "results.csv")
        assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
        for r in rows:
            assert 0.3 <= float(r["network.init_scale"]) <= 0.7 and r["seed"] in ("1", "2", "3")
            assert 1e-4 <= float(r["rule.float_lr"]) <= 1e-2 and r["rule.batch"] in ("4", "8")
            assert load_config(Path(r["run_dir"]) / "config.yaml").rule.batch == int(r["rule.batch"])


def test_interrupted_sweep_resumes(ray_address: str, tmp_path: Path) -> None:
    # three trials one after another; the sweep process gets Ctrl-C once the first has finished
    path = write_sweep(tmp_path, base=str(EXAMPLES / "digits-mgd-node.yaml"), steps=600, eval_every=200,
                       space={"seed": {"grid": [1, 2, 3]}}, max_concurrent=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "perturbo.cli", "sweep", str(path), "--out", str(out),
                             "--address", ray_address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    first = None
    deadline = time.monotonic() + 240
    try:
        while first is None and time.monotonic() < deadline and proc.poll() is None:
            for hist in (out / "trials").glob("*/history.json"):
                try:
                    if json.loads(hist.read_text())["history"][-1]["step"] == 600:
                        first = hist.parent
                except (ValueError, KeyError, IndexError):
                    pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = proc.stderr.read().decode()
    assert first is not None, f"the first trial did not finish: {stderr[-2000:]}"
    assert rc == 130 and "--resume" in stderr, (rc, stderr[-2000:])
    before = {p.parent.name: p.read_bytes() for p in (out / "trials").glob("*/checkpoint.ckpt")}
    finished_ckpt = before[first.name]
    assert len(before) < 3 or not all(
        json.loads((out / "trials" / t / "history.json").read_text())["history"][-1]["step"] == 600 for t in before
    ), "the sweep was killed after it had finished; nothing left to resume"

    assert main(["sweep", str(path), "--out", str(out), "--resume"]) == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    assert sorted(r["seed"] for r in rows) == ["1", "2", "3"], "every grid point once, none repeated"
    assert (first / "checkpoint.ckpt").read_bytes() == finished_ckpt, "a finished trial is not trained again"
    # every trial, resumed or not, ends where an uninterrupted ordinary run of its configuration ends
    for r in rows:
        expect = val_of_ordinary_run(Path(r["run_dir"]) / "config.yaml", tmp_path)
        assert float(r["val_accuracy"]) == pytest.approx(expect, abs=0), r


def test_pareto_front_is_the_trials_no_other_beats() -> None:
    def row(name: str, acc: float | None, logic: int | None, status: str = "done", synth: str = "ok") -> dict:
        return {"trial": name, "status": status, "val_accuracy": acc, "logic": logic, "synth_status": synth}

    rows = [row("small", 0.80, 1000), row("big", 0.95, 4000), row("mid", 0.90, 2000),
            row("worse", 0.85, 2500),  # beaten by mid on both
            row("tie", 0.90, 2000),  # equal to mid: neither beats the other
            row("unfit", 0.99, 9000, synth="does-not-fit"), row("stopped", 0.99, 100, status="stopped")]
    _mark_pareto(rows)
    assert {r["trial"] for r in rows if r["pareto"]} == {"small", "big", "mid", "tie"}


@pytest.mark.slow
def test_synth_sweep_builds_every_trial(ray_address: str, tmp_path: Path) -> None:
    """A small network at 1 and 2 lanes, each trained and built for the iCEBreaker (about 10 min).

    Measured: 1 lane fits (5082 of 5280 logic cells), 2 lanes do not (6140): each lane has its own
    hash pipe.  The build that does not fit is not on the Pareto front, however accurate.
    """
    base = tmp_path / "base.yaml"
    cfg = load_config(EXAMPLES / "digits-drtp-icebreaker.yaml").model_dump(mode="json")
    cfg["network"]["layers"] = [64, 8, 10]
    base.write_text(yaml.safe_dump(cfg))
    path = write_sweep(tmp_path, base=str(base), steps=200, eval_every=100,
                       space={"hardware.lanes": {"grid": [1, 2]}}, synth={"board": "icebreaker"})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--address", ray_address]) == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    for r in rows:
        report = json.loads((Path(r["run_dir"]) / "synth.json").read_text())
        assert report["lanes"] == int(r["hardware.lanes"]) and r["synth_status"] == report["status"]
        assert int(r["logic"]) == report["resources"]["logic"]["used"]
    one, two = (next(r for r in rows if r["hardware.lanes"] == n) for n in ("1", "2"))
    assert one["synth_status"] == "ok" and float(one["fmax_mhz"]) > 12
    assert two["synth_status"] == "does-not-fit" and int(two["logic"]) > int(two["logic_available"])
    # lanes do not change what the golden model learns; only the build that fits is on the front
    assert one["val_accuracy"] == two["val_accuracy"]
    assert (one["pareto"], two["pareto"]) == ("True", "False")
    assert (out / "pareto.png").stat().st_size > 0
