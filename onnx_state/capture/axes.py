"""Neuron axis of a captured tensor: one rule table over the graph index.

A tensor's neuron axis is decided by the first of these that applies (a user override is
applied by the selection, before any of them):

1. ``onnx_state.neuron_axis`` metadata on its producer (written by our exporters);
2. a *deciding* rule of its producer's op (``_DECIDE``): channel axis 1 for convolution,
   pooling and normalization; the last axis for Gemm/MatMul and their integer and
   quantized forms; the ``axis`` attribute of Softmax, LogSoftmax, Hardmax and
   LayerNormalization; the trailing axis of a Gather from an initializer (an embedding);
   the hidden axis of RNN/GRU/LSTM outputs;
3. a *following* rule (``_FOLLOW``): the op moves, keeps or drops axes, and the neuron axis
   of its data input is followed through it (Transpose by ``perm``; Squeeze/Unsqueeze by
   ``axes``; Reshape/Flatten by shape, where the neuron dimension survives; reductions by
   their axes; element-wise ops through broadcasting, from the data input whose shape the
   output has, never from a parameter);
4. a graph input: its entry in the model's ``onnx_state.input_axes`` metadata;
5. the axis a consumer defines for its data input (``input_axis``: a Conv's input has its
   channels on axis 1, a MatMul's its features last), where nothing upstream decided it.

Where no rule applies, shapes are unknown, or a following rule loses the neuron dimension,
the axis is a *guess* (1 for rank >= 4, the last axis for rank 3): ``AxisChoice.guessed`` is
set and the selection warns once per layer. A rank-2 tensor has one non-sample axis, which
needs no guess. The walk is iterative, so chains of any length are followed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from onnx import ModelProto, NodeProto

from onnx_state.capture.index import GraphIndex, Shape, as_index, node_meta
from onnx_state.capture.metadata import META_NEURON_AXIS
from onnx_state.errors import ModelError

__all__ = ["RECURRENT_OPS", "AxisChoice", "input_axis", "neuron_axis"]


@dataclass(frozen=True)
class AxisChoice:
    """A neuron axis and how it was found."""

    axis: int  # in 0 .. rank - 1 where the rank is known
    rule: str  # e.g. "channel axis of Conv", "last axis of MatMul → Relu"
    guessed: bool = False  # no rule decided it: warn, and offer the override


@dataclass(frozen=True)
class _Follow:
    """The output's axis is its *source*'s neuron axis mapped through the op."""

    source: str
    map: Callable[[int], int | None]  # source axis (>= 0) -> output axis, None: lost


_Step = AxisChoice | _Follow

CHANNEL_OPS = {
    "conv", "convtranspose", "convinteger", "qlinearconv", "fusedconv", "maxpool",
    "averagepool", "globalaveragepool", "globalmaxpool", "lppool", "globallppool",
    "qlinearaveragepool", "qlinearglobalaveragepool", "batchnormalization",
    "instancenormalization", "groupnormalization", "lrn", "maxroipool", "roialign",
    "deformconv", "maxunpool", "depthtospace", "spacetodepth",
}  # fmt: skip
LAST_AXIS_OPS = {
    "gemm", "matmul", "matmulinteger", "qlinearmatmul", "fusedmatmul", "matmulintegertofloat",
    "dynamicquantizematmul", "qgemm", "matmulnbits", "attention", "multiheadattention",
    "qattention", "embedlayernormalization",
}  # fmt: skip
SOFTMAX_OPS = {"softmax", "logsoftmax", "hardmax"}
LAYERNORM_OPS = {
    "layernormalization", "simplifiedlayernormalization", "skiplayernormalization",
    "skipsimplifiedlayernormalization", "rmsnormalization",
}  # fmt: skip
RECURRENT_OPS = {"rnn", "gru", "lstm", "dynamicquantizelstm"}
REDUCE_OPS = {
    "reducemean", "reducesum", "reducemax", "reducemin", "reduceprod", "reducel1",
    "reducel2", "reducelogsum", "reducelogsumexp", "reducesumsquare",
}  # fmt: skip
# Ops whose output has the shape of their data input (or its broadcast with the others).
ELEMENTWISE_OPS = {
    "relu", "leakyrelu", "prelu", "sigmoid", "hardsigmoid", "hardswish", "tanh", "elu", "selu",
    "celu", "gelu", "fastgelu", "biasgelu", "quickgelu", "softplus", "softsign", "mish",
    "thresholdedrelu", "shrink", "erf", "exp", "log", "abs", "neg", "sqrt", "reciprocal",
    "floor", "ceil", "round", "sign", "sin", "cos", "cast", "castlike", "identity", "dropout",
    "clip", "not", "isnan", "isinf", "quantizelinear", "dequantizelinear",
    "dynamicquantizelinear", "add", "sub", "mul", "div", "pow", "mod", "max", "min", "sum",
    "mean", "and", "or", "xor", "equal", "greater", "greaterorequal", "less", "lessorequal",
    "where", "bitshift", "lpnormalization", "meanvariancenormalization", "biasadd",
    "qlinearadd", "qlinearmul", "qlinearsigmoid", "qlinearleakyrelu", "trilu", "cumsum",
}  # fmt: skip
# Ops that keep the rank and every axis in place (sizes may change).
SAME_RANK_OPS = {
    "split", "concat", "slice", "pad", "tile", "resize", "upsample", "reversesequence",
    "scatter", "scatterelements", "scatternd", "gatherelements", "topk", "qlinearconcat",
    "sort", "unique",
}  # fmt: skip


def neuron_axis(model: GraphIndex | ModelProto, tensor: str) -> AxisChoice:
    """The neuron axis of *tensor* (a main-graph tensor) by this module's rule table.

    Parameters
    ----------
    model:
        The model's GraphIndex (built once per model), or the model itself.
    tensor:
        A tensor of the main graph.
    """
    index = as_index(model)
    memo: dict[str, AxisChoice] = index.__dict__.setdefault("_axis_memo", {})
    chain: list[tuple[str, _Follow, str]] = []
    name, seen = tensor, set()
    while True:
        if name in memo:
            base = memo[name]
            break
        if name in seen:  # a cycle cannot occur in a valid graph; do not loop on one
            base = _guess(index, name, "the graph has a cycle")
            break
        seen.add(name)
        step = _step(index, name)
        if isinstance(step, AxisChoice):
            base = step
            break
        node = index.producers[name]
        chain.append((name, step, node.op_type))
        name = step.source
    memo[name] = base
    choice = base
    for out, step, op in reversed(chain):
        src_rank = index.rank(step.source)
        axis = choice.axis % src_rank if src_rank else choice.axis
        mapped = step.map(axis) if axis >= 0 else None
        rank = index.rank(out)
        if mapped is None or (rank is not None and not 0 <= mapped < rank):
            choice = _guess(index, out, f"{op} does not keep the neuron axis of its input")
        else:
            choice = AxisChoice(mapped, _chain_rule(choice.rule, op), choice.guessed)
        if choice.guessed:  # a guess from upstream yields to what a consumer defines here
            choice = _consumer_rule(index, out) or choice
        memo[out] = choice
    if choice.axis == 0 and (index.rank(tensor) or 0) >= 2:
        # Axis 0 holds the samples: a rule that lands there followed the wrong dimension
        # (e.g. a batch-1 model that squeezed its batch away). The memo keeps the followed
        # axis: a later Unsqueeze brings it back to where it was.
        choice = _guess(index, tensor, f"{choice.rule} gives axis 0, the samples", sure=False)
    return choice


def input_axis(model: GraphIndex | ModelProto, node: NodeProto, tensor: str) -> AxisChoice | None:
    """The neuron axis of *tensor* as the data input of *node* defines it, if it does.

    A Conv's input has its channels on axis 1 and a MatMul's first input its features last,
    whatever produced them: for captures before a layer this is the rule that decides.
    """
    index = as_index(model)
    op = node.op_type.lower()
    if not node.input or node.input[0] != tensor:
        return None
    rank = index.rank(tensor)
    if op in CHANNEL_OPS and op not in ("depthtospace", "spacetodepth"):
        if _attr(node, "channels_last", 0) == 1 and rank:
            return AxisChoice(rank - 1, f"channels-last input of {node.op_type}")
        return AxisChoice(1, f"channel axis of {node.op_type}'s input")
    if op == "gemm":
        return AxisChoice(0 if _attr(node, "transA", 0) else 1, "feature axis of Gemm's input")
    if op in LAST_AXIS_OPS and rank:
        return AxisChoice(rank - 1, f"feature axis of {node.op_type}'s input")
    if op in RECURRENT_OPS:
        return AxisChoice(2, f"feature axis of {node.op_type}'s input")
    if op in SOFTMAX_OPS | LAYERNORM_OPS and rank:
        return AxisChoice(_attr_axis(index, node, rank), f"axis attribute of {node.op_type}")
    return None


def _consumer_rule(index: GraphIndex, name: str) -> AxisChoice | None:
    for i in sorted(index.consumers.get(name, ())):
        found = input_axis(index, index.nodes[i], name)
        if found is not None:
            return found
    return None


def _chain_rule(rule: str, op: str) -> str:
    """'<rule> → op', keeping the last few ops of a long chain readable."""
    parts = rule.split(" → ")
    parts.append(op)
    if len(parts) > 5:
        parts = [parts[0], "…", *parts[-3:]]
    return " → ".join(parts)


def _guess(index: GraphIndex, name: str, why: str, sure: bool = True) -> AxisChoice:
    """The axis a consumer defines for *name* (a Conv reading it: channels on axis 1), else
    a guess: nothing upstream decided it. A rank-2 tensor's axis 1 is the only one left
    unless (not *sure*) its axis 0 may hold the neurons after all."""
    found = _consumer_rule(index, name)
    if found is not None:
        return found
    rank = index.rank(name)
    if rank == 2 and sure:
        return AxisChoice(1, "the only axis besides the samples")
    axis = 2 if rank == 3 else 1
    return AxisChoice(axis, f"guess ({why})", guessed=True)


def _step(index: GraphIndex, name: str) -> _Step:
    """The deciding rule for *name*, or how to follow it to its producer's data input."""
    node = index.producers.get(name)
    if node is None:
        if name in index.input_axes:
            return AxisChoice(int(index.input_axes[name]), "model input metadata")
        return _guess(index, name, "a graph input without onnx_state.input_axes metadata")
    meta = node_meta(node).get(META_NEURON_AXIS)
    if meta is not None:
        try:
            return AxisChoice(int(meta), "exporter metadata")
        except ValueError:
            raise ModelError(
                f"node {node.name or node.op_type!r} has {META_NEURON_AXIS} metadata {meta!r}, "
                "which is not an integer; fix the export or override it with neuron_axes"
            ) from None
    op = node.op_type.lower()
    position = list(node.output).index(name)
    rank = index.rank(name)
    decided = _decide(index, node, op, position, rank)
    if decided is not None:
        return decided
    follow = _follow(index, node, op, name, rank)
    if follow is not None:
        return follow
    return _guess(index, name, f"no rule for {node.op_type} outputs")


