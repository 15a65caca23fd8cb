"""Pack firing bits inside the graph: a captured tensor leaves it as bytes, not floats.

A neuron fires iff its value is > 0. Instead of exposing the float tensor, the rewritten
graph computes the firing bits and packs them along the neuron axis, least-significant bit
first, exactly as ``np.packbits(x > 0, axis, bitorder="little")``: neuron ``8*j + i`` is bit
``i`` of byte ``j``. Every step is exact in float32 (README, "Packed captures"):

- ``scale`` route (float32, rank 4, neurons on axis 1: conv maps). A depthwise 1x1 Conv
  multiplies by 2**126 and a Clip to [0, 2**-23] follows; every positive float32, the
  smallest subnormal 2**-149 included, becomes exactly 2**-23 (power-of-two scaling is exact
  until it overflows to inf, which Clip maps to 2**-23 too), and every value <= 0 becomes 0.
  A 1x1 Conv with weights 2**(i + 23) sums each group of 8 into an integer 0..255 (sums of
  small integers are exact in any order) and a Cast makes it uint8. onnxruntime keeps all of
  this in its blocked NCHWc layout (Conv + Clip fuse, 1x1 Convs are NCHWc kernels), so only
  the packed map is converted back: an eighth of the channels, padded to a multiple of 16.
  A NaN in the tensor makes its packed sums NaN (Clip propagates NaN), so the graph also
  returns their sum: finite means every byte is exact, NaN means the caller must not count
  that batch from these bytes.
- ``compare`` route (any other rank, axis or float type). ``Greater(x, 0)`` gives the bits
  directly (False for NaN, as numpy's ``x > 0``), a Cast makes them 0/1 floats and a 1x1 Conv
  (neurons on axis 1) or a MatMul (any other axis, moved last) packs them. No NaN check is
  needed for exactness; the graph also returns the number of NaN values, as the unpacked
  counter reports it. onnxruntime cannot run Greater in NCHWc, so on conv maps this route
  still converts the full map inside the graph: it is the slower one there
  (benchmarks/bench_packing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, TypeProto, helper, numpy_helper

from onnx_state.capture.select import Capture
from onnx_state.errors import InputError, LayerNotFoundError, did_you_mean

__all__ = [
    "PACK_METHODS",
    "PACK_TYPES",
    "PackMethod",
    "PackRequest",
    "PackedOutput",
    "add_packed_outputs",
    "pack_request",
]

PackMethod = Literal["auto", "compare"]
PACK_METHODS: tuple[PackMethod, ...] = ("auto", "compare")
PACK_TYPES = {
    TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16", TensorProto.DOUBLE: "float64",
}  # fmt: skip
SCALE = 2.0**126  # times the smallest subnormal 2**-149 is 2**-23: the Clip's upper bound
FIRED = 2.0**-23  # what a firing neuron is after the scale route's Clip
PAD_BYTES = 16  # packed channels rounded up to a multiple of NCHWc's widest block (AVX-512)


@dataclass(frozen=True)
class PackRequest:
    """A tensor whose firing bits should leave the graph packed.

    Parameters
    ----------
    tensor:
        The tensor's name in the main graph.
    axis:
        Its neuron axis (negative counts from the end).
    rank:
        Its rank.
    neurons:
        The size of its neuron axis.
    elem_type:
        Its ONNX element type (``PACK_TYPES``).
    """

    tensor: str
    axis: int
    rank: int
    neurons: int
    elem_type: int = TensorProto.FLOAT


@dataclass(frozen=True)
class PackedOutput:
    """Where a packed capture leaves the graph.

    ``output`` is a uint8 graph output whose axis ``axis`` holds ``bytes`` bytes of packed bits
    (neuron ``8*j + i`` is bit ``i`` of byte ``j``; bits past ``neurons`` are 0). Its other axes
    are the tensor's in their order, except on the ``compare`` route with neurons on an inner
    axis, which moves the neuron axis last. Each packed capture has one scalar NaN output:
    ``nan_output`` (``compare`` route, int64) counts the tensor's NaN values, which do not
    fire, as ``StateCounter.nan_count`` does; ``nan_check_output`` (``scale`` route, float32)
    is the sum of the packed values, NaN iff a NaN reached them: then this batch cannot be
    counted from these bytes (capture that tensor with ``method="compare"`` or unpacked);
    finite means every byte is exact.
    """

    tensor: str
    output: str
    axis: int
    neurons: int
    route: str
    nan_output: str | None = None
    nan_check_output: str | None = None

    @property
    def bytes(self) -> int:
        """The packed size of the neuron axis."""
        return -(-self.neurons // 8)


def pack_request(capture: Capture) -> PackRequest:
    """The request that packs *capture*'s tensor; its rank and neuron count must be known."""
    shape = capture.shape
    neurons = shape[capture.axis] if shape is not None and capture.rank else None
    if capture.rank is None or not isinstance(neurons, int):
        raise InputError(
            f"cannot pack {capture.name}: the size of its neuron axis {capture.axis} is not "
            "known (run onnx.shape_inference with fixed shapes, or capture it unpacked)"
        )
    return PackRequest(capture.tensor, capture.axis, capture.rank, neurons, capture.elem_type)


