"""``perturbo export``: a trained network as integers and as an equivalent float model.

An export holds, for an integer run (any backend: the Verilator co-simulation and
the boards keep the golden model's state), per layer the master weights ``W``, the
INT8 MAC weights ``w8 = W >> (weight_bits - 8)`` and the requantisation shift; the
activation, rounding and overflow modes, the input format and how the data set's
pixels become it; and the float model of :mod:`perturbo.inference` whose scores are
the integer model's. A float run (``bp``, ``--float``) exports its float weights.
Before a file is written it is read back and its scores on the test split are
compared with the checkpoint's: an integer export must give the same INT8 scores,
a float one the same predictions, or nothing is written.

Two containers, the same names in both::

    npz  numpy.savez: "metadata" (a 0-d unicode array holding JSON) and the arrays
    pt   torch.save({"metadata": JSON text, "tensors": {name: tensor}}), read with
         torch.load(weights_only=True)

    layer{k}.weight   (n_out, n_in + 1)  the float model's weights, bias weight last
                                         (float64 w8 for integer exports, float32 otherwise)
    layer{k}.w8       (n_out, n_in + 1)  int8, integer exports only
    layer{k}.master   (n_out, n_in + 1)  int32 (weight_bits <= 32), integer exports only

``metadata`` has ``format`` ("perturbo-export"), ``version``, ``kind`` ("integer" or
"float"), the run's ``config`` (so ``perturbo eval`` finds the same data split),
``step``, ``layers`` (sizes, shifts, activations), ``numerics``, ``input``,
``inference`` (the formula), ``test`` (accuracy at export time) and ``sha256`` of
the arrays (names, dtypes, shapes and bytes, in name order).

A third container, ``onnx`` (:mod:`perturbo.onnx_export`, which needs the onnx
package), holds the network as a graph of standard ONNX operators: int8 input,
the integer layers on exact float64 (MatMul, Add, Div, Floor, Clip, Relu/Where),
int8 ``scores`` and an int64 ``prediction``. Its initializers are ``layer{k}.w8``
(int8, integer exports) or ``layer{k}.weight`` (float32, float exports), its
``metadata_props["perturbo"]`` is the same JSON metadata, with ``sha256`` taken
over the serialised graph. Before it is written the graph runs on the test split
on onnxruntime (onnx's reference evaluator when onnxruntime is not installed) and
is held to the same standard as the other formats.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .backend import make_backend
from .config import Config, ConfigError, Dataset, parse_config
from .data import load_dataset
from .inference import ExportedMLP
from .train import Checkpoint, CheckpointError, _atomic_write, load_checkpoint

__all__ = ["EXPORT_SUFFIXES", "FORMATS", "ExportError", "ExportedNetwork", "export_run", "load_export"]

FORMATS = ("npz", "pt", "onnx")
#: Files ``perturbo eval`` reads as exports rather than checkpoints.
EXPORT_SUFFIXES = (".npz", ".pt", ".onnx")
_FORMAT = "perturbo-export"
_VERSION = 1
_INPUT_NOTES = {
    Dataset.DIGITS: "sklearn digits pixel p (0..16) -> (p * 127 + 8) // 16, i.e. round(p * 127 / 16)",
    Dataset.FASHION_MNIST: "Fashion-MNIST pixel p (0..255), after data.pool x pool averaging (rounded half up) "
                           "-> p >> 1",
}


class ExportError(RuntimeError):
    """An export that cannot be written or read: the message says which file and why."""


@dataclass
class ExportedNetwork:
    """A network as an export file holds it.

    Parameters
    ----------
    metadata : dict
        The ``metadata`` JSON (module docstring).
    tensors : dict of str to torch.Tensor
        The arrays, by name (an ONNX export: the graph's weight initializers).
    graph : bytes or None
        An ONNX export's serialised model, which :meth:`scores` runs; None otherwise.
    """

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    graph: bytes | None = None

    @property
    def config(self) -> Config:
        """The configuration of the run the export came from."""
        return parse_config(self.metadata["config"], "the export's stored configuration")

    def module(self) -> ExportedMLP:
        """The float model (:class:`perturbo.inference.ExportedMLP`)."""
        meta = self.metadata
        layers = meta["layers"]
        # an ONNX integer export holds w8 alone; its float model is w8 as float64
        weights = [self.tensors[f"layer{k}.weight"] if f"layer{k}.weight" in self.tensors
                   else self.tensors[f"layer{k}.w8"].to(torch.float64) for k in range(len(layers))]
        for k, (w, lay) in enumerate(zip(weights, layers, strict=True)):
            if tuple(w.shape) != (lay["n_out"], lay["n_in"] + 1) or not w.is_floating_point():
                raise ValueError(f"layer{k}.weight is {w.dtype} {tuple(w.shape)}, "
                                 f"not floats of ({lay['n_out']}, {lay['n_in'] + 1})")
        return ExportedMLP(weights, kind=meta["kind"], activation=meta["activation"],
                           shifts=[lay["shift"] for lay in layers] if meta["kind"] == "integer" else (),
                           rounding=meta["numerics"]["rounding"], overflow=meta["numerics"]["overflow"])

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Scores on INT8-format inputs and what computed them.

        An ONNX export runs its graph (on onnxruntime when installed, else onnx's
        reference evaluator); the others run :meth:`module`.
        """
        if self.graph is None:
            return self.module()(x), "torch"
        from .onnx_export import run

        scores, _, runtime = run(self.graph, x)
        return scores, runtime


# -- building an export --------------------------------------------------------------


def _reference(ckpt: Checkpoint, source: Path) -> Any:
    """The golden model holding the checkpoint's weights (bit-identical to every integer backend)."""
    backend = make_backend(ckpt.config, "golden", float_reference=bool(ckpt.backend.get("float_reference")))
    try:
        backend.load_state_dict(ckpt.backend_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the golden model cannot load this state: {err}") from None
    return backend


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _tensors(backend: Any, kind: str) -> dict[str, torch.Tensor]:
    if kind == "float":
        return {f"layer{k}.weight": w.detach().clone() for k, w in enumerate(backend.params)}
    wb = backend.cfg.numerics.weight_bits
    out = {}
    for k, (master, w8) in enumerate(zip(backend.weights, backend.mac_weights(), strict=True)):
        out[f"layer{k}.weight"] = w8.to(torch.float64)
        out[f"layer{k}.w8"] = w8.to(torch.int8)
        out[f"layer{k}.master"] = master.to(torch.int32 if wb <= 32 else torch.int64)
    return out


def _metadata(ckpt: Checkpoint, source: Path, kind: str) -> dict[str, Any]:
    cfg = ckpt.config
    n_layers = cfg.network.n_layers
    acts = [cfg.network.activation.value] * (n_layers - 1) + [None]
    num = cfg.numerics
    return {
        "format": _FORMAT, "version": _VERSION, "perturbo": __version__, "kind": kind,
        "name": cfg.name, "step": ckpt.trainer.step, "source": str(source),
        "backend": dict(ckpt.backend), "rules": [r.value for r in cfg.layer_rules()],
        "config": cfg.model_dump(mode="json"),
        "activation": cfg.network.activation.value,
        "layers": [{"n_in": cols - 1, "n_out": n_out, "shift": shift, "activation": act}
                   for (n_out, cols), shift, act in zip(cfg.layer_shapes(), cfg.network.layer_shifts, acts,
                                                        strict=True)],
        "numerics": {
            "weight_bits": num.weight_bits, "acc_bits": num.acc_bits,
            "rounding": num.rounding.value, "overflow": num.overflow.value,
            "w8": f"master >> {num.weight_bits - 8} (the top 8 bits, no rounding)",
            "bias_input": 127 if kind == "integer" else 1.0,
        },
        "input": {
            "features": cfg.network.layers[0],
            "format": "INT8 0..127 per feature" + ("" if kind == "integer" else "; the float model reads x / 128"),
            "quantisation": _INPUT_NOTES[cfg.data.dataset],
        },
        "inference": (
            "per layer z = [h, 127] @ weight.T; q = narrow8(round_shift(z, shift)); h = phi(q); output y = q "
            "(docs/numerics.md; perturbo/inference.py)" if kind == "integer" else
            "h = x / 128; per layer z = [h, 1] @ weight.T; h = phi(z) on hidden layers (golden/float_ref.py)"
        ),
    }


# -- containers ----------------------------------------------------------------------


def _encode_onnx(meta: dict[str, Any], tensors: dict[str, torch.Tensor], kind: str) -> bytes:
    """The ONNX model: the graph's weights only (``w8`` or the float weights), the metadata as JSON."""
    from .onnx_export import METADATA_KEY, build_model

    name = "w8" if kind == "integer" else "weight"
    weights = {k: t for k, t in tensors.items() if k.endswith(f".{name}")}
    if kind == "integer":
        weights = {k: t.to(torch.int8) for k, t in weights.items()}
    meta = dict(meta, onnx={
        "input": "x: int8 (N, features), values 0..127 (-127..127 centred: minus input.offsets)",
        "outputs": {"scores": "int8 (N, classes)" if kind == "integer" else "float32 (N, classes)",
                    "prediction": "int64 (N,): ArgMax of scores, the first index on ties"},
        "arithmetic": "float64, exact for these integers (perturbo/onnx_export.py)" if kind == "integer"
                      else "float32, as the float reference",
    })
    doc = f"perturbo {meta['name']} at step {meta['step']}: {meta['inference']}"
    model = build_model(meta, weights, doc)
    meta["sha256"] = _graph_digest(model)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))
    return model.SerializeToString()


