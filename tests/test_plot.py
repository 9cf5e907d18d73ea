"""``perturbo plot``: curves of several runs, weight histograms, board reports; bad input ends in one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import perturbo.cli as cli
from perturbo.boards.report import ClockTiming, ResourceUse, SynthReport
from perturbo.config import parse_config
from perturbo.golden.float_ref import FloatModel
from perturbo.golden.integer import IntegerModel
from perturbo.train import TrainerState, save_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], first: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"perturbo: error: {first}"), err


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 5000


def history(run: Path, losses: list[float], accs: list[float | None]) -> Path:
    run.mkdir(parents=True)
    records = [{"step": 10 * (i + 1), "train_loss": v, "val_accuracy": a, "wall_time": float(i)}
               for i, (v, a) in enumerate(zip(losses, accs, strict=True))]
    (run / "history.json").write_text(json.dumps({"name": run.name, "history": records}))
    return run


def test_curves_of_several_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = history(tmp_path / "a", [9000.0, 5000.0, 3000.0, 2500.0], [None, 0.5, None, 0.8])
    b = history(tmp_path / "b", [0.9, 0.4], [0.3, 0.9])  # a float run: another loss scale, two records
    out = tmp_path / "cmp" / "runs.png"
    assert cli.main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and is_png(out)


@pytest.mark.parametrize("kind", ["integer", "momentum", "float"])
def test_weight_histograms(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    rule = {"name": "bp"} if kind == "float" else {"name": "mgd-weight", "optimizer":
                                                     "momentum" if kind == "momentum" else "sgd"}
    cfg = parse_config({"name": kind, "network": {"layers": [64, 16, 10]}, "rule": rule})
    model = FloatModel(cfg) if kind == "float" else IntegerModel(cfg)
    save_checkpoint(tmp_path / "checkpoint.ckpt", cfg, model, TrainerState(step=3))
    assert cli.main(["plot", "--histograms", str(tmp_path)]) == 0
    assert is_png(tmp_path / "histograms.png")


def report(board: str, lanes: int, status: str, fmax: float | None) -> SynthReport:
    family = "ice40" if board == "icebreaker" else "ecp5"
    return SynthReport(board=board, device="dev", family=family, config_name="digits", config_hash="0",
                       lanes=lanes, status=status, clk_mhz=12.0,
                       resources={"logic": ResourceUse(5000 * lanes, 5280), "dsp": ResourceUse(lanes, 8),
                                  "bram": ResourceUse(20, 30)},
                       clocks=[ClockTiming("clk", fmax, 12.0)] if fmax else [])


def test_board_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, rep in {"ice-1": report("icebreaker", 1, "ok", 15.5),
                      "ice-8": report("icebreaker", 8, "does-not-fit", None),
                      "ulx3s-8": report("ulx3s-85f", 8, "ok", 57.1)}.items():
        (tmp_path / "builds" / name).mkdir(parents=True)
        rep.save(tmp_path / "builds" / name / "report.json")
    out = tmp_path / "boards.png"
    assert cli.main(["plot", "--boards", str(tmp_path / "builds"), "-o", str(out)]) == 0
    assert is_png(out)
    one = tmp_path / "one.png"  # a report file named directly
    assert cli.main(["plot", "--boards", str(tmp_path / "builds" / "ice-1" / "report.json"), "-o", str(one)]) == 0
    assert is_png(one)


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["plot", str(tmp_path / "none")], f"no history.json (a run directory of perturbo train) at "
                                                    f"{tmp_path / 'none' / 'history.json'}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "history.json").write_text('{"history": [')
    fails(capsys, ["plot", str(broken)], f"{broken / 'history.json'} is not valid JSON")
    (broken / "history.json").write_text('{"history": [{"step": "x"}]}')
    fails(capsys, ["plot", str(broken)], f"{broken / 'history.json'} is not a perturbo history")
    fails(capsys, ["plot", "--histograms", str(broken)], f"no checkpoint at {broken / 'checkpoint.ckpt'}")
    fails(capsys, ["plot", "--histograms", str(broken), str(broken)], "--histograms takes one run")
    fails(capsys, ["plot", "--boards", str(broken)], f"no report.json under {broken}")
    (broken / "report.json").write_text('{"board": "x"}')
    fails(capsys, ["plot", "--boards", str(broken)], f"{broken / 'report.json'} is not a perturbo synth report")
    fails(capsys, ["plot", "--boards", str(tmp_path / "r.json")], f"no board report at {tmp_path / 'r.json'}")


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = history(tmp_path / "a", [1.0, 0.5, 0.2], [0.2, 0.4, 0.6])
    blocker = tmp_path / "file"
    blocker.write_text("")
    fails(capsys, ["plot", str(run), "-o", str(blocker / "x.png")], f"cannot write {blocker / 'x.png'}")
