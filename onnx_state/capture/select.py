"""Select the tensors to capture: layers by type or name, exclusions, before/after.

One vocabulary for where a capture sits on its layer: ``side`` is ``after`` (the layer's
output) or ``before`` (its data input), and ``method`` picks ``after``, ``before`` or
``both``. Capture names keep TensorState's suffixes, ``<layer>_post_states`` and
``<layer>_pre_states``, which is also what the results store calls ``kind``; a layer's
further outputs (LSTM's Y_h and Y_c, a Split's parts) are ``<layer>.<k>_post_states``, k
being the output's position on its node.

What is read can differ from the layer's tensor, never its states:

- a tensor whose only consumers are activations f with x > 0 ⇔ f(x) > 0 exactly in floating
  point (Relu; LeakyRelu with alpha > 0; Clip with min 0 and max > 0) is read at the
  activation's output, which keeps onnxruntime's Conv+activation fusion (``literal`` reads
  the tensor itself);
- with ``quantized``, a float tensor whose only consumer is a QuantizeLinear (a QDQ model)
  is read as that quantized tensor, firing iff q > its zero point: the deployed int8
  values (onnxruntime 1.32 still runs those layers unfused: see the README);
- a recurrent layer's directions join its hidden units into one neuron set, forward then
  backward, as PyTorch's ``nn.LSTM`` concatenates them (``Capture.merge_axis``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import onnx
from onnx import ModelProto, NodeProto

from onnx_state.capture.axes import RECURRENT_OPS, AxisChoice, input_axis, neuron_axis
from onnx_state.capture.index import GraphIndex, Shape, as_index
from onnx_state.capture.layers import Layer, list_layers, node_label
from onnx_state.errors import (
    AxisGuessWarning,
    InputError,
    LayerNotFoundError,
    ModelError,
    did_you_mean,
)

__all__ = [
    "DEFAULT_ATTACH_TO",
    "INTEGER_TYPES",
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
DEFAULT_ATTACH_TO = (
    "Conv", "ConvTranspose", "Gemm", "MatMul",
    # integer and quantized forms: a quantized model is analysed in its own arithmetic
    "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm",
)  # fmt: skip
KIND: dict[Side, str] = {"after": "post", "before": "pre"}  # TensorState's name suffixes
INTEGER_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
}  # fmt: skip
# Quantized tensors fire iff > their zero point (ONNX's QuantizeLinear makes 8- and 16-bit ones).
_QUANTIZED_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
}  # fmt: skip
# Types onnxruntime hands to Python as raw bytes (float8) or not at all (4-bit): not counted.
_RAW_TYPES = {
    getattr(onnx.TensorProto, t) for t in (
        "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
        "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2",
    ) if hasattr(onnx.TensorProto, t)
}  # fmt: skip
# Quantizing ops -> the input that holds their output's zero point.
_ZERO_POINT_INPUT = {
    "quantizelinear": 2, "qlinearconv": 7, "qlinearmatmul": 7, "qgemm": 8, "qlinearadd": 7,
    "qlinearmul": 7, "qlinearaveragepool": 4, "qlinearglobalaveragepool": 4,
    "qlinearleakyrelu": 4, "qlinearsigmoid": 4, "qlinearsoftmax": 4, "qlinearconcat": 1,
}  # fmt: skip
# Of those, the ops that keep every channel in place: a per-channel zero point still applies.
_CHANNEL_KEEPING = {"Identity", "MaxPool", "GlobalMaxPool", "Resize"}
# Ops whose quantized output keeps its input's zero point (they move or pick values).
_ZERO_POINT_KEEPING = {
    "maxpool", "reshape", "transpose", "flatten", "squeeze", "unsqueeze", "split", "slice",
    "identity", "gather", "depthtospace", "spacetodepth", "tile", "expand", "resize",
    "globalmaxpool",
}  # fmt: skip


@dataclass(frozen=True)
class Capture:
    """A tensor to capture and how to read its neurons.

    ``tensor`` is the layer's tensor; ``source`` the graph output actually read (the same
    tensor, or one with the same states: see the module docstring); ``key`` names the array
    the counters see in ``BatchRun.captured``, which ``view`` makes from the source.
    """

    name: str  # e.g. conv_1_post_states
    tensor: str
    layer: str
    layer_type: str
    op_type: str
    side: Side
    axis: int  # of the array the counter sees (after merge_axis)
    rank: int | None = None  # of that array
    elem_type: int = onnx.TensorProto.FLOAT  # of the source
    shape: Shape | None = field(default=None, compare=False)  # of the source
    source: str = ""  # the graph output read; "" means tensor
    axis_rule: str = ""  # how the neuron axis was found (axes.AxisChoice.rule)
    merge_axis: int | None = None  # a source axis joined into the neurons, before them
    zero_point: int | tuple[int, ...] | None = None  # integer tensors fire iff > this
    arithmetic: Literal["float", "integer", "quantized"] = "float"
    # For a layer inside If/Loop/Scan bodies: (owner, subgraph attribute, ...) down to its
    # subgraph (see capture.control); ``tensor`` is then that subgraph's name.
    path: tuple[str, ...] = ()
    # Iteration axes in front of the array, one per Loop/Scan on the path: never the samples
    stacked: int = 0
    packed: bool = False  # read as bits packed inside the graph (capture.pack), uint8 bytes
    # an int8 Q/DQ pair run as uint8, zero points + 128, as onnxruntime runs it (capture.qdq)
    as_uint8: bool = False

    @property
    def kind(self) -> str:
        """``post`` or ``pre``: the side as the results store and capture names spell it."""
        return KIND[self.side]

    @property
    def read(self) -> str:
        """The graph output this capture reads."""
        return self.source or self.tensor

    @property
    def key(self) -> str:
        """The name of the array the counters see (the source, or its merged view)."""
        if self.packed:
            return f"{self.read}#packed"
        if self.merge_axis is None:
            return self.read
        return f"{self.read}#merge{self.merge_axis}"

    def view(self, array: np.ndarray) -> np.ndarray:
        """The source *array* as the counter sees it: merge_axis joined into the neurons,
        which it precedes (so direction-major order: forward units, then backward)."""
        if self.merge_axis is None:
            return array
        m, a = self.merge_axis, self.axis + 1  # the source's neuron axis
        moved = np.moveaxis(array, m, a - 1)
        shape = moved.shape
        return moved.reshape(*shape[: a - 1], shape[a - 1] * shape[a], *shape[a + 1 :])


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
        or key in (layer.name, layer.output, *layer.outputs)
        or key in layer.nodes
    )


def _names_whole(layer: Layer, key: str, outs: Sequence[str]) -> bool:
    """Whether *key* names *layer* as a whole (its name, a node's, or a type), not just one
    of its outputs *outs* (a layer named like its first output is still named whole)."""
    return key not in outs or key == layer.name or key in layer.nodes


def _names(layer: Layer) -> tuple[str, ...]:
    """What an exclusion may name: the layer, its nodes, its outputs."""
    return (layer.name, *layer.nodes, layer.output, *layer.outputs)


def _check_request(
    layers: Sequence[Layer], attach_to: Sequence[str], exclude: Sequence[str]
) -> None:
    """Report every key that matches nothing, all at once, with suggestions."""
    vocabulary: set[str] = set()
    for layer in layers:
        vocabulary.update((layer.layer_type, *layer.op_types, *_names(layer)))
    problems = []
    for key in attach_to:
        if any(_layer_matches(layer, key) for layer in layers):
            continue
        problems.append(
            f"{key!r} matches no op type, layer type, layer or tensor name."
            + did_you_mean(key, vocabulary)
        )
    for key in exclude:
        if not any(key in _names(layer) for layer in layers):
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
    *,
    literal: bool = False,
    quantized: bool = False,
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
    literal:
        Read each layer's tensor itself, not an activation's output with the same states.
    quantized:
        In a QDQ model, read a float tensor whose only consumer is a QuantizeLinear as that
        quantized tensor (fires iff > its zero point: the deployed int8 arithmetic).

    Every name that matches nothing is reported at once, with suggestions. A neuron axis
    that no rule decided is warned about once per layer (``AxisGuessWarning``).
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
    placed = [((), index, layer) for layer in list_layers(index)] + nested_layers(index)
    layers = [layer for _, _, layer in placed]
    _check_request(layers, [] if lenient else attach_to, exclude)
    overrides = dict(neuron_axes or {})
    sides: tuple[Side, ...] = ("before", "after") if method == "both" else (method,)
    captures: list[Capture] = []
    for path, where, layer in placed:
        if not any(_layer_matches(layer, k) for k in attach_to):
            continue
        outs = layer.outputs or (layer.output,)
        if any(k in _names(layer) and _names_whole(layer, k, outs) for k in exclude) or set(
            outs
        ) <= set(exclude):
            continue
        # Outputs named in attach_to (or exclude) alone, when nothing names the layer whole;
        # by type, every used output that can hold states (EmbedLayerNormalization's
        # rank-1 mask_index cannot)
        whole = any(_layer_matches(layer, k) and _names_whole(layer, k, outs) for k in attach_to)
        chosen = [t for t in outs if (whole or t in attach_to) and t not in exclude]
        if whole and len(outs) > 1:
            chosen = [t for t in chosen if (where.rank(t) or 2) >= 2] or chosen
        for side in sides:
            if side == "before":
                tensors = [] if layer.input is None else [(layer.input, "")]
            else:
                tensors = [(t, "" if k == 0 else f".{_position(where, t)}") for k, t in
                           enumerate(outs) if t in chosen]  # fmt: skip
            for tensor, suffix in tensors:
                name = capture_name(layer.name + suffix, side)
                capture = _capture(where, layer, side, tensor, name, overrides, literal,
                                   quantized, "body" in path[1::2])  # fmt: skip
                captures.append(replace(capture, path=path) if path else capture)
    _warn_guesses(captures)
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
    return _unique_names(captures)


def nested_layers(index: GraphIndex) -> list[tuple[tuple[str, ...], GraphIndex, Layer]]:
    """Layers inside If branches and Loop/Scan bodies, nested to any depth: (path of the
    subgraph, its index, the layer named with its path, e.g. ``if0/then_branch/conv``)."""
    if not index.nested_names:
        return []
    from onnx_state.capture.control import nested_nodes, subgraph_model

    found = []
    for path in dict.fromkeys(n.path for n in nested_nodes(index.model)):
        sub = GraphIndex(subgraph_model(index.model, path))
        for layer in list_layers(sub):
            found.append((path, sub, replace(layer, name="/".join((*path, layer.name)))))
    return found


def _position(index: GraphIndex, tensor: str) -> int:
    node = index.producers.get(tensor)
    return list(node.output).index(tensor) if node is not None else 0


def _capture(
    index: GraphIndex,
    layer: Layer,
    side: Side,
    tensor: str,
    name: str,
    overrides: Mapping[str, int],
    literal: bool,
    quantized: bool,
    in_body: bool = False,
) -> Capture:
    """One capture of *tensor*: its axis, what is read, and its integer threshold.
    *in_body*: the tensor lies in a Loop or Scan body, which stacks it per iteration."""
    elem_type, shape = index.info.get(tensor, (None, None))
    if elem_type is None:
        raise ModelError(
            f"cannot infer the type of tensor {tensor!r} (layer {layer.name!r}); run "
            "onnx.shape_inference on the model or give its outputs value_info"
        )
    rank = len(shape) if shape is not None else None
    if rank is not None and rank < 2:
        raise InputError(
            f"{name}: tensor {tensor!r} has rank {rank}, but a capture needs samples and "
            f"neurons (rank >= 2); exclude layer {layer.name!r}"
        )
    override = overrides.get(layer.name, overrides.get(name))
    merge = None
    if override is not None:
        choice = AxisChoice(override, "given (neuron_axes)")
    else:
        choice = _axis_for(index, layer, side, tensor)
        merge = _directions_axis(index, tensor) if side == "after" else None
    axis = choice.axis
    if rank is not None and not -rank <= axis < rank:
        raise InputError(f"neuron axis {axis} is out of range for {name} of rank {rank}")
    axis = axis % rank if rank else axis
    if axis == 0 and (rank or 2) >= 2 and not in_body:
        # (inside a Loop/Scan body axis 0 moves right, behind the iteration axes: see
        # rewrite.expose_nested)
        raise InputError(
            f"{name}: the neurons of tensor {tensor!r} are on its axis 0 ({choice.rule}), "
            f"where onnx_state counts the samples; give layer {layer.name!r} another axis "
            f"(neuron_axes, --neuron-axis {layer.name}=AXIS), capture it on its other side "
            "(method), or exclude it"
        )
    source, arithmetic = tensor, "float"
    if not literal and merge is None:
        source = _same_states_activation(index, tensor)
    if quantized and merge is None:
        q = _quantizer_of(index, source)
        # (a float8 or 4-bit quantization keeps the float tensor: see _RAW_TYPES)
        if q is not None and index.info.get(q, (None,))[0] in _QUANTIZED_TYPES:
            source, arithmetic = q, "quantized"
    src_type, src_shape = index.info.get(source, (elem_type, shape))
    if src_type in _RAW_TYPES:
        type_name = onnx.TensorProto.DataType.Name(src_type)
        raise InputError(
            f"{name}: tensor {source!r} is {type_name}, which onnxruntime does not hand out "
            f"as numbers; capture the float tensor it is made from, or exclude layer "
            f"{layer.name!r}"
        )
    zero_point = None
    if src_type in INTEGER_TYPES:
        arithmetic = "quantized" if src_type in _QUANTIZED_TYPES else "integer"
        zero_point = _zero_point(index, source, axis, rank, layer.name)
    if merge is not None:
        axis, rank = axis - 1, (rank - 1 if rank else rank)
    return Capture(
        name=name,
        tensor=tensor,
        layer=layer.name,
        layer_type=layer.layer_type,
        op_type=layer.op_types[-1] if side == "after" else layer.op_types[0],
        side=side,
        axis=axis,
        rank=rank,
        elem_type=src_type or elem_type,
        shape=src_shape,
        source="" if source == tensor else source,
        axis_rule=choice.rule + (" (guessed)" if choice.guessed else ""),
        merge_axis=merge,
        zero_point=zero_point,
        arithmetic=arithmetic,  # type: ignore[arg-type]
    )


def _axis_for(index: GraphIndex, layer: Layer, side: Side, tensor: str) -> AxisChoice:
    if side == "before":
        # The layer's first node that reads the tensor defines its axis (a Conv's input
        # has channels on axis 1, whatever produced it).
        for i, node in enumerate(index.nodes):
            if tensor in node.input and node_label(node, i) in layer.nodes:
                found = input_axis(index, node, tensor)
                if found is not None:
                    return found
                break
    return neuron_axis(index, tensor)


def _directions_axis(index: GraphIndex, tensor: str) -> int | None:
    """The directions axis of a recurrent op's output, to join into its hidden units."""
    node = index.producers.get(tensor)
    if node is None or node.op_type.lower() not in RECURRENT_OPS:
        return None
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    if list(node.output).index(tensor) == 0:
        return 2 if layout else 1  # Y: (batch, seq, dirs, hidden) / (seq, dirs, batch, hidden)
    return 1 if layout else 0  # Y_h, Y_c: (batch, dirs, hidden) / (dirs, batch, hidden)


def _same_states_activation(index: GraphIndex, tensor: str) -> str:
    """The output of the activation that alone consumes *tensor*, where x > 0 ⇔ f(x) > 0.

    Relu(x) = max(x, 0) returns x itself for x > 0 (subnormals included: onnxruntime does
    not flush denormals unless asked) and 0 or -0 otherwise; LeakyRelu with alpha > 0
    returns x for x > 0 and alpha * x <= 0 otherwise (an underflow gives -0, still not > 0;
    alpha = 0 would turn -inf into NaN, which the NaN count would see);
    Clip(x, 0, max > 0) gives min(x, max) > 0 for x > 0 and 0 otherwise. NaN stays NaN in
    each. A graph output is already read without disturbing the model: it stays.
    """
    if tensor in index.graph_outputs or index.info.get(tensor, (None,))[0] in INTEGER_TYPES:
        return tensor  # (an integer tensor fires against its zero point, not 0)
    users = [index.nodes[i] for i in sorted(index.consumers.get(tensor, ()))]
    if not users or not all(_keeps_sign(index, n) and n.input[0] == tensor for n in users):
        return tensor
    return str(users[0].output[0])


def _keeps_sign(index: GraphIndex, node: NodeProto) -> bool:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return False
    if op == "Relu":
        return True
    if op == "LeakyRelu":
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.01)
        return alpha > 0
    if op == "Clip":
        if index.opset() < 11:
            lo = next((a.f for a in node.attribute if a.name == "min"), None)
            hi = next((a.f for a in node.attribute if a.name == "max"), None)
        else:
            lo = _scalar(index, node.input[1]) if len(node.input) > 1 and node.input[1] else None
            hi = _scalar(index, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if len(node.input) > 2 and node.input[2] and hi is None:
                return False  # a max computed at run time
        return lo == 0 and (hi is None or hi > 0)
    return False


def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant_array(name)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _quantizer_of(index: GraphIndex, tensor: str) -> str | None:
    """The output of the QuantizeLinear that alone consumes float *tensor*, if any."""
    if index.info.get(tensor, (None,))[0] in INTEGER_TYPES:
        return None
    users = [index.nodes[i] for i in index.consumers.get(tensor, ())]
    if len(users) != 1 or users[0].op_type != "QuantizeLinear" or tensor in index.graph_outputs:
        return None
    return str(users[0].output[0])


def _zero_point(
    index: GraphIndex, tensor: str, axis: int, rank: int | None, layer: str
) -> int | tuple[int, ...] | None:
    """The threshold of an integer tensor: int32/int64 accumulators fire iff > 0, 8- and
    16-bit quantized values iff > the zero point of the op that quantized them."""
    elem_type = index.info.get(tensor, (None,))[0]
    if elem_type not in _QUANTIZED_TYPES:
        return 0
    name = tensor
    passed: list[str] = []  # the ops walked through, nearest first
    for _ in range(len(index.nodes) + 1):
        node = index.producers.get(name)
        if node is None:
            break
        op = node.op_type.lower()
        if op == "dynamicquantizelinear":
            raise ModelError(
                f"the zero point of {tensor!r} (layer {layer!r}) is computed at run time "
                "(DynamicQuantizeLinear); capture the float tensor instead"
            )
        if op in _ZERO_POINT_INPUT:
            k = _ZERO_POINT_INPUT[op]
            if len(node.input) <= k or not node.input[k]:
                return 0  # absent: zero
            value = index.constant_array(node.input[k])
            if value is None:
                raise ModelError(
                    f"the zero point of {tensor!r} (layer {layer!r}) is computed at run time; "
                    "capture the float tensor instead (attach to the DequantizeLinear output)"
                )
            flat = [int(v) for v in np.asarray(value).reshape(-1)]
            if len(set(flat)) <= 1:
                return flat[0] if flat else 0
            q_axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            moved = [o for o in passed if o not in _CHANNEL_KEEPING]
            if moved:
                raise ModelError(
                    f"{tensor!r} (layer {layer!r}) has one zero point per channel, and "
                    f"{moved[0]} between it and its quantizer moves or cuts channels; capture "
                    "the float (dequantized) tensor instead"
                )
            if rank is not None and q_axis % rank == axis:
                return tuple(flat)
            raise ModelError(
                f"{tensor!r} (layer {layer!r}) has one zero point per entry of axis {q_axis}, "
                f"not of its neuron axis {axis}; capture the float (dequantized) tensor instead"
            )
        if op not in _ZERO_POINT_KEEPING:
            break
        passed.append(node.op_type)
        data = index.data_input(node)
        if data is None:
            break
        name = data
    warnings.warn(
        f"layer {layer!r}: no quantizing op found for the quantized tensor {tensor!r}; assuming "
        "zero point 0 (it fires iff > 0). Capture the float tensor if that is wrong",
        AxisGuessWarning,
        stacklevel=4,
    )
    return 0


def _warn_guesses(captures: Sequence[Capture]) -> None:
    """One warning per layer whose neuron axis no rule decided."""
    warned: set[str] = set()
    for c in captures:
        if not c.axis_rule.endswith("(guessed)") or c.layer in warned:
            continue
        warned.add(c.layer)
        shape = "?" if c.shape is None else "(" + ", ".join(str(d) for d in c.shape) + ")"
        warnings.warn(
            f"layer {c.layer!r}: no rule decides the neuron axis of {c.tensor!r} (shape "
            f"{shape}): {c.axis_rule.removesuffix(' (guessed)')}; assuming axis {c.axis}. "
            f"Override it with neuron_axes={{{c.layer!r}: AXIS}} "
            f"(CLI --neuron-axis {c.layer}=AXIS)",
            AxisGuessWarning,
            stacklevel=3,
        )


def _unique_names(captures: list[Capture]) -> list[Capture]:
    """Captures whose names collide (a layer named like another's output) get ``_2``, ..."""
    taken: set[str] = set()
    out = []
    for c in captures:
        name, k = c.name, 1
        while name in taken:
            k += 1
            name = f"{c.name}_{k}"
        taken.add(name)
        out.append(c if name == c.name else replace(c, name=name))
    return out