def _encode(meta: dict[str, Any], tensors: dict[str, torch.Tensor], fmt: str) -> bytes:
    buf = io.BytesIO()
    text = json.dumps(meta, sort_keys=True)
    if fmt == "npz":
        np.savez(buf, metadata=np.array(text), **{k: t.numpy() for k, t in tensors.items()})
    else:
        torch.save({"metadata": text, "tensors": tensors}, buf)
    return buf.getvalue()


def _decode_npz(data: bytes) -> tuple[str, dict[str, torch.Tensor]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    text = arrays.pop("metadata", None)
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise ValueError("no metadata entry")
    return str(text), {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _decode_pt(data: bytes) -> tuple[str, dict[str, torch.Tensor]]:
    obj = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), str) \
            or not isinstance(obj.get("tensors"), dict):
        raise ValueError("not a dict of metadata and tensors")
    if not all(isinstance(t, torch.Tensor) for t in obj["tensors"].values()):
        raise ValueError("an entry of tensors is not a tensor")
    return obj["metadata"], dict(obj["tensors"])


def decode_export(data: bytes, source: str, fmt: str) -> ExportedNetwork:
    """Read and verify an export's bytes; :class:`ExportError` on any defect."""
    try:
        text, tensors = (_decode_npz if fmt == "npz" else _decode_pt)(data)
        meta = json.loads(text)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ExportError(f"{source} is not a readable perturbo {fmt} export ({_first_line(err)}); "
                          "export it again with perturbo export") from None
    return _verify(meta, tensors, source, _digest(tensors))


