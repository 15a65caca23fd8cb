"""Captured int8 activations of a QDQ model, run as onnxruntime's x86 CPU provider runs them.

On x86, onnxruntime computes int8 QDQ activations as uint8 (its ``QDQS8ToU8Transformer``:
both zero points + 128, exact) so that its u8·s8 QLinear kernels apply; without the
conversion an int8 activation has no such kernel and the layers on both sides run in float.
It converts a QuantizeLinear only while the output's one consumer is its DequantizeLinear. A
captured quantized tensor is a graph output, so capturing it stopped the conversion and
with it the fusion: on the ResNet-50-style QDQ benchmark model, QLinearConv 33 → 0 with
``quantized=True``, and the counted states were not the deployed model's arithmetic.

So each captured pair that onnxruntime would convert is converted in the instrumented graph
first (``uint8_captures`` decides, ``run_as_uint8`` rewrites), and the counter reads the
uint8 tensor with zero point + 128: the same states, since q + 128 > zp + 128 iff q > zp,
and the same dequantized values, since (q + 128) - (zp + 128) = q - zp. Pairs onnxruntime
leaves as int8 (a tensor that feeds two layers, a zero point that is not a constant) are
left as they are, so the instrumented graph fuses what the plain one fuses.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import onnx
from onnx import ModelProto, NodeProto

from onnx_state.capture.control import free_names
from onnx_state.capture.index import GraphIndex
from onnx_state.capture.select import Capture
from onnx_state.errors import ModelError

__all__ = ["converted", "converts_int8", "run_as_uint8", "uint8_captures"]

_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
# the levels at which onnxruntime runs its QDQ transformers (extended and above)
_QDQ_LEVELS = {"extended", "all"}


def converts_int8(providers: Sequence[str] | None, optimization: str) -> bool:
    """Whether onnxruntime converts int8 Q/DQ pairs to uint8 for this session: on the CPU
    provider of an x86 machine, at the optimization levels that fuse QDQ groups (on ARM
    onnxruntime runs int8 directly)."""
    on_cpu = not providers or providers[0] == "CPUExecutionProvider"
    return on_cpu and optimization in _QDQ_LEVELS and platform.machine().lower() in _X86


def _int8_scalar(index: GraphIndex, name: str) -> int | None:
    """The value of *name* when it is a constant int8 scalar zero point (initializers that
    are also graph inputs can be overridden, so onnxruntime does not treat them as one)."""
    if name in {i.name for i in index.model.graph.input}:
        return None
    value = index.constant_array(name)
    if value is None or value.dtype != np.int8 or value.size != 1:
        return None
    return int(value.reshape(-1)[0])


def _pair(index: GraphIndex, tensor: str, nested: set[str]) -> tuple[NodeProto, NodeProto] | None:
    """The (QuantizeLinear, DequantizeLinear) pair that produces and reads *tensor*, when
    onnxruntime would convert it: as its transformer requires, three inputs each, the
    DequantizeLinear the only consumer (no If/Loop body among *nested*, the names those
    read, reads it either), equal constant int8 scalar zero points, and the QuantizeLinear's
    output not a graph output; also the DequantizeLinear read by one node at most
    (onnxruntime first gives each consumer its own, which leaves the pair unconverted)."""
    q = index.producers.get(tensor)
    if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx"):
        return None
    if any(a.name == "output_dtype" and a.i for a in q.attribute):  # (opset 21) a type to keep
        return None
    readers = [index.nodes[i] for i in sorted(index.consumers.get(tensor, ()))]
    if len(readers) != 1 or tensor in index.graph_outputs or tensor in nested:
        return None
    dq = readers[0]
    if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    if len(q.input) != 3 or len(dq.input) != 3 or list(dq.input).count(tensor) != 1:
        return None
    if dq.input[0] != tensor or len(index.consumers.get(dq.output[0], ())) > 1:
        return None
    zp_q, zp_dq = _int8_scalar(index, q.input[2]), _int8_scalar(index, dq.input[2])
    if zp_q is None or zp_q != zp_dq:
        return None
    return q, dq


def _subgraph_reads(index: GraphIndex) -> set[str]:
    """Main-graph names that the If/Loop/Scan bodies of *index*'s model read."""
    reads: set[str] = set()
    for node in index.nodes:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                reads |= free_names(sub)
    return reads


