"""TensorFlow SavedModel directories and TFLite files -> ONNX via tf2onnx, with layer names.

Neither format keeps the Keras layer list, so layer names come from the TensorFlow op names
that tf2onnx carries into the ONNX node names:

* SavedModel: ``StatefulPartitionedCall/StatefulPartitionedCall/tiny_1/conv_1_1/BiasAdd``.
  The call prefixes are dropped and the last part is the op; of the scopes left, the layer is
  the deepest one that names a layer owning variables (``conv_1/kernel``), else the deepest
  Keras 3 call scope (``conv_1_1``: the layer name plus ``_<n>``, which is stripped), else the
  last scope. The model's own scope (``tiny_1``, common to every node) is never a layer, and
  op scopes inside a layer (``norm_1/batchnorm/mul_1``) give the layer (``norm``).
* TFLite: a node is named after its tensor, and a fused tensor lists the fused TF ops
  separated by ``;`` (``tiny_1/act_1/Relu;tiny_1/conv_1_1/convolution``). tf2onnx splits the
  fused activation off into a node of its own (``Relu__35``, bias ``Add__39``): the
  activation takes the layer of the activation op in the list (``act``), the other nodes the
  first other op's layer (``conv_1``). A tensor renamed to a signature output
  (``StatefulPartitionedCall_1:0``) is named through its op's weights in the flatbuffer
  (``tiny_1/fc_1/MatMul``).

Nodes of one layer that are connected form that layer, so ``attach_to=["conv_1"]`` on a
Conv2D with ``activation='relu'`` spans Conv + Relu and ``after`` captures the Relu output,
which is what the Keras layer outputs. Neither format records layer classes, so no layer type
is written. TensorFlow is channels-last: every input is recorded with its neurons on the last
axis (tf2onnx keeps the NHWC inputs and inserts Transposes).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from exporters.from_keras import _SUFFIX, _import_tf, _set
from onnx_state.capture.metadata import META_INPUT_AXES, META_LAYER_NAME
from onnx_state.errors import InputError, did_you_mean, first_line

__all__ = ["export_saved_model", "export_tflite", "is_tflite"]

_CALL = re.compile(r"(Stateful)?PartitionedCall(_\d+)?")  # function-call scopes, not layers
_INSERTED = re.compile(r"[A-Za-z][A-Za-z0-9]*__\d+")  # a node tf2onnx made (Relu__35)
_SPLIT_OFF = {"Add", "Relu", "Clip", "Tanh"}  # what tf2onnx splits off a fused TFLite op
_ONNX_ACTIVATIONS = {"Relu", "Clip", "Tanh"}  # ... of which the fused activations
_TF_ACTIVATIONS = {"Relu", "Tanh"}  # TF op names of fused activations (Relu6: digits dropped)


def _check_opset(opset: int) -> None:
    if opset > 18:
        raise InputError(f"tf2onnx exports opsets up to 18, got opset {opset}; use 18 or lower")


def _scopes(name: str) -> list[str]:
    """The scope components of a TF op name, without function-call prefixes and the op."""
    parts = name.split("/")
    while len(parts) > 1 and _CALL.fullmatch(parts[0]):
        parts.pop(0)
    return parts[:-1]


def _is_activation(op_name: str) -> bool:
    return op_name.rsplit("/", 1)[-1].rstrip("0123456789_") in _TF_ACTIVATIONS


class _Namer:
    """Layer names from TF op names, by the rules in this module's docstring."""

    def __init__(self, op_names: Iterable[str], known: set[str]) -> None:
        scoped = [s for name in op_names for part in name.split(";") if (s := _scopes(part))]
        firsts = {s[0] for s in scoped}
        # one scope over all nodes, with scopes below it: the model's own scope.
        nested = len(firsts) == 1 and any(len(s) > 1 for s in scoped)
        self.root = firsts.pop() if nested else None
        self.known = known

    def layer(self, op_name: str) -> str | None:
        """The layer of one TF op name, or None when it has no scope."""
        scopes = _scopes(op_name)
        for part in reversed(scopes):
            for candidate in (part, _SUFFIX.sub("", part)):
                if candidate in self.known:
                    return candidate
        if self.root is not None and scopes[:1] == [self.root]:
            scopes = scopes[1:]
        for part in reversed(scopes):
            if _SUFFIX.search(part):
                return _SUFFIX.sub("", part)
        return scopes[-1] if scopes else None

    def pick(self, op_names: list[str], activation: bool) -> str | None:
        """The layer of a node made of *op_names*, preferring activations for one."""
        preferred = [n for n in op_names if _is_activation(n) == activation]
        for name in preferred + op_names:
            layer = self.layer(name)
            if layer is not None:
                return layer
        return None


