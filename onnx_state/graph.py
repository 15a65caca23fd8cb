"""Select layer outputs of an ONNX graph and expose them as graph outputs (ModelProto in, out).

Layers. A node that carries exporter metadata (``onnx_state.layer_name``) belongs to that
framework layer; consecutive nodes with one layer name form one layer (tf2onnx's
``conv_1/BiasAdd`` then ``conv_1/Elu``). A node without metadata is a layer of its own,
named after the node. ``after`` captures the layer's final output, ``before`` its data input.

Neuron axis of a captured tensor, first rule that applies:
1. a user override for the layer; 2. ``onnx_state.neuron_axis`` metadata on the producer;
3. by producer op: Conv-like, pooling, normalization → 1 (ONNX is channels-first);
   Gemm/MatMul → last axis; Transpose → where the input's axis went; Flatten → 1;
   Reshape → 1 when the result has rank 2, else the input's axis when it survives;
   element-wise ops and everything else → the axis of their first data input;
   a graph input → its entry in the model's ``onnx_state.input_axes``, else 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import ModelProto, NodeProto, helper

from onnx_state.errors import InputError, LayerNotFoundError, ModelError, did_you_mean

__all__ = [
    "META_INPUT_AXES",
    "META_LAYER_NAME",
    "META_LAYER_TYPE",
    "META_NEURON_AXIS",
    "Capture",
    "Layer",
    "add_outputs",
    "check_external_data",
    "list_layers",
    "load_model",
    "model_sha256",
    "select_captures",
]

META_LAYER_NAME = "onnx_state.layer_name"
META_LAYER_TYPE = "onnx_state.layer_type"
META_NEURON_AXIS = "onnx_state.neuron_axis"
META_INPUT_AXES = "onnx_state.input_axes"  # model-level JSON {input name: neuron axis}

METHODS = ("after", "before", "both")
DEFAULT_ATTACH_TO = ("Conv", "ConvTranspose", "Gemm", "MatMul")

_CHANNEL_OPS = {
    "conv", "convtranspose", "convinteger", "qlinearconv", "maxpool", "averagepool",
    "globalaveragepool", "globalmaxpool", "lppool", "globallppool", "batchnormalization",
    "instancenormalization", "lrn", "maxroipool", "roialign", "deformconv",
}  # fmt: skip
_LAST_AXIS_OPS = {"gemm", "matmul", "matmulinteger", "qlinearmatmul", "einsum"}
_CONTROL_FLOW = {"If", "Loop", "Scan"}


@dataclass(frozen=True)
class Layer:
    """One selectable layer: one node, or a run of nodes sharing exporter metadata."""

    name: str
    layer_type: str  # framework class from metadata, else the ONNX op type
    op_types: tuple[str, ...]
    nodes: tuple[str, ...]
    input: str | None  # data input from outside the layer
    output: str  # final output
    has_metadata: bool


@dataclass(frozen=True)
class Capture:
    """A tensor to capture and how to read its neurons."""

    name: str  # e.g. conv_1_post_states
    tensor: str
    layer: str
    layer_type: str
    op_type: str
    kind: str  # "post" or "pre"
    axis: int
    rank: int | None = None
    elem_type: int = onnx.TensorProto.FLOAT
    shape: tuple[int | str | None, ...] | None = field(default=None, compare=False)


# -- loading ----------------------------------------------------------------------------------
def check_external_data(model: ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations outside *base_dir* (absolute or escaping with ``..``)."""
    base = base_dir.resolve()
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelError(
                f"initializer {tensor.name!r} points to external data {location!r} outside the "
                f"model's folder {base}; move the data file next to the model"
            )


def _all_initializers(model: ModelProto) -> Iterable[onnx.TensorProto]:
    for graph in _all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def _all_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_graphs(g)