def _verify(meta: Any, tensors: dict[str, torch.Tensor], source: str, digest: str,
            graph: bytes | None = None) -> ExportedNetwork:
    """The checks every container shares: format, version, digest, a configuration and a network."""
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ExportError(f"{source} is not a perturbo export (no format {_FORMAT!r} in its metadata)")
    if meta.get("version") != _VERSION:
        raise ExportError(f"{source} has export version {meta.get('version')!r}; this perturbo reads {_VERSION}")
    if meta.get("sha256") != digest:
        raise ExportError(f"{source} is corrupt: its arrays do not match the SHA-256 in its metadata")
    net = ExportedNetwork(meta, tensors, graph)
    try:
        net.config  # noqa: B018 - validates the stored configuration
        net.module()
    except (ConfigError, KeyError, TypeError, ValueError, IndexError) as err:
        raise ExportError(f"{source}: its metadata does not describe a network ({_first_line(err)})") from None
    return net


def decode_onnx(data: bytes, source: str) -> ExportedNetwork:
    """Read and verify an ONNX export's bytes; :class:`ExportError` on any defect or without onnx."""
    onnx = _require_onnx(f"reading {source}")
    from .onnx_export import initializers, metadata

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
        meta = metadata(model)
        tensors = initializers(model)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError, the checker's errors, JSON, numpy
        raise ExportError(f"{source} is not a readable perturbo onnx export ({_first_line(err)}); "
                          "export it again with perturbo export") from None
    if any(op.domain not in ("", "ai.onnx") for op in model.opset_import) \
            or any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        raise ExportError(f"{source} uses operators outside the standard ONNX domain; it is not a perturbo export")
    return _verify(meta, tensors, source, _graph_digest(model), data)


def _graph_digest(model: Any) -> str:
    # the whole graph (nodes, their attributes, every initializer), not only the weights
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def load_export(path: str | Path) -> ExportedNetwork:
    """Read an exported ``.npz``, ``.pt`` or ``.onnx`` file.

    Raises
    ------
    ExportError
        Missing, unreadable, corrupt, or not a perturbo export; an ``.onnx`` file
        without the onnx package.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"{path}: an export ends in .npz, .pt or .onnx")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ExportError(f"cannot read the export {path}: {err.strerror or err}") from None
    return decode_onnx(data, str(path)) if fmt == "onnx" else decode_export(data, str(path), fmt)


# -- perturbo export -----------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_run` wrote.

    Parameters
    ----------
    path : Path
        The export file.
    network : ExportedNetwork
        Its contents, as read back from the bytes written.
    test_accuracy : float
        Accuracy on the test split (the checkpoint's and the export's: they agree).
    max_score_diff : float
        Largest difference between the export's and the checkpoint's test scores
        (0 for integer exports).
    checked_with : str
        What computed the export's scores for that comparison: ``"torch"``
        (:class:`perturbo.inference.ExportedMLP`), ``"onnxruntime <version>"`` or
        ``"onnx.reference"``.
    """

    path: Path
    network: ExportedNetwork
    test_accuracy: float
    max_score_diff: float
    checked_with: str = "torch"


