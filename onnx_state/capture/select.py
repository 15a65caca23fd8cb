"""Select the tensors to capture: layers by type or name, exclusions, before/after.

One vocabulary for where a capture sits on its layer: ``side`` is ``after`` (the layer's
output) or ``before`` (its data input), and ``method`` picks ``after``, ``before`` or
``both``. Capture names keep TensorState's suffixes, ``<layer>_post_states`` and
``<layer>_pre_states``, which is also what the results store calls ``kind``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import onnx
from onnx import ModelProto

from onnx_state.capture.axes import neuron_axis
from onnx_state.capture.index import GraphIndex, Shape, as_index
from onnx_state.capture.layers import Layer, list_layers
from onnx_state.errors import InputError, LayerNotFoundError, ModelError, did_you_mean

__all__ = [
    "DEFAULT_ATTACH_TO",
    "METHODS",
    "Capture",
    "Method",
    "Side",
    "capture_name",
    "sanitize_name",
    "select_captures",
]

Method = Literal["after", "before", "both"]
Side = Literal["after", "before"]
METHODS: tuple[Method, ...] = ("after", "before", "both")
DEFAULT_ATTACH_TO = ("Conv", "ConvTranspose", "Gemm", "MatMul")
KIND: dict[Side, str] = {"after": "post", "before": "pre"}  # TensorState's name suffixes


@dataclass(frozen=True)
class Capture:
    """A tensor to capture and how to read its neurons."""

    name: str  # e.g. conv_1_post_states
    tensor: str
    layer: str
    layer_type: str
    op_type: str
    side: Side
    axis: int
    rank: int | None = None
    elem_type: int = onnx.TensorProto.FLOAT
    shape: Shape | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """``post`` or ``pre``: the side as the results store and capture names spell it."""
        return KIND[self.side]


def sanitize_name(name: str) -> str:
    """*name* with every run of characters outside [0-9A-Za-z_.-] replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_") or "layer"


def capture_name(layer: str, side: Side) -> str:
    """``<layer>_post_states`` after a layer, ``<layer>_pre_states`` before it."""
    return f"{sanitize_name(layer)}_{KIND[side]}_states"


def _layer_matches(layer: Layer, key: str) -> bool:
    k = key.lower()
    return (
        layer.layer_type.lower() == k
        or any(op.lower() == k for op in layer.op_types)
        or key in (layer.name, layer.output)
        or key in layer.nodes
    )


def _check_request(
    index: GraphIndex, layers: Sequence[Layer], attach_to: Sequence[str], exclude: Sequence[str]
) -> None:
    """Report every key that matches nothing, all at once, with suggestions."""
    vocabulary: set[str] = set()
    for layer in layers:
        vocabulary.update(
            (layer.name, layer.layer_type, *layer.op_types, *layer.nodes, layer.output)
        )
    nested = index.nested_names
    problems = []
    for key in attach_to:
        if any(_layer_matches(layer, key) for layer in layers):
            continue
        if key in nested:
            problems.append(
                f"{key!r} lies inside the body of control-flow node {nested[key]!r}; capturing "
                "inside If/Loop/Scan bodies is not supported, capture that node's output instead"
            )
        else:
            problems.append(
                f"{key!r} matches no op type, layer type, layer or tensor name."
                + did_you_mean(key, vocabulary)
            )
    for key in exclude:
        if not any(key in (layer.name, *layer.nodes, layer.output) for layer in layers):
            problems.append(f"exclude {key!r} names no layer." + did_you_mean(key, vocabulary))
    if problems:
        types = sorted(
            {layer.layer_type for layer in layers} | {o for la in layers for o in la.op_types}
        )
        raise LayerNotFoundError(
            " ".join(problems) + f" Layer types in this model: {', '.join(types)}."
        )


def select_captures(
    model: GraphIndex | ModelProto,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
) -> list[Capture]:
    """Tensors to capture for the requested layers, with their neuron axes.

    Parameters
    ----------
    model:
        The model's GraphIndex (built once per model), or the model itself.
    attach_to:
        ONNX op types and framework layer types (case-insensitive), or layer, node and
        tensor names (exact); None means DEFAULT_ATTACH_TO, which need not all exist.
    exclude:
        Layer, node or tensor names to skip even when their type matches.
    method:
        Capture each layer's output (``after``), its data input (``before``), or both.
    neuron_axes:
        Neuron axis overrides by layer or capture name.

    Every name that matches nothing is reported at once, with suggestions.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    lenient = attach_to is None  # the defaults need not all exist in every model
    attach_to = list(DEFAULT_ATTACH_TO) if attach_to is None else attach_to
    attach_to = [attach_to] if isinstance(attach_to, str) else list(attach_to)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    if not attach_to:
        raise InputError("attach_to is empty; name at least one op type, layer type or layer")
    index = as_index(model)
    inferred = index.info
    layers = list_layers(index)
    _check_request(index, layers, [] if lenient else attach_to, exclude)
    overrides = dict(neuron_axes or {})
    sides: tuple[Side, ...] = ("before", "after") if method == "both" else (method,)
    captures: list[Capture] = []
    for layer in layers:
        if not any(_layer_matches(layer, k) for k in attach_to):
            continue
        if any(k in (layer.name, *layer.nodes, layer.output) for k in exclude):
            continue
        for side in sides:
            tensor = layer.output if side == "after" else layer.input
            if tensor is None:
                continue
            name = capture_name(layer.name, side)
            elem_type, shape = inferred.get(tensor, (None, None))
            if elem_type is None:
                raise ModelError(
                    f"cannot infer the type of tensor {tensor!r} (layer {layer.name!r}); run "
                    "onnx.shape_inference on the model or give its outputs value_info"
                )
            axis = overrides.get(layer.name, overrides.get(name))
            if axis is None:
                axis = neuron_axis(index, tensor)
            rank = len(shape) if shape is not None else None
            if rank is not None and not -rank <= axis < rank:
                raise InputError(f"neuron axis {axis} is out of range for {name} of rank {rank}")
            captures.append(
                Capture(
                    name=name,
                    tensor=tensor,
                    layer=layer.name,
                    layer_type=layer.layer_type,
                    op_type=layer.op_types[-1] if side == "after" else layer.op_types[0],
                    side=side,
                    axis=axis % rank if rank else axis,
                    rank=rank,
                    elem_type=elem_type,
                    shape=shape,
                )
            )
    unknown = set(overrides) - {c.layer for c in captures} - {c.name for c in captures}
    if unknown:
        raise LayerNotFoundError(
            f"neuron-axis overrides name layers that are not captured: {', '.join(sorted(unknown))}"
        )
    if not captures:
        if lenient:
            raise LayerNotFoundError(
                f"no layer of the default types {', '.join(attach_to)}; choose them with attach_to"
            )
        raise LayerNotFoundError(
            f"{attach_to} selected layers, but exclude {exclude} removed them all"
        )
    return captures