def _decide(
    index: GraphIndex, node: NodeProto, op: str, position: int, rank: int | None
) -> AxisChoice | None:
    if op in CHANNEL_OPS:
        if _attr(node, "channels_last", 0) == 1 and rank:
            return AxisChoice(rank - 1, f"channels-last {node.op_type}")
        return AxisChoice(1, f"channel axis of {node.op_type}")
    if op in LAST_AXIS_OPS:
        if not rank:
            return None
        first, second = [*node.input, "", ""][:2]  # (a broken node may lack some)
        if op == "matmul" and first in index.constants and second not in index.constants:
            # W · x: a weight's rows are the neurons (axis -2), or, as in a graph conv A · X,
            # the features stay last; the shapes cannot tell the two apart
            weight = f"; axis {rank - 2} if it is a weight" if rank > 2 else ""
            return AxisChoice(
                rank - 1, f"guess (MatMul with a constant first operand: last axis{weight})",
                guessed=True,
            )  # fmt: skip
        return AxisChoice(rank - 1, f"last axis of {node.op_type}")
    if op in SOFTMAX_OPS | LAYERNORM_OPS and position == 0 and rank:
        return AxisChoice(_attr_axis(index, node, rank), f"axis attribute of {node.op_type}")
    if op in RECURRENT_OPS:
        # Y: (seq, dirs, batch, hidden) or, layout 1, (batch, seq, dirs, hidden); Y_h and Y_c:
        # (dirs, batch, hidden) or (batch, dirs, hidden). The hidden axis is last in each.
        return AxisChoice(3 if position == 0 else 2, f"hidden axis of {node.op_type}")
    if op == "gather" and node.input[0] in index.constants and rank:
        return AxisChoice(rank - 1, "embedding (Gather from an initializer): trailing axis")
    if op == "einsum" and rank:
        return AxisChoice(rank - 1, "guess (Einsum: last axis)", guessed=True)
    return None