def _require_onnx(what: str = "--format onnx") -> Any:
    """The onnx module, or the one-line error that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ExportError(f"{what} needs the onnx package: pip install onnx onnxruntime (or perturbo[onnx]); "
                          "--format npz or pt need nothing more") from None
    return onnx


def default_output(run: Path, fmt: str) -> Path:
    """``model.<fmt>`` in the run directory (the checkpoint's directory)."""
    return (run if run.is_dir() else run.parent) / f"model.{fmt}"


def export_run(run: str | Path, fmt: str, out: str | Path | None = None) -> ExportResult:
    """Export the checkpoint in ``run`` (a run directory or a checkpoint file) as ``fmt``.

    Raises
    ------
    ExportError
        ``fmt`` unknown or ONNX without support, the export disagrees with the
        checkpoint, or the file cannot be written.
    CheckpointError
        The checkpoint is missing, corrupt, or its state does not load.
    """
    run = Path(run)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()  # before the checkpoint is read: the one thing to fix first
    if out is not None and Path(out).suffix != f".{fmt}":
        # perturbo eval tells an export from a checkpoint by its suffix
        raise ExportError(f"-o {out}: a {fmt} export's name ends in .{fmt}")
    ckpt = load_checkpoint(run)
    source = run / "checkpoint.ckpt" if run.is_dir() else run
    reference = _reference(ckpt, source)
    kind = "integer" if hasattr(reference, "mac_weights") else "float"
    splits = load_dataset(ckpt.config)
    test = splits.test
    want = reference.predict(test.x)
    tensors = _tensors(reference, kind)
    meta = _metadata(ckpt, source, kind)
    if splits.offsets is not None:  # data.inputs: centred: what to subtract from a new sample first
        meta["input"]["offsets"] = [int(v) for v in splits.offsets]
        meta["input"]["format"] = meta["input"]["format"].replace(
            "INT8 0..127 per feature", "INT8 -127..127 per feature: the 0..127 value minus input.offsets[j]")
    meta["test"] = {"accuracy": _accuracy(want, test.y), "samples": len(test.y)}
    path = Path(out) if out is not None else default_output(run, fmt)
    if fmt == "onnx":
        data = _encode_onnx(meta, tensors, kind)
        network = decode_onnx(data, str(path))  # check what will be on disk, not what is in memory
    else:
        meta["sha256"] = _digest(tensors)
        data = _encode(meta, tensors, fmt)
        network = decode_export(data, str(path), fmt)
    if fmt == "onnx":
        from .onnx_export import run

        got, prediction, checked_with = run(data, test.x)
    else:
        got, checked_with = network.scores(test.x)
    diff = _check_agrees(got, want, kind, path)
    if fmt == "onnx":
        _check_prediction_output(prediction, want, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: f.write(data))
    except OSError as err:
        raise ExportError(f"cannot write {path}: {err.strerror or err}; choose another -o") from None
    return ExportResult(path, network, meta["test"]["accuracy"], diff, checked_with)


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == labels).double().mean()) if len(labels) else float("nan")


def _check_agrees(got: torch.Tensor, want: torch.Tensor, kind: str, path: Path) -> float:
    """Refuse an export whose scores (integer) or predictions (float) differ from the checkpoint's."""
    if got.shape != want.shape:
        raise ExportError(f"not writing {path}: the export gives scores of shape {tuple(got.shape)}, "
                          f"the checkpoint {tuple(want.shape)}")
    diff = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
    if kind == "integer" and diff != 0.0:
        raise ExportError(f"not writing {path}: its scores differ from the integer model's on the test split "
                          f"(by up to {diff:g}); this is a bug in perturbo export")
    moved = int((got.argmax(dim=1) != want.argmax(dim=1)).sum())
    if moved:
        raise ExportError(f"not writing {path}: its predictions differ from the checkpoint's on {moved} test "
                          "samples; this is a bug in perturbo export")
    return diff


def _check_prediction_output(prediction: torch.Tensor, want: torch.Tensor, path: Path) -> None:
    """The graph's own ``prediction`` output (its ArgMax, ties included) is the checkpoint's argmax."""
    moved = int((prediction != want.argmax(dim=1)).sum())
    if moved:
        raise ExportError(f"not writing {path}: the graph's prediction output differs from the checkpoint's "
                          f"argmax on {moved} test samples; this is a bug in perturbo export")


def evaluate_export(net: ExportedNetwork, split: str) -> tuple[float, int]:
    """Accuracy of an export on ``split`` of its stored configuration's data; returns (accuracy, samples)."""
    part = load_dataset(net.config).split(split)
    scores, _ = net.scores(part.x)
    return _accuracy(scores, part.y), len(part.y)