def add_packed_outputs(
    model: ModelProto, requests: Sequence[PackRequest], *, method: PackMethod = "auto"
) -> tuple[ModelProto, list[PackedOutput]]:
    """Return a copy of *model* that also outputs the packed firing bits of each request.

    The original outputs stay first and unchanged; each tensor is packed once (a repeated
    request returns the same ``PackedOutput``).

    Parameters
    ----------
    model:
        The model; it is not modified.
    requests:
        The tensors to pack.
    method:
        ``auto`` takes the ``scale`` route where it applies (float32 rank-4 maps with neurons
        on axis 1, opset >= 11) and ``compare`` elsewhere; ``compare`` forces that route.

    Returns
    -------
    The new model and one ``PackedOutput`` per request, in order.
    """
    if method not in PACK_METHODS:
        raise InputError(f"method must be one of {', '.join(PACK_METHODS)}, got {method!r}")
    _check_requests(model, requests)
    out = ModelProto()
    out.CopyFrom(model)
    names = _Names(out)
    opset = _default_opset(out)
    done: dict[str, PackedOutput] = {}
    result: list[PackedOutput] = []
    for req in requests:
        if req.tensor not in done:
            done[req.tensor] = _pack_one(out, req, method, opset, names)
        result.append(done[req.tensor])
    return out, result