def _follow(
    index: GraphIndex, node: NodeProto, op: str, name: str, rank: int | None
) -> _Follow | None:
    data = [i for i in node.input if i and i not in index.constants]
    if not data:
        return None
    source = data[0]
    src_rank = index.rank(source)
    if op in ELEMENTWISE_OPS or op in SAME_RANK_OPS or op == "expand":
        if op in ELEMENTWISE_OPS or op == "expand":
            source = _broadcast_source(index, data, name)
            src_rank = index.rank(source)
        shift = (rank - src_rank) if rank is not None and src_rank is not None else 0
        return _Follow(source, lambda a: a + shift)
    if op == "transpose":
        perm = _ints(node, "perm")
        if perm is None and src_rank:
            perm = list(range(src_rank))[::-1]
        if perm is None:
            return None
        return _Follow(source, lambda a: perm.index(a) if a in perm else None)
    if op in ("squeeze", "unsqueeze"):
        return _squeeze_follow(index, node, op, source, name)
    if op in ("reshape", "flatten"):
        in_shape, out_shape = index.shape(source), index.shape(name)
        if in_shape is None or out_shape is None:
            return None
        return _Follow(source, lambda a: _reshape_map(in_shape, out_shape, a))
    if op in REDUCE_OPS or op in ("argmax", "argmin"):
        return _reduce_follow(index, node, source)
    if op == "gather":  # data from a tensor (not an embedding): indices replace one axis
        axis = _attr(node, "axis", 0)
        idx_rank = index.rank(node.input[1]) if len(node.input) > 1 else None
        if src_rank is None or idx_rank is None:
            return None
        g = axis % src_rank

        def gather_map(a: int) -> int | None:
            if a == g:
                return None
            return a if a < g else a + idx_rank - 1

        return _Follow(source, gather_map)
    return None