def _annotate(
    proto: onnx.ModelProto, known: set[str], tflite_weights: dict[str, list[str]] | None
) -> onnx.ModelProto:
    """Write layer names on the nodes and channels-last input axes on the model (in place)."""
    graph = proto.graph
    weight_names = [w for ws in (tflite_weights or {}).values() for w in ws]
    namer = _Namer([n.name for n in graph.node] + weight_names, known)
    uses = Counter(i for node in graph.node for i in node.input)
    uses.update(o.name for o in graph.output)
    made_of: dict[str, list[str]] = {}  # tensor -> the TF op names of the node that made it
    for node in graph.node:
        names = node.name.split(";")
        if tflite_weights is not None and not any(_scopes(n) for n in names):
            weights = tflite_weights.get(node.name, [])
            names = [n for w in weights for n in w.split(";")]
            source = node.input[0] if node.input else ""
            if (
                not names
                and _INSERTED.fullmatch(node.name)
                and node.op_type in _SPLIT_OFF
                and uses[source] == 1
            ):
                names = made_of.get(source, [])
        layer = namer.pick(names, activation=node.op_type in _ONNX_ACTIVATIONS)
        if layer is not None:
            _set(node, META_LAYER_NAME, layer)
            made_of.update((o, names) for o in node.output if o)
    inits = {t.name for t in graph.initializer}
    axes = {i.name: -1 for i in graph.input if i.name not in inits}
    _set(proto, META_INPUT_AXES, json.dumps(axes, sort_keys=True))
    return proto


# Domains onnxruntime runs; tf2onnx keeps an op it could not convert under its TF name.
_RUNNABLE_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


def _save(proto: onnx.ModelProto, output: str | os.PathLike[str] | None) -> onnx.ModelProto:
    unconverted = sorted(
        {
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in proto.graph.node
            if n.domain not in _RUNNABLE_DOMAINS
            or (n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type))
        }
    )
    if unconverted:
        raise InputError(
            f"tf2onnx could not convert op(s) {', '.join(unconverted)}; the model cannot run in "
            "onnxruntime (export the model without them, or from its Keras source)"
        )
    if output is not None:
        onnx.save(proto, os.fspath(output))
    return proto