def _check_requests(model: ModelProto, requests: Sequence[PackRequest]) -> None:
    """Raise one error naming every bad request."""
    graph = model.graph
    known = {o for n in graph.node for o in n.output if o}
    known.update(i.name for i in graph.input)
    declared = {
        vi.name: vi.type.tensor_type
        for vi in (*graph.input, *graph.value_info, *graph.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    problems: list[str] = []
    missing: list[str] = []
    seen: dict[str, PackRequest] = {}
    for req in requests:
        name = req.tensor
        if name not in known:
            missing.append(name)
            continue
        if req.elem_type not in PACK_TYPES:
            problems.append(
                f"{name}: element type {_type_name(req.elem_type)} cannot be packed (use one of "
                f"{', '.join(PACK_TYPES.values())}; capture it unpacked instead)"
            )
        if req.rank < 1 or not -req.rank <= req.axis < req.rank:
            problems.append(f"{name}: neuron axis {req.axis} is out of range for rank {req.rank}")
        if req.neurons < 1:
            problems.append(f"{name}: neurons must be at least 1, got {req.neurons}")
        if name in declared:
            problems.extend(_mismatches(req, declared[name]))
        if name in seen and seen[name] != req:
            problems.append(f"{name}: requested twice with different parameters")
        seen.setdefault(name, req)
    opset = _default_opset(model)
    if requests and opset < 9:  # IsNaN and Greater on every float type arrive with opset 9
        problems.append(
            f"the model's opset {opset} is below 9 (convert it with onnx.version_converter)"
        )
    if missing:
        hints = "".join(did_you_mean(m, known) for m in missing[:3])
        raise LayerNotFoundError(
            f"no tensor named {', '.join(map(repr, missing))} in the main graph.{hints}"
        )
    if problems:
        raise InputError("cannot pack: " + "; ".join(problems))


def _type_name(elem_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem_type))
    except ValueError:
        return str(elem_type)


def _mismatches(req: PackRequest, declared: TypeProto.Tensor) -> list[str]:
    """How *req* contradicts the model's declared type and shape of its tensor."""
    out = []
    if declared.elem_type != req.elem_type:
        out.append(
            f"{req.tensor}: the request says element type {_type_name(req.elem_type)}, the "
            f"model declares {_type_name(declared.elem_type)}"
        )
    if declared.HasField("shape"):
        dims = declared.shape.dim
        if len(dims) != req.rank:
            out.append(f"{req.tensor}: the request says rank {req.rank}, the model {len(dims)}")
        elif -req.rank <= req.axis < req.rank:
            dim = dims[req.axis]
            if dim.HasField("dim_value") and dim.dim_value != req.neurons:
                out.append(
                    f"{req.tensor}: the request says {req.neurons} neurons, the model's axis "
                    f"{req.axis} has {dim.dim_value}"
                )
    return out


class _Names:
    """Fresh names that collide with nothing in the graph."""

    def __init__(self, model: ModelProto) -> None:
        g = model.graph
        self.used = {t.name for t in g.initializer}
        self.used.update(v.name for v in (*g.input, *g.output, *g.value_info))
        for node in g.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _default_opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


class _Builder:
    """Appends nodes and initializers for one packed tensor, named after it."""

    def __init__(self, model: ModelProto, tensor: str, names: _Names) -> None:
        self.graph = model.graph
        self.tensor = tensor
        self.names = names

    def const(self, what: str, value: np.ndarray) -> str:
        name = self.names(f"{self.tensor}_pack_{what}")
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: Sequence[str], what: str, **attrs: Any) -> str:
        out = self.names(f"{self.tensor}_pack_{what}")
        node: NodeProto = helper.make_node(op, list(inputs), [out], name=out, **attrs)
        self.graph.node.append(node)
        return out


def _pack_one(
    model: ModelProto, req: PackRequest, method: PackMethod, opset: int, names: _Names
) -> PackedOutput:
    axis = req.axis % req.rank
    route = (
        "scale"
        if method == "auto"
        and req.elem_type == TensorProto.FLOAT
        and req.rank == 4
        and axis == 1
        and opset >= 11
        else "compare"
    )
    b = _Builder(model, req.tensor, names)
    nbytes = -(-req.neurons // 8)
    if route == "scale":
        fired = _scale_indicator(b, req.neurons)
        padded = -(-nbytes // PAD_BYTES) * PAD_BYTES if req.neurons % 8 == 0 else nbytes
    else:
        fired = _compare_indicator(b, req.elem_type)
        padded = nbytes
    weight = 1.0 / FIRED if route == "scale" else 1.0  # a firing neuron counts 1
    if axis == 1 and req.rank >= 3:
        packed = _pack_conv(b, fired, req.neurons, padded, req.rank, weight)
        byte_axis = 1
    else:
        if axis != req.rank - 1:
            perm = [a for a in range(req.rank) if a != axis] + [axis]
            fired = b.node("Transpose", [fired], "last", perm=perm)
        packed = _pack_matmul(b, fired, req.neurons, weight)
        byte_axis = req.rank - 1
    output = names(f"{req.tensor}_packed")
    _to_bytes(b, packed, nbytes, padded, output)
    shape: list[int | None] = [None] * req.rank
    shape[byte_axis] = nbytes
    model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.UINT8, shape))
    if route == "scale":
        # A NaN propagates through Clip into the packed sums, so one small sum tells; the
        # tensor's own NaN count would need the full map back in NCHW.
        check = names(f"{req.tensor}_packed_nan_check")
        model.graph.node.append(helper.make_node("ReduceSum", [packed], [check], keepdims=0))
        model.graph.output.append(helper.make_tensor_value_info(check, TensorProto.FLOAT, []))
        return PackedOutput(req.tensor, output, byte_axis, req.neurons, route, None, check)
    nan = names(f"{req.tensor}_packed_nan")
    _count_nan(b, req.tensor, nan)
    model.graph.output.append(helper.make_tensor_value_info(nan, TensorProto.INT64, []))
    return PackedOutput(req.tensor, output, byte_axis, req.neurons, route, nan)