def _broadcast_source(index: GraphIndex, data: list[str], out: str) -> str:
    """Of an element-wise op's data inputs, the one whose shape the output has."""
    out_shape = index.shape(out)
    if out_shape is not None:
        for name in data:
            if index.shape(name) == out_shape:
                return name
    ranked = [(index.rank(n) or -1, -k, n) for k, n in enumerate(data)]
    return max(ranked)[2]


def _squeeze_follow(
    index: GraphIndex, node: NodeProto, op: str, source: str, name: str
) -> _Follow | None:
    axes = _ints(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = index.constant_ints(node.input[1])
        if axes is None:
            return None  # axes computed at run time: nothing to follow
    in_rank, out_rank = index.rank(source), index.rank(name)
    if axes is None:
        if op == "squeeze":
            shape = index.shape(source)
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            axes = [i for i, d in enumerate(shape) if d == 1]
        else:
            return None
    if op == "squeeze":
        if in_rank is None:
            return None
        dropped = {a % in_rank for a in axes}
        return _Follow(source, lambda a: None if a in dropped else a - sum(d < a for d in dropped))
    if out_rank is None:
        return None
    added = sorted(a % out_rank for a in axes)
    kept = [i for i in range(out_rank) if i not in added]
    return _Follow(source, lambda a: kept[a] if a < len(kept) else None)


def _reduce_follow(index: GraphIndex, node: NodeProto, source: str) -> _Follow | None:
    in_rank = index.rank(source)
    if in_rank is None:
        return None
    axes = _ints(node, "axes")
    if axes is None and node.op_type.lower() in ("argmax", "argmin"):
        axes = [_attr(node, "axis", 0)]
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = index.constant_ints(node.input[1])
        if axes is None:
            return None  # axes computed at run time
    if axes is None or not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return _Follow(source, lambda a: a)
        axes = list(range(in_rank))
    reduced = {a % in_rank for a in axes}
    keep = _attr(node, "keepdims", 1)

    def reduce_map(a: int) -> int | None:
        if a in reduced:
            return None
        return a if keep else a - sum(r < a for r in reduced)

    return _Follow(source, reduce_map)


def _reshape_map(in_shape: Shape, out_shape: Shape, k: int) -> int | None:
    """Where input axis *k* went in a row-major reshape, if that dimension survives whole.

    Leading entries the two shapes share (a symbolic batch dimension) are matched as they
    are; past them, sizes must be known.
    """
    if k >= len(in_shape):
        return None
    common = 0
    while (
        common < min(len(in_shape), len(out_shape))
        and in_shape[common] == out_shape[common]
        and in_shape[common] not in (None, 0, -1)
    ):
        common += 1
    if k < common:  # same dims before and at k: same product before it, so the same axis
        return k
    # Same known dims from k to the end: the same product after it, so the same axis (the
    # total size is kept, so the product before it matches too).
    suffix = in_shape[k:]
    if (
        len(suffix) <= len(out_shape)
        and all(isinstance(d, int) and d > 0 for d in suffix)
        and tuple(out_shape[len(out_shape) - len(suffix) :]) == tuple(suffix)
    ):
        return len(out_shape) - len(suffix)
    # The neuron axis, last, merged with the axes before it into the last axis (a
    # bidirectional RNN's (seq, batch, dirs, hidden) -> (seq, batch, dirs * hidden)): the
    # neurons are still last, the merged axes joining them, as PyTorch's nn.LSTM output.
    if k == len(in_shape) - 1 and out_shape and isinstance(out_shape[-1], int):
        size = 1
        for d in reversed(in_shape):
            if not isinstance(d, int) or d <= 0:
                break
            size *= d
            if size == out_shape[-1]:
                return len(out_shape) - 1
            if size > out_shape[-1]:
                break
    tail_in = [d for d in in_shape[common:] if isinstance(d, int) and d > 0]
    tail_out = [d for d in out_shape[common:] if isinstance(d, int) and d > 0]
    if len(tail_in) != len(in_shape) - common or len(tail_out) != len(out_shape) - common:
        return None  # unknown sizes past the shared leading dims
    j = k - common
    left, size = math.prod(tail_in[:j]), tail_in[j]
    acc = 1
    for i, d in enumerate(tail_out):
        if acc == left and d == size:
            return common + i
        acc *= d
        if acc > left:
            return None
    return None


def _attr(node: NodeProto, key: str, default: int) -> int:
    for a in node.attribute:
        if a.name == key:
            return int(a.i)
    return default


def _ints(node: NodeProto, key: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == key:
            return list(a.ints)
    return None


def _attr_axis(index: GraphIndex, node: NodeProto, rank: int) -> int:
    """The ``axis`` attribute of a Softmax-like or LayerNorm-like node, normalized."""
    default = -1
    if node.op_type.lower() in SOFTMAX_OPS and index.opset(node.domain) < 13:
        default = 1  # before opset 13 these ops flattened at axis 1
    return _attr(node, "axis", default) % rank
