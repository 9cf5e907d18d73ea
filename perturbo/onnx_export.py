"""The ONNX form of an export: the same network as standard-domain ONNX operators.

Imported only for ``perturbo export --format onnx`` and ``perturbo eval FILE.onnx``;
it needs the ``onnx`` package, and runs graphs on ``onnxruntime`` when that is
installed (else on ``onnx.reference.ReferenceEvaluator``, onnx's numpy interpreter).

The graph (opset 17, IR version 8) has one input and two outputs::

    x           int8   (N, features)  the INT8 input format: 0..127, or -127..127 for centred
                                      inputs (the value minus the export's input.offsets)
    scores      int8   (N, classes)   integer export: the accelerator's INT8 output scores
                float32 (N, classes)  float export: the float reference's scores
    prediction  int64  (N,)           ArgMax of the scores, the first index on ties

An integer export computes, per layer, with ``w8`` stored as an int8 initializer
``layer{k}.w8`` of shape ``(n_out, n_in + 1)`` (bias weight last)::

    xa = Concat(h, ConstantOfShape([N, 1], 127.0))       # the bias input 127
    z  = MatMul(xa, Transpose(Cast<double>(w8)))         # the exact dot product
    z  = Floor(Div(Add(z, 2^(shift-1)), 2^shift))        # round_shift; floor rounding: no Add
    q  = Clip(z, -128, 127)                              # saturate; wrap: z - 256 Floor((z + 128) / 256)
    h  = Relu(q) | Where(q >= 0, q, Floor(q / 8)) | Clip(q + 64, 0, 127)

all in float64 (``double``). Why that is exact for every configuration perturbo
accepts: every operand is an integer; inputs, hidden activations and the bias input
lie in -16..127 and ``w8`` in -128..127, so a product is at most 2^14 in magnitude,
and a layer has at most 4 096 inputs plus the bias, so every partial sum of the dot
product is an integer below 4 097 * 2^14 < 2^27 in magnitude. float64 represents
every integer below 2^53 exactly, so each addition (or fused multiply-add) is exact
in any order a MatMul kernel chooses. Adding 2^(shift-1) (shift <= 24) stays below
2^53; dividing by a power of two only changes the exponent; ``Floor``, ``Clip``,
``Relu``, ``Where`` and the comparisons are exact on doubles. float32 would not do:
its 24-bit significand cannot hold a sum above 2^24, which a 1 024-input layer of
large weights reaches. (``MatMulInteger`` to int32 would be exact by the ONNX
specification, but onnxruntime documents that its U8S8 kernels on AVX2 / AVX-512
use ``VPMADDUBSW``, which can saturate a pair of products at 16 bits, and the
leaky-ReLU activations are signed: a runtime detail this export should not rest
on. ``BitShift`` is defined on unsigned types only, so the arithmetic shift of a
signed accumulator is the division and ``Floor`` above.)

A float export (``bp``, ``--float``) keeps its float32 weights ``layer{k}.weight``
and computes ``h = x / 128``, ``z = Concat(h, 1) @ W.T``, ``Relu`` / ``LeakyRelu``
(slope 1/8) / ``Clip(z + 0.5, 0, 1)`` on hidden layers, in float32 like the float
reference; summation order may differ from torch's in the last bits, so its
predictions (not its scores) are what ``perturbo export`` checks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

__all__ = ["IR_VERSION", "METADATA_KEY", "OPSET", "build_model", "initializers", "metadata", "run"]

#: Opset 17 and IR version 8 (onnx 1.12, 2022): read by every onnxruntime since 1.12.
OPSET = 17
IR_VERSION = 8
#: The ``metadata_props`` entry holding the export's JSON metadata.
METADATA_KEY = "perturbo"


def build_model(meta: dict[str, Any], tensors: dict[str, torch.Tensor], doc: str) -> Any:
    """The ONNX ``ModelProto`` of an export.

    Parameters
    ----------
    meta : dict
        The export's metadata (:mod:`perturbo.export`): ``kind``, ``layers``
        (``n_in``, ``n_out``, ``shift``, ``activation``) and ``numerics``.
    tensors : dict of str to torch.Tensor
        The graph's weights: ``layer{k}.w8`` (int8) for an integer export,
        ``layer{k}.weight`` (float32) for a float one.
    doc : str
        The graph's ``doc_string``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    integer = meta["kind"] == "integer"
    dtype = TensorProto.DOUBLE if integer else TensorProto.FLOAT
    np_dtype = np.float64 if integer else np.float32
    nodes: list[Any] = []
    consts: list[Any] = [numpy_helper.from_array(t.numpy(), name) for name, t in sorted(tensors.items())]
    counter = iter(range(1 << 30))

    def const(value: float | list[int], kind: Any = np_dtype) -> str:
        name = f"c{next(counter)}"
        consts.append(numpy_helper.from_array(np.array(value, dtype=kind), name))
        return name

    def op(op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        out = out or f"t{next(counter)}"
        nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    # The bias input column: (N, 1) of 127 (integer) or 1.0 (float), N taken from x.
    n = op("Shape", "x", start=0, end=1)
    bias_shape = op("Concat", n, const([1], np.int64), axis=0)
    bias_value = numpy_helper.from_array(np.array([127.0 if integer else 1.0], dtype=np_dtype))
    bias = op("ConstantOfShape", bias_shape, value=bias_value)

    h = op("Cast", "x", to=dtype)
    if not integer:
        h = op("Div", h, const(128.0))  # the float reference reads the INT8 pixel p as p / 128
    layers = meta["layers"]
    num = meta["numerics"]
    for k, lay in enumerate(layers):
        w = f"layer{k}.w8" if integer else f"layer{k}.weight"
        wt = op("Transpose", op("Cast", w, to=dtype) if integer else w, perm=[1, 0])
        z = op("MatMul", op("Concat", h, bias, axis=1), wt)
        if integer:
            z = _requantise(op, const, z, lay["shift"], num["rounding"], num["overflow"])
        if lay["activation"] is not None:
            z = _activate(op, const, z, lay["activation"], integer)
        h = z
    op("ArgMax", h, out="prediction", axis=1, keepdims=0, select_last_index=0)
    if integer:
        op("Cast", h, out="scores", to=TensorProto.INT8)  # -128..127 after the narrowing: exact
    else:
        op("Identity", h, out="scores")
    classes = layers[-1]["n_out"]
    graph = helper.make_graph(
        nodes, "perturbo",
        inputs=[helper.make_tensor_value_info("x", TensorProto.INT8, ["N", layers[0]["n_in"]])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.INT8 if integer else TensorProto.FLOAT,
                                               ["N", classes]),
                 helper.make_tensor_value_info("prediction", TensorProto.INT64, ["N"])],
        initializer=consts, doc_string=doc,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="perturbo", producer_version=str(meta.get("perturbo", "")),
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def _requantise(op: Any, const: Any, z: str, shift: int, rounding: str, overflow: str) -> str:
    """``narrow8(round_shift(z, shift))`` on exact doubles (docs/numerics.md, section 1)."""
    if shift > 0:
        if rounding == "half-up":
            z = op("Add", z, const(2.0 ** (shift - 1)))
        z = op("Floor", op("Div", z, const(2.0**shift)))
    if overflow == "saturate":
        return op("Clip", z, const(-128.0), const(127.0))
    # wrap: the low 8 bits read as signed, z - 256 * floor((z + 128) / 256)
    wraps = op("Floor", op("Div", op("Add", z, const(128.0)), const(256.0)))
    return op("Sub", z, op("Mul", wraps, const(256.0)))


def _activate(op: Any, const: Any, z: str, activation: str, integer: bool) -> str:
    """The hidden-layer activation as :class:`perturbo.inference.ExportedMLP` computes it."""
    if activation == "relu":
        return op("Relu", z)
    if activation == "leaky-relu":
        if integer:  # the accelerator's q >> 3 is floor(q / 8)
            return op("Where", op("GreaterOrEqual", z, const(0.0)), z, op("Floor", op("Div", z, const(8.0))))
        return op("LeakyRelu", z, alpha=0.125)  # x * 0.125 below 0: a power of two, exact
    if activation == "hard-sigmoid":
        if integer:
            return op("Clip", op("Add", z, const(64.0)), const(0.0), const(127.0))
        return op("Clip", op("Add", z, const(0.5)), const(0.0), const(1.0))
    raise ValueError(f"unknown activation {activation!r}")


def initializers(model: Any) -> dict[str, torch.Tensor]:
    """The weights of a graph :func:`build_model` made, by name (``layer{k}.w8`` or ``layer{k}.weight``)."""
    from onnx import numpy_helper

    return {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t)))
            for t in model.graph.initializer if t.name.startswith("layer")}