def external_bytes(model: ModelProto, base_dir: Path) -> int:
    """Bytes of external data a model refers to (each file counted once)."""
    files = set()
    for tensor in _all_initializers(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return sum((base_dir / f).stat().st_size for f in files if (base_dir / f).is_file())


def load_model(
    model: str | os.PathLike | ModelProto,
    load_external: bool = True,
    max_bytes: int | None = None,
) -> ModelProto:
    """Load a model file (checking its external data stays in its folder) or pass a proto.

    External data is loaded only when *load_external* is true and the model with its data
    stays within *max_bytes* (protobuf cannot serialize more than 2 GB); otherwise the
    tensors keep their references and the file is handed to onnxruntime by path.
    """
    if isinstance(model, ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist; give the path to a .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    check_external_data(proto, path.parent)
    total = path.stat().st_size + external_bytes(proto, path.parent)
    if load_external and (max_bytes is None or total <= max_bytes):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except OSError as exc:
            raise ModelError(f"cannot read the external data of {path}: {exc}") from None
    return proto


def model_sha256(model: ModelProto) -> str:
    """Hash of the serialized model (deterministic serialization)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


# -- layers -----------------------------------------------------------------------------------
def _meta(node: NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _producers(graph: onnx.GraphProto) -> dict[str, NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _data_input(node: NodeProto, constants: set[str]) -> str | None:
    return next((i for i in node.input if i and i not in constants), None)


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _node_label(node: NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.BOOL,
}  # fmt: skip


def _connected(members: list[tuple[int, NodeProto]]) -> list[list[tuple[int, NodeProto]]]:
    """Split nodes sharing a layer name into data-flow-connected parts, in graph order.

    A module called twice (one ReLU object used after two convolutions) gives two parts,
    so each call is a layer of its own.
    """
    parent = list(range(len(members)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {o: k for k, (_, n) in enumerate(members) for o in n.output if o}
    for k, (_, node) in enumerate(members):
        for name in node.input:
            if name in producer:
                parent[find(k)] = find(producer[name])
    parts: dict[int, list[tuple[int, NodeProto]]] = {}
    for k, member in enumerate(members):
        parts.setdefault(find(k), []).append(member)
    return sorted(parts.values(), key=lambda part: part[0][0])


def list_layers(model: ModelProto, info: Mapping | None = None) -> list[Layer]:
    """Layers of the main graph in order of their first node.

    Nodes sharing an ``onnx_state.layer_name`` and connected by data flow form one layer,
    even when other nodes sit between them (tf2onnx interleaves shape arithmetic); a
    module called twice gives two layers (``act``, ``act_1``). A layer's output is the last of its
    tensors used outside it; its input is the first tensor from outside, preferring float
    data over shape arithmetic. *info* is ``_shape_info(model)`` when the caller has it.
    """
    graph = model.graph
    info = _shape_info(model) if info is None else info
    constants = _constants(graph)
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(i)
    graph_outputs = {o.name for o in graph.output}
    named: dict[str, list[tuple[int, NodeProto]]] = {}
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        key = _meta(node).get(META_LAYER_NAME) or f"\0{i}"  # \0: a node of its own
        named.setdefault(key, []).append((i, node))
    groups = [(key, part) for key, members in named.items() for part in _connected(members)]
    layers = []
    taken: set[str] = set()
    for key, members in groups:
        nodes = [n for _, n in members]
        indices = {i for i, _ in members}
        produced = {o for n in nodes for o in n.output}
        outside = [
            o for n in nodes for o in n.output
            if o and (o in graph_outputs or consumers.get(o, set()) - indices)
        ]  # fmt: skip
        inputs = [i for n in nodes for i in n.input if i and i not in produced | constants]
        floats = [i for i in inputs if info.get(i, (None,))[0] in _FLOAT_TYPES]
        has_meta = not key.startswith("\0")
        name = key if has_meta else _node_label(nodes[0], members[0][0])
        base, k = name, 0
        while name in taken:  # a module called twice (act, act_1), or a name reused
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        meta = _meta(nodes[-1])
        layers.append(
            Layer(
                name=name,
                layer_type=meta.get(META_LAYER_TYPE, nodes[-1].op_type),
                op_types=tuple(n.op_type for n in nodes),
                nodes=tuple(_node_label(n, i) for i, n in members),
                input=(floats or inputs or [None])[0],
                output=outside[-1] if outside else nodes[-1].output[0],
                has_metadata=has_meta,
            )
        )
    return layers


# -- selection --------------------------------------------------------------------------------
def sanitize_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_") or "layer"


def _layer_matches(layer: Layer, key: str) -> bool:
    k = key.lower()
    return (
        layer.layer_type.lower() == k
        or any(op.lower() == k for op in layer.op_types)
        or key in (layer.name, layer.output)
        or key in layer.nodes
    )


def _nested_names(model: ModelProto) -> dict[str, str]:
    """Names of nodes and tensors inside If/Loop/Scan bodies -> the owning node."""
    found: dict[str, str] = {}
    for node in model.graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                for g in _all_graphs(sub):
                    for n in g.node:
                        for name in (n.name, *n.output):
                            if name:
                                found.setdefault(name, node.name or node.op_type)
    return found


def _check_request(
    model: ModelProto, layers: Sequence[Layer], attach_to: Sequence[str], exclude: Sequence[str]
) -> None:
    """Report every key that matches nothing, all at once, with suggestions."""
    vocabulary = set()
    for layer in layers:
        vocabulary.update(
            (layer.name, layer.layer_type, *layer.op_types, *layer.nodes, layer.output)
        )
    nested = _nested_names(model)
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
    model: ModelProto,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: str = "after",
    neuron_axes: Mapping[str, int] | None = None,
) -> list[Capture]:
    """Tensors to capture for the requested layers, with their neuron axes.

    *attach_to* entries match ONNX op types and framework layer types (case-insensitive),
    or layer, node and tensor names (exact); None means DEFAULT_ATTACH_TO. *exclude* names
    override type matches.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    lenient = attach_to is None  # the defaults need not all exist in every model
    attach_to = list(DEFAULT_ATTACH_TO) if attach_to is None else attach_to
    attach_to = [attach_to] if isinstance(attach_to, str) else list(attach_to)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    if not attach_to:
        raise InputError("attach_to is empty; name at least one op type, layer type or layer")
    inferred = _shape_info(model)
    layers = list_layers(model, inferred)
    _check_request(model, layers, [] if lenient else attach_to, exclude)
    overrides = dict(neuron_axes or {})
    kinds = {"after": ("post",), "before": ("pre",), "both": ("pre", "post")}[method]
    captures: list[Capture] = []
    for layer in layers:
        if not any(_layer_matches(layer, k) for k in attach_to):
            continue
        if any(k in (layer.name, *layer.nodes, layer.output) for k in exclude):
            continue
        for kind in kinds:
            tensor = layer.output if kind == "post" else layer.input
            if tensor is None:
                continue
            name = f"{sanitize_name(layer.name)}_{kind}_states"
            elem_type, shape = inferred.get(tensor, (None, None))
            if elem_type is None:
                raise ModelError(
                    f"cannot infer the type of tensor {tensor!r} (layer {layer.name!r}); run "
                    "onnx.shape_inference on the model or give its outputs value_info"
                )
            axis = overrides.get(layer.name, overrides.get(name))
            if axis is None:
                axis = neuron_axis(model, tensor, inferred)
            rank = len(shape) if shape is not None else None
            if rank is not None and not -rank <= axis < rank:
                raise InputError(f"neuron axis {axis} is out of range for {name} of rank {rank}")
            captures.append(
                Capture(
                    name=name,
                    tensor=tensor,
                    layer=layer.name,
                    layer_type=layer.layer_type,
                    op_type=layer.op_types[-1] if kind == "post" else layer.op_types[0],
                    kind=kind,
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


def _shape_info(model: ModelProto) -> dict[str, tuple[int | None, tuple | None]]:
    """elem type and shape of every tensor in the main graph, after shape inference.

    Exporters that declare every node output (torch.onnx does) make inference unneeded.
    """
    inferred = model
    # inference is a convenience; when it fails, fall back to what the model declares
    with contextlib.suppress(Exception):
        if not _fully_declared(model.graph):
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    info: dict[str, tuple[int | None, tuple | None]] = {}
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if not tt.elem_type:
            continue
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
        info[vi.name] = (tt.elem_type, shape)
    for init in graph.initializer:
        info.setdefault(init.name, (init.data_type, tuple(init.dims)))
    return info


def _fully_declared(graph: onnx.GraphProto) -> bool:
    """Whether every node output has a declared elem type and shape."""
    declared = {
        vi.name
        for vi in [*graph.value_info, *graph.output]
        if vi.type.tensor_type.elem_type and vi.type.tensor_type.HasField("shape")
    }
    return all(out in declared for node in graph.node for out in node.output if out)


def neuron_axis(model: ModelProto, tensor: str, info: Mapping | None = None) -> int:
    """Neuron axis of *tensor* by the rules in this module's docstring (may be negative).

    *info* is ``_shape_info(model)`` when the caller already has it.
    """
    graph = model.graph
    producers = _producers(graph)
    constants = _constants(graph)
    info = _shape_info(model) if info is None else info

    def rank_of(name: str) -> int | None:
        shape = info.get(name, (None, None))[1]
        return None if shape is None else len(shape)

    model_meta = {p.key: p.value for p in model.metadata_props}
    input_axes = json.loads(model_meta.get(META_INPUT_AXES, "{}"))

    def axis_of(name: str, depth: int = 0) -> int:
        node = producers.get(name)
        if node is None or depth > 200:
            return int(input_axes.get(name, 1))
        meta = _meta(node).get(META_NEURON_AXIS)
        if meta is not None:
            return int(meta)
        op = node.op_type.lower()
        rank = rank_of(name)
        if op in _CHANNEL_OPS:
            return 1
        if op in _LAST_AXIS_OPS:
            return (rank - 1) if rank else -1
        source = _data_input(node, constants)
        if op == "flatten" or source is None:
            return 1
        if op == "transpose":
            in_axis = axis_of(source, depth + 1)
            in_rank = rank_of(source) or rank
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm is None and in_rank:
                perm = list(range(in_rank))[::-1]
            if perm and in_rank:
                return perm.index(in_axis % in_rank)
            return 1
        if op in ("reshape", "squeeze", "unsqueeze"):
            if rank == 2:
                return 1
            in_axis = axis_of(source, depth + 1)
            in_shape, out_shape = info.get(source, (0, None))[1], info.get(name, (0, None))[1]
            if in_shape and out_shape and in_axis % len(in_shape) < len(out_shape):
                k = in_axis % len(in_shape)
                if in_shape[: k + 1] == out_shape[: k + 1]:
                    return k
            return (rank - 1) if rank else -1
        return axis_of(source, depth + 1)

    return axis_of(tensor)


# -- rewriting --------------------------------------------------------------------------------
def add_outputs(model: ModelProto, captures: Sequence[Capture]) -> ModelProto:
    """Return a copy of *model* with the captured tensors as extra graph outputs.

    Original outputs stay first and unchanged; each tensor is added once.
    """
    out = ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for capture in captures:
        if capture.tensor in present:
            continue
        present.add(capture.tensor)
        out.graph.output.append(
            helper.make_tensor_value_info(capture.tensor, capture.elem_type, capture.shape)
        )
    return out
