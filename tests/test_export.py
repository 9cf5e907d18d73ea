"""``perturbo export``: the exported float model gives the integer model's scores, eval reads exports,
and every defect of an export (or of ONNX support) ends in one ``perturbo: error:`` line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import perturbo.cli as cli
from perturbo.backend import make_backend
from perturbo.config import parse_config
from perturbo.data import load_dataset
from perturbo.export import load_export
from perturbo.golden.integer import IntegerModel
from perturbo.inference import ExportedMLP
from perturbo.train import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DRTP = ROOT / "examples" / "digits-drtp.yaml"
BP = ROOT / "examples" / "digits-bp.yaml"


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], first: str) -> str:
    """Exit status 2 and exactly one ``perturbo: error:`` line starting with ``first``."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"perturbo: error: {first}"), err
    return err[0]


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 50-step integer DRTP run, the same on centred inputs, and a 20-step float BP run on
    the golden model."""
    base = tmp_path_factory.mktemp("runs")
    out = {"drtp": base / "drtp", "bp": base / "bp", "centred": base / "centred"}
    centred = yaml.safe_load(DRTP.read_text())
    centred["data"] = {**centred.get("data", {}), "inputs": "centred"}
    (base / "centred.yaml").write_text(yaml.safe_dump(centred))
    for name, cfg, steps in (("drtp", DRTP, 50), ("bp", BP, 20), ("centred", base / "centred.yaml", 50)):
        assert cli.main(["train", str(cfg), "--backend", "golden", "--steps", str(steps), "--out", str(out[name]),
                         "--no-progress"]) == 0
    return out


def accuracy_line(out: str) -> str:
    """``... test accuracy 0.1234 (n/m)`` without what follows."""
    return out.split("accuracy", 1)[1].split(")")[0]


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_integer_export_gives_the_integer_scores(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = tmp_path / f"m.{fmt}"
    out = run_cli(capsys, ["export", str(runs["drtp"]), "--format", fmt, "-o", str(path)])
    assert "the same INT8 scores" in out
    ckpt = load_checkpoint(runs["drtp"])
    model = make_backend(ckpt.config, "golden")
    model.load_state_dict(ckpt.backend_state)
    test = load_dataset(ckpt.config).test
    net = load_export(path)
    assert torch.equal(net.module()(test.x), model.predict(test.x).double())
    for k, master in enumerate(ckpt.backend_state["weights"]):
        assert torch.equal(net.tensors[f"layer{k}.master"].long(), master)
        assert torch.equal(net.tensors[f"layer{k}.w8"].long(), master >> 8)
    meta = net.metadata
    assert meta["kind"] == "integer" and meta["step"] == 50 and meta["numerics"]["rounding"] == "half-up"
    assert [lay["shift"] for lay in meta["layers"]] == [7, 7] and "127" in meta["input"]["quantisation"]
    # the same accuracy from eval on the export as on the checkpoint
    assert accuracy_line(run_cli(capsys, ["eval", str(path)])) == accuracy_line(run_cli(capsys, ["eval",
                                                                                              str(runs["drtp"])]))


def test_npz_is_plain_arrays_and_json(runs: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Readable with numpy alone: no pickles, metadata as JSON text."""
    run_cli(capsys, ["export", str(runs["drtp"]), "--format", "npz"])
    with np.load(runs["drtp"] / "model.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["metadata"]))
        assert z["layer0.w8"].dtype == np.int8 and z["layer0.weight"].shape == (32, 65)
    assert meta["format"] == "perturbo-export" and meta["config"]["name"] == "digits-drtp"


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_float_export_gives_the_float_predictions(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = tmp_path / f"bp.{fmt}"
    run_cli(capsys, ["export", str(runs["bp"] / "checkpoint.ckpt"), "--format", fmt, "-o", str(path)])
    ckpt = load_checkpoint(runs["bp"])
    model = make_backend(ckpt.config, "golden")
    model.load_state_dict(ckpt.backend_state)
    test = load_dataset(ckpt.config).test
    net = load_export(path)
    assert net.metadata["kind"] == "float"
    assert torch.equal(net.module().predict(test.x), model.predict(test.x).argmax(1))
    assert accuracy_line(run_cli(capsys, ["eval", str(path)])) == accuracy_line(run_cli(capsys, ["eval",
                                                                                              str(runs["bp"])]))


@pytest.mark.parametrize("activation", ["relu", "leaky-relu", "hard-sigmoid"])
@pytest.mark.parametrize("rounding", ["half-up", "floor"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_float_module_equals_the_integer_forward(activation: str, rounding: str, overflow: str) -> None:
    """Large random weights and small shifts drive every layer into narrowing: the scores stay equal."""
    cfg = parse_config({"network": {"layers": [20, 12, 7], "activation": activation, "shifts": [5, 6]},
                        "rule": {"name": "drtp"}, "numerics": {"rounding": rounding, "overflow": overflow}})
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randint(-2**15, 2**15, (n_out, cols), generator=gen) for n_out, cols in cfg.layer_shapes()]
    model = IntegerModel(cfg, weights)
    x = torch.randint(0, 128, (500, 20), generator=gen)
    mlp = ExportedMLP([w.double() for w in model.mac_weights()], kind="integer", activation=activation,
                      shifts=cfg.network.layer_shifts, rounding=rounding, overflow=overflow)
    trace = model.forward(x)
    assert all(bool((q.abs() >= 127).any()) for q in trace.q)  # narrowing happened in every layer
    want = trace.output
    assert torch.equal(mlp(x), want.double())


# -- defects --------------------------------------------------------------------------


def test_damaged_exports(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("npz", "pt"):
        good = tmp_path / f"good.{fmt}"
        run_cli(capsys, ["export", str(runs["drtp"]), "--format", fmt, "-o", str(good)])
        data = good.read_bytes()
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        fails(capsys, ["eval", str(cut)], f"{cut} is not a readable perturbo {fmt} export")
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        bad = tmp_path / f"flipped.{fmt}"
        bad.write_bytes(bytes(flipped))
        fails(capsys, ["eval", str(bad)], f"{bad}")
    fails(capsys, ["eval", str(tmp_path / "missing.npz")], f"cannot read the export {tmp_path / 'missing.npz'}")


def test_export_with_changed_arrays_or_foreign_content(tmp_path: Path, runs: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.pt"
    run_cli(capsys, ["export", str(runs["drtp"]), "--format", "pt", "-o", str(path)])
    obj = torch.load(path, weights_only=True)
    obj["tensors"]["layer0.weight"][0, 0] += 1
    torch.save(obj, path)
    fails(capsys, ["eval", str(path)], f"{path} is corrupt: its arrays do not match the SHA-256")
    torch.save({"weights": [torch.zeros(2)]}, path)
    fails(capsys, ["eval", str(path)], f"{path} is not a readable perturbo pt export")
    np.savez(tmp_path / "other.npz", metadata=np.array(json.dumps({"format": "x"})))
    fails(capsys, ["eval", str(tmp_path / "other.npz")], f"{tmp_path / 'other.npz'} is not a perturbo export")


def test_export_of_a_missing_or_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["export", str(tmp_path), "--format", "npz"], f"no checkpoint at {tmp_path / 'checkpoint.ckpt'}")
    fails(capsys, ["export", str(tmp_path), "--format", "npz", "-o", str(tmp_path / "m.pt")],
          f"-o {tmp_path / 'm.pt'}: a npz export's name ends in .npz")
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"PERTURBO-CHECKPOINT\n{")
    fails(capsys, ["export", str(bad), "--format", "pt"], f"{bad} is")
    assert not list(tmp_path.glob("model.*"))


def test_eval_of_an_export_refuses_a_backend(runs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.npz"
    run_cli(capsys, ["export", str(runs["drtp"]), "--format", "npz", "-o", str(path)])
    fails(capsys, ["eval", str(path), "--backend", "verilator"], f"{path} is an exported network")


def test_export_that_disagrees_is_not_written(runs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    forward = ExportedMLP.forward
    monkeypatch.setattr(ExportedMLP, "forward", lambda self, x: forward(self, x) + (x[:, :1] == 0))
    path = tmp_path / "m.npz"
    fails(capsys, ["export", str(runs["drtp"]), "--format", "npz", "-o", str(path)], f"not writing {path}")
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))


def test_onnx_without_onnx(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    good = tmp_path / "good.onnx"
    run_cli(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(good)])
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    err = fails(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(tmp_path / "m.onnx")],
                "--format onnx needs the onnx package")
    assert "pip install onnx" in err and not (tmp_path / "m.onnx").exists()
    err = fails(capsys, ["eval", str(good)], f"reading {good} needs the onnx package")
    assert "pip install onnx" in err


# -- ONNX -----------------------------------------------------------------------------


def onnx_run(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, prediction) of an ONNX file on onnxruntime, without perturbo in between."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, prediction = session.run(["scores", "prediction"], {"x": x.numpy().astype(np.int8)})
    return torch.from_numpy(scores), torch.from_numpy(prediction)


def check_standard_graph(path: Path) -> None:
    """The full ONNX checker passes and every operator is from the standard domain."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert all(node.domain == "" for node in model.graph.node)
    ops = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Floor", "Clip", "ArgMax"} <= ops or {"MatMul", "ArgMax"} <= ops


def test_onnx_integer_export_gives_the_integer_scores(runs: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """On onnxruntime, the graph's INT8 scores are the golden model's on the whole test split."""
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    out = run_cli(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(path)])
    assert "the same INT8 scores" in out and "run on onnxruntime" in out
    check_standard_graph(path)
    ckpt = load_checkpoint(runs["drtp"])
    model = make_backend(ckpt.config, "golden")
    model.load_state_dict(ckpt.backend_state)
    test = load_dataset(ckpt.config).test
    scores, prediction = onnx_run(path, test.x)
    want = model.predict(test.x)
    assert scores.dtype == torch.int8 and torch.equal(scores.long(), want)
    assert torch.equal(prediction, want.argmax(1))
    net = load_export(path)
    for k, master in enumerate(ckpt.backend_state["weights"]):
        assert torch.equal(net.tensors[f"layer{k}.w8"].long(), master >> 8)
    assert net.metadata["kind"] == "integer" and net.metadata["step"] == 50
    assert torch.equal(net.module()(test.x), want.double())  # the torch model of the same file agrees too
    assert accuracy_line(run_cli(capsys, ["eval", str(path)])) == accuracy_line(run_cli(capsys, ["eval",
                                                                                              str(runs["drtp"])]))


def test_onnx_float_export_gives_the_float_predictions(runs: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "bp.onnx"
    run_cli(capsys, ["export", str(runs["bp"]), "--format", "onnx", "-o", str(path)])
    check_standard_graph(path)
    ckpt = load_checkpoint(runs["bp"])
    model = make_backend(ckpt.config, "golden")
    model.load_state_dict(ckpt.backend_state)
    test = load_dataset(ckpt.config).test
    scores, prediction = onnx_run(path, test.x)
    want = model.predict(test.x)
    assert scores.dtype == torch.float32 and torch.allclose(scores, want, rtol=0, atol=1e-5)
    assert torch.equal(prediction, want.argmax(1))
    assert load_export(path).metadata["kind"] == "float"
    assert accuracy_line(run_cli(capsys, ["eval", str(path)])) == accuracy_line(run_cli(capsys, ["eval",
                                                                                              str(runs["bp"])]))


def integer_graph(cfg_dict: dict, weights: list[torch.Tensor]) -> tuple[IntegerModel, bytes]:
    """The golden model and the ONNX graph of the same configuration and master weights."""
    from perturbo.onnx_export import build_model

    cfg = parse_config(cfg_dict)
    model = IntegerModel(cfg, weights)
    acts = [cfg.network.activation.value] * (cfg.network.n_layers - 1) + [None]
    meta = {"kind": "integer",
            "layers": [{"n_in": cols - 1, "n_out": n_out, "shift": shift, "activation": act}
                       for (n_out, cols), shift, act in zip(cfg.layer_shapes(), cfg.network.layer_shifts, acts,
                                                            strict=True)],
            "numerics": {"rounding": cfg.numerics.rounding.value, "overflow": cfg.numerics.overflow.value}}
    w8 = {f"layer{k}.w8": w.to(torch.int8) for k, w in enumerate(model.mac_weights())}
    return model, build_model(meta, w8, "test").SerializeToString()


@pytest.mark.parametrize("activation", ["relu", "leaky-relu", "hard-sigmoid"])
@pytest.mark.parametrize("rounding", ["half-up", "floor"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_onnx_graph_equals_the_integer_forward(activation: str, rounding: str, overflow: str,
                                               tmp_path: Path) -> None:
    """Large random weights and small shifts drive every layer into narrowing: onnxruntime stays equal."""
    pytest.importorskip("onnx")
    gen = torch.Generator().manual_seed(3)
    cfg = {"network": {"layers": [20, 12, 7], "activation": activation, "shifts": [5, 6]},
           "rule": {"name": "drtp"}, "numerics": {"rounding": rounding, "overflow": overflow}}
    weights = [torch.randint(-2**15, 2**15, shape, generator=gen) for shape in ((12, 21), (7, 13))]
    model, graph = integer_graph(cfg, weights)
    path = tmp_path / "g.onnx"
    path.write_bytes(graph)
    x = torch.randint(0, 128, (500, 20), generator=gen)
    trace = model.forward(x)
    assert all(bool((q.abs() >= 127).any()) for q in trace.q)  # narrowing happened in every layer
    if activation == "leaky-relu":
        assert bool((trace.y[0] < 0).any())  # the signed hidden activations were exercised
    scores, prediction = onnx_run(path, x)
    assert torch.equal(scores.long(), trace.output)
    assert torch.equal(prediction, trace.output.argmax(1))  # ties (saturated 127s) go to the first index


def test_onnx_graph_is_exact_where_float32_is_not(tmp_path: Path) -> None:
    """A 4 096-input layer with shift 0 and wrap: every bit of the accumulator reaches the score.

    The sums are about 2^25, beyond float32's 24-bit significand, so a float32
    MatMul gets low bits wrong; the float64 graph does not.
    """
    pytest.importorskip("onnx")
    gen = torch.Generator().manual_seed(5)
    cfg = {"network": {"layers": [4096, 10], "shifts": [0]}, "rule": {"name": "drtp"},
           "numerics": {"overflow": "wrap", "weight_bits": 8}}
    weights = [torch.randint(64, 128, (10, 4097), generator=gen)]
    model, graph = integer_graph(cfg, weights)
    path = tmp_path / "g.onnx"
    path.write_bytes(graph)
    x = torch.randint(100, 128, (64, 4096), generator=gen)
    want = model.predict(x)
    scores, _ = onnx_run(path, x)
    assert torch.equal(scores.long(), want)
    # the same layer in float32 loses the low bits that the wrap keeps
    xa = torch.cat([x, torch.full((64, 1), 127)], 1)
    acc32 = (xa.float() @ weights[0].float().T).double()
    assert float(acc32.abs().max()) > 2**24
    wrapped32 = acc32 - 256 * torch.floor((acc32 + 128) / 256)
    assert not torch.equal(wrapped32, want.double())


def test_onnx_export_without_onnxruntime_uses_the_reference_evaluator(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    path = tmp_path / "m.onnx"
    out = run_cli(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(path)])
    assert "the same INT8 scores" in out and "run on onnx.reference" in out
    assert accuracy_line(run_cli(capsys, ["eval", str(path)])) == accuracy_line(run_cli(capsys, ["eval",
                                                                                              str(runs["drtp"])]))


def test_onnx_export_that_disagrees_is_not_written(runs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph without the half-up rounding term gives other scores: nothing is written."""
    pytest.importorskip("onnx")
    import perturbo.onnx_export as ox

    requantise = ox._requantise
    monkeypatch.setattr(ox, "_requantise", lambda op, const, z, shift, rounding, overflow:
                        requantise(op, const, z, shift, "floor", overflow))
    path = tmp_path / "m.onnx"
    fails(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(path)], f"not writing {path}")
    assert not path.exists()


def test_damaged_onnx_exports(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx = pytest.importorskip("onnx")
    good = tmp_path / "good.onnx"
    run_cli(capsys, ["export", str(runs["drtp"]), "--format", "onnx", "-o", str(good)])
    data = good.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    fails(capsys, ["eval", str(cut)], f"{cut} is not a readable perturbo onnx export")
    model = onnx.load(str(good))
    w = next(t for t in model.graph.initializer if t.name == "layer0.w8")
    raw = bytearray(w.raw_data)
    raw[0] ^= 1
    w.raw_data = bytes(raw)
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    fails(capsys, ["eval", str(changed)], f"{changed} is corrupt: its arrays do not match the SHA-256")
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    fails(capsys, ["eval", str(bare)], f"{bare} is not a readable perturbo onnx export")


@pytest.mark.parametrize("fmt", ["npz", "onnx"])
def test_centred_export_gives_the_integer_scores(runs: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """Centred inputs (-127..127 after the offsets): the export carries the offsets, and its
    scores on the centred test split are the golden model's."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / f"m.{fmt}"
    run_cli(capsys, ["export", str(runs["centred"]), "--format", fmt, "-o", str(path)])
    ckpt = load_checkpoint(runs["centred"])
    splits = load_dataset(ckpt.config)
    assert splits.offsets is not None and int(splits.test.x.min()) < 0
    model = make_backend(ckpt.config, "golden")
    model.load_state_dict(ckpt.backend_state)
    net = load_export(path)
    assert net.metadata["input"]["offsets"] == [int(v) for v in splits.offsets]
    want = model.predict(splits.test.x)
    if fmt == "onnx":
        scores, _ = onnx_run(path, splits.test.x)
        assert torch.equal(scores.long(), want)
    assert torch.equal(net.module()(splits.test.x), want.double())