def metadata(model: Any) -> dict[str, Any]:
    """The export's JSON metadata from the model's ``metadata_props``; ValueError if there is none."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            if not isinstance(meta, dict):
                raise ValueError(f"metadata_props[{METADATA_KEY!r}] is not a JSON object")
            return meta
    raise ValueError(f"no {METADATA_KEY!r} entry in metadata_props")


def run(model: bytes, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Run a serialised graph on INT8-format inputs (centred ones already offset).

    Returns ``(scores, prediction, runtime)``: the graph's two outputs as tensors and
    the name of what ran it, ``"onnxruntime"`` when that package is installed, else
    ``"onnx.reference"``.
    """
    if x.numel() and (int(x.min()) < -128 or int(x.max()) > 127):
        raise ValueError(f"inputs must be INT8 (0..127, or -127..127 when centred), "
                         f"not {int(x.min())}..{int(x.max())}")
    feed = {"x": x.to(torch.int8).numpy()}
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx import load_from_string
        from onnx.reference import ReferenceEvaluator

        scores, prediction = ReferenceEvaluator(load_from_string(model)).run(None, feed)
        runtime = "onnx.reference"
    else:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        scores, prediction = session.run(["scores", "prediction"], feed)
        runtime = f"onnxruntime {ort.__version__}"
    return torch.from_numpy(np.array(scores)), torch.from_numpy(np.array(prediction)), runtime
