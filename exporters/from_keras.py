"""Keras 3 model -> ONNX via tf2onnx, with the Keras layer names and classes as metadata.

tf2onnx names nodes after TensorFlow name scopes (``lenet_1/conv_1_1/BiasAdd``): Keras 3 adds
``_<n>`` to each scope, and one layer becomes several nodes (BatchNorm → Mul + Add, Conv2D with
an activation → Conv + Elu). Each node is mapped back to the deepest Keras layer whose name
matches a scope component, so ``after`` captures what the Keras layer outputs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import onnx

from onnx_state.capture.metadata import META_INPUT_AXES, META_LAYER_NAME, META_LAYER_TYPE
from onnx_state.errors import InputError, MissingExtraError

__all__ = ["annotate", "export", "keras_layers"]

_SUFFIX = re.compile(r"_\d+$")


def _import_tf() -> tuple[Any, Any]:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        import tf2onnx

        logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # our errors say what failed
    except ImportError as exc:
        raise MissingExtraError(
            "TensorFlow/tf2onnx are not installed; install them with: "
            "pip install 'onnx-state[tensorflow]'"
        ) from exc
    return tf, tf2onnx


def keras_layers(model: Any) -> dict[str, str]:
    """Every layer name in *model*, nested models included -> its class name."""
    found: dict[str, str] = {}
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        found.setdefault(layer.name, type(layer).__name__)
        stack.extend(getattr(layer, "layers", []))
    return found


def _layer_of(node_name: str, layers: dict[str, str]) -> str | None:
    """Deepest scope component of *node_name* that names a Keras layer."""
    parts = node_name.split("/")[:-1]  # the last part is the op itself
    for part in reversed(parts):
        for candidate in (part, _SUFFIX.sub("", part)):
            if candidate in layers:
                return candidate
    return None


def _set(node_or_model: Any, key: str, value: str) -> None:
    entry = next((p for p in node_or_model.metadata_props if p.key == key), None)
    if entry is None:
        entry = node_or_model.metadata_props.add()
        entry.key = key
    entry.value = value


def annotate(proto: onnx.ModelProto, model: Any) -> onnx.ModelProto:
    """Write onnx_state layer metadata for a tf2onnx export of Keras *model* (in place)."""
    layers = keras_layers(model)
    layers.pop(model.name, None)
    tagged: dict[int, str] = {}
    for i, node in enumerate(proto.graph.node):
        name = _layer_of(node.name, layers)
        if name is not None:
            tagged[i] = name
    for i, name in {**tagged, **_enclosed(proto.graph, tagged)}.items():
        _set(proto.graph.node[i], META_LAYER_NAME, name)
        _set(proto.graph.node[i], META_LAYER_TYPE, layers[name])
    # Keras inputs are channels-last: their neurons are on the last axis.
    inits = {t.name for t in proto.graph.initializer}
    axes = {i.name: -1 for i in proto.graph.input if i.name not in inits}
    _set(proto, META_INPUT_AXES, json.dumps(axes, sort_keys=True))
    return proto


def _enclosed(graph: onnx.GraphProto, tagged: dict[int, str]) -> dict[int, str]:
    """Layers for the nodes without a scope that lie inside one layer: every tagged node
    reached from them up and down through other such nodes is of that layer.

    tf2onnx's rewriters name the nodes they make without the Keras scope: a
    ``Bidirectional(LSTM)`` becomes one fused ``LSTM__115`` between the layer's own
    Transpose and Concat, with unscoped Slices and Squeezes after it. Left untagged, they cut
    the layer in three by data flow, and the layer's name landed on its input Transpose.
    """
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)

    def reached(start: int, up: bool) -> set[str]:
        found: set[str] = set()
        seen, todo = {start}, [start]
        while todo:
            node = graph.node[todo.pop()]
            if up:
                nxt = [producers[t] for t in node.input if t in producers]
            else:
                nxt = [j for t in node.output for j in consumers.get(t, ())]
            for j in nxt:
                if j in tagged:
                    found.add(tagged[j])
                elif j not in seen:
                    seen.add(j)
                    todo.append(j)
        return found

    filled = {}
    for i in range(len(graph.node)):
        if i not in tagged:
            above, below = reached(i, up=True), reached(i, up=False)
            if len(above) == 1 and above == below:
                filled[i] = next(iter(above))
    return filled


def export(
    model: Any, path: str | os.PathLike[str] | None = None, opset: int = 18
) -> onnx.ModelProto:
    """Export Keras 3 *model* to ONNX (dynamic batch) with layer metadata; save to *path*."""
    if opset > 18:
        raise InputError(f"tf2onnx exports opsets up to 18, got opset {opset}; use 18 or lower")
    tf, tf2onnx = _import_tf()
    specs = tuple(
        tf.TensorSpec((None, *tuple(t.shape[1:])), t.dtype, name=t.name.split(":")[0])
        for t in model.inputs
    )

    @tf.function(input_signature=specs)  # type: ignore[untyped-decorator]
    def forward(*xs: Any) -> Any:
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    proto: onnx.ModelProto
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=specs, opset=opset)
    annotate(proto, model)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
