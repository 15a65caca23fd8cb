"""One index of a model's main graph, built once and shared by every capture step.

Layer listing, selection and neuron-axis inference all ask the same questions (who produces
this tensor, who consumes it, is it a constant, what are its type and shape); like onnx's
``utils.Extractor``, the answers are computed once per model here.
"""

from __future__ import annotations

import contextlib
import json
from functools import cached_property
from typing import Any

import onnx
from onnx import ModelProto, NodeProto

from onnx_state.capture.load import all_graphs
from onnx_state.capture.metadata import META_INPUT_AXES
from onnx_state.errors import ModelError

__all__ = [
    "CAPTURABLE_TYPES",
    "FLOAT_TYPES",
    "GraphIndex",
    "Shape",
    "TensorInfo",
    "as_index",
    "declared_info",
    "node_meta",
]

Shape = tuple[int | str | None, ...]
TensorInfo = tuple[int | None, Shape | None]  # (ONNX elem type, shape)

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.BOOL,
}  # fmt: skip
# Tensors worth counting: floats, and the integer types of quantized arithmetic (int8/uint8
# quantized values, int32 accumulators). int64 (indices, shapes) and bool (masks) are not.
CAPTURABLE_TYPES = (FLOAT_TYPES - {onnx.TensorProto.BOOL}) | {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32,
}  # fmt: skip


def node_meta(node: NodeProto) -> dict[str, str]:
    """A node's metadata_props as a dict."""
    return {p.key: p.value for p in node.metadata_props}