def uint8_captures(index: GraphIndex, captures: Sequence[Capture]) -> list[Capture]:
    """*captures*, with each quantized one whose int8 pair onnxruntime would convert read
    as uint8 (``Capture.as_uint8``, zero point + 128)."""
    nested = _subgraph_reads(index)
    out = []
    for c in captures:
        if (
            c.arithmetic == "quantized" and not c.path and c.elem_type == onnx.TensorProto.INT8
            and isinstance(c.zero_point, int) and _pair(index, c.read, nested) is not None
        ):  # fmt: skip
            c = replace(c, elem_type=onnx.TensorProto.UINT8, zero_point=c.zero_point + 128,
                        as_uint8=True)  # fmt: skip
        out.append(c)
    return out


def _convert(model: ModelProto, captures: Sequence[Capture]) -> Callable[[], None]:
    """Convert the pairs of *captures* marked ``as_uint8`` in *model*, in place; returns
    the function that puts *model* back exactly as it was."""
    wanted = sorted({c.read for c in captures if c.as_uint8})
    if not wanted:
        return lambda: None
    graph = model.graph
    # The pairs were judged on the model as loaded; this copy may carry nodes added since
    # (capture.pack's, reading the same tensors), so here they are only looked up.
    index = GraphIndex(model, info={})
    pairs = []
    for tensor in wanted:
        dq = next((index.nodes[i] for i in sorted(index.consumers.get(tensor, ()))
                   if index.nodes[i].op_type == "DequantizeLinear"), None)  # fmt: skip
        q = index.producers.get(tensor)
        if q is None or dq is None:
            raise ModelError(f"the quantizing pair of captured tensor {tensor!r} is missing")
        pairs.append((tensor, q, dq))
    taken = set(index.producers) | index.constants | {i.name for i in graph.input}
    made: dict[str, str] = {}  # int8 zero point -> its uint8 initializer
    new_inits = []
    for _, q, _ in pairs:
        zp = q.input[2]
        if zp not in made:
            value = index.constant_array(zp)
            if value is None:
                raise ModelError(f"the zero point {zp!r} of a captured int8 tensor is missing")
            made[zp] = _fresh(taken, f"{zp}_uint8")
            taken.add(made[zp])
            shifted = np.array(int(value.reshape(-1)[0]) + 128, np.uint8)
            new_inits.append(onnx.numpy_helper.from_array(shifted, made[zp]))
    # all looked up: the edits below cannot fail half-way
    edits: list[tuple[NodeProto, str]] = []
    types: list[tuple[onnx.ValueInfoProto, int]] = []
    graph.initializer.extend(new_inits)
    for tensor, q, dq in pairs:
        zp = q.input[2]  # (the DequantizeLinear's has the same value, or no pair was chosen)
        for node in (q, dq):
            edits.append((node, node.input[2]))
            node.input[2] = made[zp]
        for vi in graph.value_info:
            if vi.name == tensor and vi.type.HasField("tensor_type"):
                types.append((vi, vi.type.tensor_type.elem_type))
                vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8

    def undo() -> None:
        for node, name in edits:
            node.input[2] = name
        for vi, elem_type in types:
            vi.type.tensor_type.elem_type = elem_type
        del graph.initializer[len(graph.initializer) - len(new_inits) :]

    return undo


def _fresh(taken: set[str], name: str) -> str:
    """*name*, or *name* with a number, not in *taken*."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


@contextmanager
def run_as_uint8(model: ModelProto, captures: Sequence[Capture]) -> Iterator[None]:
    """*model* with the pairs of the captures marked ``as_uint8`` converted to uint8 for
    the duration (then exactly as it was)."""
    undo = _convert(model, captures)
    try:
        yield
    finally:
        undo()


def converted(model: ModelProto, captures: Sequence[Capture]) -> ModelProto:
    """*model* itself, its pairs of the captures marked ``as_uint8`` converted in place."""
    _convert(model, captures)
    return model
