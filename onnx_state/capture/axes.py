"""Neuron axis of a captured tensor, from exporter metadata or from the ops that made it.

First rule that applies (a user override is applied by the selection, before these):
1. ``onnx_state.neuron_axis`` metadata on the producer;
2. by producer op: Conv-like, pooling, normalization → 1 (ONNX is channels-first);
   Gemm/MatMul → last axis; Transpose → where the input's axis went; Flatten → 1;
   Reshape → 1 when the result has rank 2, else the input's axis when it survives, else the
   last; element-wise ops and everything else → the axis of their first data input;
3. a graph input → its entry in the model's ``onnx_state.input_axes``, else 1.
"""

from __future__ import annotations

from onnx import ModelProto

from onnx_state.capture.index import GraphIndex, as_index, node_meta
from onnx_state.capture.metadata import META_NEURON_AXIS
from onnx_state.errors import ModelError

__all__ = ["neuron_axis"]

_CHANNEL_OPS = {
    "conv", "convtranspose", "convinteger", "qlinearconv", "maxpool", "averagepool",
    "globalaveragepool", "globalmaxpool", "lppool", "globallppool", "batchnormalization",
    "instancenormalization", "lrn", "maxroipool", "roialign", "deformconv",
}  # fmt: skip
_LAST_AXIS_OPS = {"gemm", "matmul", "matmulinteger", "qlinearmatmul", "einsum"}
_MAX_DEPTH = 200


def neuron_axis(model: GraphIndex | ModelProto, tensor: str) -> int:
    """Neuron axis of *tensor* by the rules in this module's docstring (may be negative).

    Parameters
    ----------
    model:
        The model's GraphIndex (built once per model), or the model itself.
    tensor:
        A tensor of the main graph.
    """
    index = as_index(model)
    return _axis_of(index, tensor, 0)


def _axis_of(index: GraphIndex, name: str, depth: int) -> int:
    node = index.producers.get(name)
    if node is None or depth > _MAX_DEPTH:
        return int(index.input_axes.get(name, 1))
    meta = node_meta(node).get(META_NEURON_AXIS)
    if meta is not None:
        try:
            return int(meta)
        except ValueError:
            raise ModelError(
                f"node {node.name or node.op_type!r} has {META_NEURON_AXIS} metadata {meta!r}, "
                "which is not an integer; fix the export or override it with neuron_axes"
            ) from None
    op = node.op_type.lower()
    rank = index.rank(name)
    if op in _CHANNEL_OPS:
        return 1
    if op in _LAST_AXIS_OPS:
        return (rank - 1) if rank else -1
    source = index.data_input(node)
    if op == "flatten" or source is None:
        return 1
    if op == "transpose":
        in_axis = _axis_of(index, source, depth + 1)
        in_rank = index.rank(source) or rank
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is None and in_rank:
            perm = list(range(in_rank))[::-1]
        if perm and in_rank:
            return perm.index(in_axis % in_rank)
        return 1
    if op in ("reshape", "squeeze", "unsqueeze"):
        if rank == 2:
            return 1
        in_axis = _axis_of(index, source, depth + 1)
        in_shape, out_shape = index.shape(source), index.shape(name)
        if in_shape and out_shape and in_axis % len(in_shape) < len(out_shape):
            k = in_axis % len(in_shape)
            if in_shape[: k + 1] == out_shape[: k + 1]:
                return k
        return (rank - 1) if rank else -1
    return _axis_of(index, source, depth + 1)