class GraphIndex:
    """Name -> node/tensor indexes of *model*'s main graph, and its tensor types and shapes.

    Parameters
    ----------
    model:
        The model; it must not change while the index is in use.
    """

    def __init__(self, model: ModelProto, info: dict[str, TensorInfo] | None = None) -> None:
        self.model = model
        graph = model.graph
        self.nodes: list[NodeProto] = list(graph.node)
        self.producers: dict[str, NodeProto] = {
            out: node for node in self.nodes for out in node.output if out
        }
        self.consumers: dict[str, set[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(name, set()).add(i)
        self.constants: set[str] = {t.name for t in graph.initializer}
        self.constants.update(o for n in self.nodes if n.op_type == "Constant" for o in n.output)
        self.graph_outputs: set[str] = {o.name for o in graph.output}
        self.info: dict[str, TensorInfo] = shape_info(model) if info is None else info

    def on_copy(self, model: ModelProto) -> GraphIndex:
        """This index over *model*, a copy of this index's model (its shape information is
        reused: no inference), holding nothing of the original."""
        return GraphIndex(model, self.info)

    @cached_property
    def input_axes(self) -> dict[str, int]:
        """The model-level ``onnx_state.input_axes`` entry: {input name: neuron axis}."""
        meta = {p.key: p.value for p in self.model.metadata_props}
        text = meta.get(META_INPUT_AXES, "{}")
        try:
            axes = json.loads(text)
        except ValueError:
            axes = None
        if not isinstance(axes, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in axes.items()
        ):
            raise ModelError(
                f"the model's {META_INPUT_AXES} metadata {text[:80]!r} is not a JSON object of "
                "integer axes; fix or remove it (override axes with neuron_axes)"
            )
        return axes

    @cached_property
    def nested_names(self) -> dict[str, str]:
        """Names of nodes and tensors inside If/Loop/Scan bodies -> the owning node."""
        found: dict[str, str] = {}
        for node in self.nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    subgraphs = [attr.g]
                else:
                    subgraphs = list(attr.graphs)
                for sub in subgraphs:
                    for g in all_graphs(sub):
                        for n in g.node:
                            for name in (n.name, *n.output):
                                if name:
                                    found.setdefault(name, node.name or node.op_type)
        return found

    def rank(self, tensor: str) -> int | None:
        """The rank of *tensor*, when known."""
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def shape(self, tensor: str) -> Shape | None:
        """The shape of *tensor* (None, or None/str entries, where unknown)."""
        return self.info.get(tensor, (None, None))[1]

    def opset(self, domain: str = "") -> int:
        """The model's opset version for *domain* (``ai.onnx`` for ""); 0 when not imported."""
        want = "" if domain in ("", "ai.onnx") else domain
        for entry in self.model.opset_import:
            if ("" if entry.domain in ("", "ai.onnx") else entry.domain) == want:
                return int(entry.version)
        return 0

    def constant_ints(self, name: str) -> list[int] | None:
        """The values of the integer constant *name* (an initializer or Constant output)."""
        tensor = self._constant_tensors.get(name)
        if tensor is None:
            return None
        from onnx import numpy_helper

        try:
            return [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
        except (ValueError, TypeError):
            return None

    def constant_array(self, name: str) -> Any:
        """The value of constant *name* as a numpy array, or None when it is not one."""
        tensor = self._constant_tensors.get(name)
        if tensor is None:
            return None
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor)

    @cached_property
    def _constant_tensors(self) -> dict[str, onnx.TensorProto]:
        found = {t.name: t for t in self.model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        found[node.output[0]] = a.t
        return found

    def data_input(self, node: NodeProto) -> str | None:
        """The first input of *node* that is not a constant."""
        return next((i for i in node.input if i and i not in self.constants), None)


def as_index(model: GraphIndex | ModelProto) -> GraphIndex:
    """*model*'s index (built here when a ModelProto is given)."""
    return model if isinstance(model, GraphIndex) else GraphIndex(model)


def shape_info(model: ModelProto) -> dict[str, TensorInfo]:
    """Elem type and shape of every tensor in the main graph, after shape inference.

    Exporters that declare every node output (torch.onnx does) make inference unneeded.
    Inference runs on a copy without the large weights (``_skeleton``): onnx serializes the
    model it is given, which would copy every weight twice.
    """
    inferred = model
    # inference is a convenience; when it fails, fall back to what the model declares
    with contextlib.suppress(Exception):
        if not _fully_declared(model.graph):
            inferred = onnx.shape_inference.infer_shapes(
                _skeleton(model), strict_mode=False, data_prop=True
            )
    return declared_info(inferred.graph)


def declared_info(graph: onnx.GraphProto) -> dict[str, TensorInfo]:
    """Elem type and shape of every value *graph* declares (inputs, value_info, outputs,
    initializers); symbolic dims as their names, unknown ones as None."""
    info: dict[str, TensorInfo] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if not tt.elem_type:
            continue
        shape: Shape | None = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
        info[vi.name] = (tt.elem_type, shape)
    for init in graph.initializer:
        info.setdefault(init.name, (init.data_type, tuple(init.dims)))
    return info


_SMALL_BYTES = 1 << 16  # integer initializers kept whole for inference (shapes, axes)
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def _skeleton(model: ModelProto) -> ModelProto:
    """*model* for shape inference: its large initializers become typed graph inputs.

    Inference needs their types and shapes, not their values; integer constants (shapes,
    axes) and scalars stay whole, for data propagation.
    """
    out = ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    src, graph = model.graph, out.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    graph.sparse_initializer.extend(src.sparse_initializer)
    inputs = {i.name for i in src.input}
    for init in src.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if size <= 16 or (init.data_type in _INT_TYPES and init.ByteSize() <= _SMALL_BYTES):
            graph.initializer.append(init)
        elif init.name not in inputs:
            graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return out


def _fully_declared(graph: onnx.GraphProto) -> bool:
    """Whether every node output has a declared elem type and shape."""
    declared = {
        vi.name
        for vi in [*graph.value_info, *graph.output]
        if vi.type.tensor_type.elem_type and vi.type.tensor_type.HasField("shape")
    }
    return all(out in declared for node in graph.node for out in node.output if out)