def export_saved_model(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    opset: int = 18,
    signature: str = "serving_default",
) -> onnx.ModelProto:
    """Export a TensorFlow SavedModel directory to ONNX with layer names; save to *output*.

    Parameters
    ----------
    path:
        The SavedModel directory (it holds ``saved_model.pb``), as written by Keras 3's
        ``model.export`` or ``tf.saved_model.save``; loaded with ``tf.saved_model.load``
        (protobuf and checkpoints, nothing is unpickled).
    output:
        The .onnx file to write, or None to only return the model.
    opset:
        ONNX opset; tf2onnx supports up to 18, and a higher one is refused.
    signature:
        The signature to export; its input shapes are kept, so a batch axis of size None
        stays dynamic.

    Returns
    -------
    The ONNX model, its nodes carrying ``onnx_state.layer_name`` where the op names have
    scopes, and its inputs recorded as channels-last.
    """
    _check_opset(opset)
    root = Path(path)
    if not root.exists():
        raise InputError(f"SavedModel directory {os.fspath(path)!r} does not exist")
    if not root.is_dir():
        raise InputError(f"{os.fspath(path)} is a file, not a SavedModel directory")
    if not any((root / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt")):
        raise InputError(f"{os.fspath(path)} is not a SavedModel: it holds no saved_model.pb")
    tf, tf2onnx = _import_tf()
    try:
        loaded = tf.saved_model.load(os.fspath(root))
    except Exception as exc:  # DecodeError, OSError, NotFoundError, ValueError, ...
        raise InputError(
            f"cannot load {os.fspath(path)} as a SavedModel: {first_line(exc)}"
        ) from None
    signatures = dict(getattr(loaded, "signatures", None) or {})
    if signature not in signatures:
        public = sorted(s for s in signatures if not s.startswith("_"))
        if not public:
            raise InputError(f"SavedModel {os.fspath(path)} has no signatures to export")
        raise InputError(
            f"SavedModel {os.fspath(path)} has no signature {signature!r} (it has "
            f"{', '.join(public)})." + did_you_mean(signature, public)
        )
    function = signatures[signature]
    _, kwargs = function.structured_input_signature
    names = sorted(kwargs)  # the order tf.nest flattens the signature's inputs in
    specs = tuple(tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in names)

    @tf.function(input_signature=specs)  # type: ignore[untyped-decorator]
    def forward(*xs: Any) -> Any:
        return function(**dict(zip(names, xs)))

    proto: onnx.ModelProto
    try:
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=specs, opset=opset)
    except Exception as exc:  # an op tf2onnx cannot convert
        raise InputError(f"tf2onnx cannot convert {os.fspath(path)}: {first_line(exc)}") from None
    # The layers that own variables (Keras 3: conv_1/kernel) name themselves exactly.
    known = {p for v in function.variables for p in v.name.split(":")[0].split("/")[:-1]}
    return _save(_annotate(proto, known, None), output)


def is_tflite(path: str | os.PathLike[str]) -> bool:
    """Whether *path* is a file holding a TFLite flatbuffer (file identifier ``TFL3``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == b"TFL3"


def _tflite_weights(buffer: bytes) -> dict[str, list[str]]:
    """Each op's first output tensor -> the names of its constant inputs (weights, bias)."""
    from tf2onnx.tflite.Model import Model

    model = Model.GetRootAsModel(bytearray(buffer), 0)
    found: dict[str, list[str]] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        names = [graph.Tensors(t).Name().decode("utf-8", "replace")
                 for t in range(graph.TensorsLength())]  # fmt: skip
        ops = [graph.Operators(k) for k in range(graph.OperatorsLength())]
        made = {graph.Inputs(i) for i in range(graph.InputsLength())}
        made.update(op.Outputs(j) for op in ops for j in range(op.OutputsLength()))
        for op in ops:
            if op.OutputsLength() and 0 <= op.Outputs(0) < len(names):
                inputs = (op.Inputs(j) for j in range(op.InputsLength()))
                found[names[op.Outputs(0)]] = [
                    names[i] for i in inputs if 0 <= i < len(names) and i not in made
                ]
    return found


def export_tflite(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    opset: int = 18,
) -> onnx.ModelProto:
    """Export a float TFLite model to ONNX with layer names; save to *output*.

    Parameters
    ----------
    path:
        The ``.tflite`` file (a TFLite flatbuffer, as ``tf.lite.TFLiteConverter`` writes).
    output:
        The .onnx file to write, or None to only return the model.
    opset:
        ONNX opset; tf2onnx supports up to 18, and a higher one is refused.

    Returns
    -------
    The ONNX model, its nodes carrying ``onnx_state.layer_name`` from the TFLite tensor
    names, and its inputs recorded as channels-last.
    """
    _check_opset(opset)
    file = Path(path)
    if not file.exists():
        raise InputError(f"TFLite file {os.fspath(path)!r} does not exist")
    if not file.is_file() or not is_tflite(file):
        raise InputError(f"{os.fspath(path)} is not a TFLite model (no TFL3 flatbuffer)")
    _tf, tf2onnx = _import_tf()
    with warnings.catch_warnings():  # tf2onnx reads shapes through the deprecated interpreter
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        try:
            proto: onnx.ModelProto
            proto, _ = tf2onnx.convert.from_tflite(os.fspath(file), opset=opset)
            weights = _tflite_weights(file.read_bytes())
        except Exception as exc:  # a truncated flatbuffer, an op tf2onnx cannot convert
            raise InputError(
                f"tf2onnx cannot convert {os.fspath(path)}: {first_line(exc)}"
            ) from None
    return _save(_annotate(proto, set(), weights), output)