def _count_nan(b: _Builder, tensor: str, output: str) -> None:
    # onnxruntime sums doubles ~10x faster than int64; exact up to 2**53 values.
    isnan = b.node("Cast", [b.node("IsNaN", [tensor], "isnan")], "isnan_f64", to=TensorProto.DOUBLE)
    total = b.node("ReduceSum", [isnan], "nan_f64", keepdims=0)
    b.graph.node.append(helper.make_node("Cast", [total], [output], to=TensorProto.INT64))


def _to_bytes(b: _Builder, packed: str, nbytes: int, padded: int, output: str) -> None:
    """uint8 bytes of the packed sums as graph output *output*, padding channels cut off."""
    if padded == nbytes:
        b.graph.node.append(helper.make_node("Cast", [packed], [output], to=TensorProto.UINT8))
        return
    data = b.node("Cast", [packed], "u8", to=TensorProto.UINT8)
    ends = [
        b.const(k, np.array([v], np.int64)) for k, v in (("start", 0), ("end", nbytes), ("axes", 1))
    ]
    b.graph.node.append(helper.make_node("Slice", [data, *ends], [output]))


def _scale_indicator(b: _Builder, channels: int) -> str:
    """2**-23 where the rank-4 float32 tensor is > 0, 0 where it is <= 0 (NaN stays NaN)."""
    w = b.const("scale", np.full((channels, 1, 1, 1), SCALE, np.float32))
    scaled = b.node("Conv", [b.tensor, w], "scaled", group=channels, kernel_shape=[1, 1])
    lo = b.const("lo", np.array(0.0, np.float32))
    hi = b.const("hi", np.array(FIRED, np.float32))
    return b.node("Clip", [scaled, lo, hi], "fired")


def _compare_indicator(b: _Builder, elem_type: int) -> str:
    """1.0 where the tensor is > 0, else 0.0 (NaN included), as float32."""
    x = b.tensor
    if elem_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):  # widening is exact
        x = b.node("Cast", [x], "f32", to=TensorProto.FLOAT)
        elem_type = TensorProto.FLOAT
    zero = b.const(
        "zero", np.array(0, np.float64 if elem_type == TensorProto.DOUBLE else np.float32)
    )
    return b.node("Cast", [b.node("Greater", [x, zero], "gt")], "fired", to=TensorProto.FLOAT)


def _bit_weights(neurons: int, nbytes: int, weight: float) -> np.ndarray:
    """(nbytes, neurons) float32: neuron 8*j + i adds weight * 2**i to byte j."""
    w = np.zeros((nbytes, neurons), np.float32)
    c = np.arange(neurons)
    w[c // 8, c] = weight * 2.0 ** (c % 8)
    return w


def _pack_conv(b: _Builder, fired: str, neurons: int, nbytes: int, rank: int, weight: float) -> str:
    w = _bit_weights(neurons, nbytes, weight).reshape((nbytes, neurons) + (1,) * (rank - 2))
    return b.node("Conv", [fired, b.const("bits", w)], "sum", kernel_shape=[1] * (rank - 2))


def _pack_matmul(b: _Builder, fired: str, neurons: int, weight: float) -> str:
    w = _bit_weights(neurons, -(-neurons // 8), weight).T.copy()
    return b.node("MatMul", [fired, b.const("bits", w)], "sum")
