"""Tensors inside control flow: list the nodes of If/Loop/Scan bodies, expose their tensors.

A tensor computed inside a subgraph cannot be a graph output. ``expose`` threads it out one
owning node at a time, from the subgraph that holds it up to the main graph:

- **If**: the branch holding the tensor gains it as an extra output (through an Identity);
  the other branch gains an *empty* tensor of the same elem type and rank, made by a
  Constant; the If node gains the matching output. The empty tensor has 0 on its first
  axis; every other axis keeps its size where that is statically known (so a counter still
  learns the neuron count from it) and is 0 where it is not.
- **Loop**: the body gains the tensor as an extra scan output, after the existing ones (the
  body's outputs are cond, the loop-carried values, then the scan outputs); the Loop node's
  matching output stacks it per iteration: shape (iterations, ...).
- **Scan** (opset 9 and later): likewise an extra scan output, stacked on axis 0 in the
  order of the iterations; ``scan_output_axes`` / ``scan_output_directions`` gain an entry
  (0, forward) when the node has them.

Nesting composes: every owner on the path adds its own output, so a tensor under a Loop
inside an If comes out with one stacked axis and is empty when the If took the other branch.
Nothing is computed twice and no original output, node or name changes: new values, nodes
and outputs get names no graph of the model uses, and the original outputs come first.

States there: a Loop or Scan iteration is a time step, so a stacked tensor of shape
(iterations, N, C) holds one state per iteration, sample and position; the stacked axes are
just more position axes and the neuron axis moves right by ``ExposedTensor.stacked``. A
branch that did not run gives no state (an empty tensor has none).

Limits: onnxruntime stacks a Loop's or Scan's scan output only when it has the same shape in
every iteration, so a tensor under an If inside a Loop/Scan body whose branch changes from
one iteration to the next (or under an inner Loop whose trip count changes) makes the
rewritten model fail at run time; ``expose`` cannot see that statically. Only the ai.onnx
If, Loop and Scan are walked (not SequenceMap, com.microsoft ops or model-local functions).
"""

from __future__ import annotations

import contextlib
from collections import ChainMap, Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import GraphProto, ModelProto, NodeProto, helper

from onnx_state.capture.index import Shape, TensorInfo, declared_info, node_meta
from onnx_state.errors import LayerNotFoundError, ModelError, did_you_mean

__all__ = [
    "OWNERS",
    "ExposedTensor",
    "NestedNode",
    "NestedTensor",
    "Path",
    "expose",
    "free_names",
    "nested_nodes",
    "node_labels",
    "subgraph_model",
]

# (owner label, subgraph attribute, owner label, subgraph attribute, ...), main graph first
Path = tuple[str, ...]
OWNERS: dict[str, tuple[str, ...]] = {
    "If": ("then_branch", "else_branch"),
    "Loop": ("body",),
    "Scan": ("body",),
}
_STACKING = ("Loop", "Scan")
_OTHER_BRANCH = {"then_branch": "else_branch", "else_branch": "then_branch"}
_Scope = ChainMap[str, TensorInfo]


@dataclass(frozen=True)
class NestedTensor:
    """A tensor visible inside the subgraph at *path* (its own, or from an outer scope)."""

    path: Path
    tensor: str

    def __str__(self) -> str:
        return "/".join((*self.path, self.tensor))


@dataclass(frozen=True)
class NestedNode:
    """One node inside an If branch or a Loop/Scan body, with the owners above it.

    *info* holds the elem type and shape of the node's inputs and outputs as seen inside
    its subgraph (after shape inference); *stacked* counts the Loop/Scan owners on the
    path (the iteration axes its outputs gain when exposed), *conditional* says whether an
    If is among them (its outputs are empty when a branch above did not run).
    """

    path: Path
    name: str  # the node's label in its subgraph (see node_labels)
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    meta: Mapping[str, str] = field(compare=False, hash=False)
    info: Mapping[str, TensorInfo] = field(compare=False, hash=False)
    stacked: int = 0
    conditional: bool = False

    def tensor(self, name: str) -> NestedTensor:
        """*name* (one of the node's inputs or outputs) as a NestedTensor of its subgraph."""
        return NestedTensor(self.path, name)


@dataclass(frozen=True)
class ExposedTensor:
    """Where ``expose`` put a nested tensor in the main graph.

    *output* is the main-graph output; *stacked* the iteration axes put in front of the
    tensor's own (one per Loop/Scan on the path, outermost first), so its neuron axis
    ``a`` becomes ``a + stacked``; *conditional* says an If lies on the path, so the output
    may be empty (see the module docstring). *shape* is the output's declared shape
    (stacked axes first; None where a size is not fixed), *inner_shape* the tensor's shape
    inside its subgraph. *branch_in_loop* says an If lies inside a Loop/Scan on the path:
    the rewritten model then runs only when every iteration takes the same branch (see the
    limits in the module docstring).
    """

    output: str
    tensor: NestedTensor
    stacked: int
    conditional: bool
    elem_type: int
    shape: Shape
    inner_shape: Shape
    branch_in_loop: bool = False


# -- walking ----------------------------------------------------------------------------------
def node_labels(graph: GraphProto) -> list[str]:
    """A unique label per node of *graph*: its name, or ``<op type>_<index>`` for a node
    without a name or with a name it shares (as ``layers.node_label`` labels the main graph's
    unnamed nodes)."""
    counts = Counter(n.name for n in graph.node)
    labels = [
        n.name if n.name and counts[n.name] == 1 else f"{n.op_type}_{i}"
        for i, n in enumerate(graph.node)
    ]
    taken = Counter(labels)
    return [f"{lb}@{i}" if taken[lb] > 1 else lb for i, lb in enumerate(labels)]


def _graph_info(graph: GraphProto) -> dict[str, TensorInfo]:
    """Elem type and shape of the values *graph* itself declares."""
    info = declared_info(graph)
    for node in graph.node:  # a Constant's type is known even when inference failed
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                info.setdefault(node.output[0], (value.data_type, tuple(value.dims)))
    return info


def _inferred(model: ModelProto) -> ModelProto:
    """*model* with shape inference run on every graph (the model itself if that fails)."""
    for data_prop in (True, False):  # data propagation fails on more models than inference
        with contextlib.suppress(Exception):  # a convenience, as in index.shape_info
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=data_prop)
    return model


def _owned_graphs(node: NodeProto) -> Iterator[onnx.AttributeProto]:
    """The subgraph attributes of an ai.onnx If/Loop/Scan node, in attribute order."""
    if node.domain not in ("", "ai.onnx"):
        return
    for attr in node.attribute:
        if attr.name in OWNERS.get(node.op_type, ()) and attr.type == onnx.AttributeProto.GRAPH:
            yield attr


@dataclass(frozen=True)
class _Sub:
    path: Path
    graph: GraphProto
    scope: _Scope
    stacked: int
    conditional: bool


def _subgraphs(
    graph: GraphProto, path: Path, scope: _Scope, stacked: int, conditional: bool
) -> Iterator[_Sub]:
    """Every subgraph below *graph*, depth first, each before the ones inside it."""
    for node, label in zip(graph.node, node_labels(graph), strict=True):
        for attr in _owned_graphs(node):
            sub = _Sub(
                (*path, label, attr.name),
                attr.g,
                scope.new_child(_graph_info(attr.g)),
                stacked + (node.op_type in _STACKING),
                conditional or node.op_type == "If",
            )
            yield sub
            yield from _subgraphs(sub.graph, sub.path, sub.scope, sub.stacked, sub.conditional)


def nested_nodes(model: ModelProto) -> list[NestedNode]:
    """Every node inside an If branch or a Loop/Scan body of *model*, nested to any depth.

    Subgraphs come depth first in graph order, each one's nodes before those of the
    subgraphs inside it. Shape inference runs once; where it fails, the types and shapes
    the model declares are used.
    """
    inferred = _inferred(model)
    top = ChainMap(_graph_info(inferred.graph))
    found: list[NestedNode] = []
    for sub in _subgraphs(inferred.graph, (), top, 0, False):
        for node, label in zip(sub.graph.node, node_labels(sub.graph), strict=True):
            names = [n for n in (*node.input, *node.output) if n]
            found.append(
                NestedNode(
                    path=sub.path,
                    name=label,
                    op_type=node.op_type,
                    domain=node.domain,
                    inputs=tuple(node.input),
                    outputs=tuple(node.output),
                    meta=node_meta(node),
                    info={n: sub.scope[n] for n in names if n in sub.scope},
                    stacked=sub.stacked,
                    conditional=sub.conditional,
                )
            )
    return found


# -- resolving requests -----------------------------------------------------------------------
def _opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@dataclass(frozen=True)
class _Problem:
    text: str
    missing: bool = False  # a name that matches nothing (LayerNotFoundError)


@dataclass(frozen=True)
class _Place:
    """A resolved path: its subgraph, the scope seen there, and the owners above it."""

    graph: GraphProto
    scope: _Scope
    owners: tuple[NodeProto, ...]


def _walk(inferred: ModelProto, path: Path, what: str) -> _Problem | _Place:
    """Follow *path* down from the main graph; *what* names the request in messages."""
    if not path or len(path) % 2:
        return _Problem(
            f"{what}: a path is (owner node, subgraph attribute) pairs, e.g. "
            f"('If_0', 'then_branch'), got {path!r}; the main graph needs no path"
        )
    graph, scope = inferred.graph, ChainMap(_graph_info(inferred.graph))
    owners: list[NodeProto] = []
    for depth in range(0, len(path), 2):
        label, attr_name = path[depth], path[depth + 1]
        labels = node_labels(graph)
        choices = [lb for lb, n in zip(labels, graph.node, strict=True) if any(_owned_graphs(n))]
        where = "the main graph" if depth == 0 else "/".join(path[:depth])
        if label not in labels:
            return _Problem(
                f"{what}: {where} has no node {label!r}."
                + did_you_mean(label, choices)
                + (f" Control-flow nodes there: {', '.join(choices)}." if choices else ""),
                missing=True,
            )
        node = graph.node[labels.index(label)]
        attrs = [a.name for a in _owned_graphs(node)]
        if not attrs:
            return _Problem(f"{what}: node {label!r} is a {node.op_type}, not an If, Loop or Scan")
        if attr_name not in attrs:
            return _Problem(
                f"{what}: {node.op_type} {label!r} has no subgraph {attr_name!r}; it has "
                f"{', '.join(attrs)}"
            )
        owners.append(node)
        graph = next(a.g for a in node.attribute if a.name == attr_name)
        scope = scope.new_child(_graph_info(graph))
    return _Place(graph, scope, tuple(owners))


def _locate(
    model: ModelProto, inferred: ModelProto, tensor: NestedTensor
) -> _Problem | tuple[int, Shape]:
    """*tensor*'s elem type and shape in its subgraph, or the problem with exposing it."""
    place = _walk(inferred, tensor.path, str(tensor))
    if isinstance(place, _Problem):
        return place
    opset = _opset(model)
    for node, label in zip(place.owners, tensor.path[::2], strict=True):
        if node.op_type == "If" and opset < 11:
            return _Problem(
                f"{tensor}: If {label!r} is an If of opset {opset}, whose branches "
                "must give outputs of one shape, so no branch can give an empty tensor; convert "
                "the model to opset 11 or later (onnx.version_converter)"
            )
        if node.op_type == "Scan" and opset < 9:
            return _Problem(
                f"{tensor}: Scan {label!r} is opset-8 Scan (batch axis first), "
                "which cannot be exposed; convert the model to opset 9 or later "
                "(onnx.version_converter)"
            )
    graph, scope = place.graph, place.scope
    visible = set(scope) | {o for n in graph.node for o in n.output if o}
    if tensor.tensor not in visible:
        return _Problem(
            f"{tensor}: no tensor {tensor.tensor!r} in {'/'.join(tensor.path)}."
            + did_you_mean(tensor.tensor, visible),
            missing=True,
        )
    elem, shape = scope.get(tensor.tensor, (None, None))
    if not elem or elem == onnx.TensorProto.STRING:
        return _Problem(
            f"{tensor}: {tensor.tensor!r} is not a tensor of a known numeric elem type (shape "
            "inference found none); declare its type in the subgraph's value_info"
        )
    if shape is None:
        return _Problem(
            f"{tensor}: the rank of {tensor.tensor!r} is unknown (shape inference found none); "
            "declare its shape in the subgraph's value_info"
        )
    if not shape and any(n.op_type == "If" for n in place.owners):
        return _Problem(
            f"{tensor}: a scalar inside an If branch cannot be exposed (no empty scalar)"
        )
    return elem, shape


# -- a subgraph on its own --------------------------------------------------------------------
def free_names(graph: GraphProto) -> set[str]:
    """Names *graph* (and the subgraphs inside it) uses from an enclosing scope."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined.update(o for n in graph.node for o in n.output)
    used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= free_names(sub)
    return used - defined


def _constants(graph: GraphProto) -> dict[str, onnx.TensorProto]:
    """*graph*'s initializers and Constant values, by name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.output and value is not None:
            found[node.output[0]] = value
    return found


def _scope_constants(graphs: Sequence[GraphProto]) -> dict[str, onnx.TensorProto]:
    """The constants a graph nested in *graphs* (outermost first) sees by name: each
    graph's own, and an inner graph's input or computed value hides an outer constant of
    its name (a Loop body's carried ``lo`` is not the main graph's initializer ``lo``)."""
    constants: dict[str, onnx.TensorProto] = {}
    for graph in graphs:
        own = _constants(graph)
        computed = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
        for name in computed - own.keys():
            constants.pop(name, None)
        constants.update(own)
    return constants


def subgraph_model(model: ModelProto, path: Path) -> ModelProto:
    """The subgraph at *path* as a model of its own, for the main-graph tools to read.

    ``GraphIndex``, ``list_layers``, ``neuron_axis`` and ``select_captures`` then list a
    branch's or body's layers and their axes as they do the main graph's; the tensors they
    name are that subgraph's, to expose as ``NestedTensor(path, name)``. The graph is the
    subgraph with its inferred types; every value it takes from an enclosing scope becomes
    an initializer (a copy) when it is an initializer or Constant there, so constants stay
    constants, and an input with its type otherwise. The subgraph's own inputs (a Loop's
    iteration number, condition and carried values, a Scan's states and slices) stay inputs.
    The model is meant for reading, not for running.
    """
    inferred = _inferred(model)
    place = _walk(inferred, path, "/".join(path))
    if isinstance(place, _Problem):
        raise (LayerNotFoundError if place.missing else ModelError)(place.text)
    graph = GraphProto()
    graph.CopyFrom(place.graph)
    enclosing = [inferred.graph]
    for node, attr_name in zip(place.owners[:-1], path[1::2][:-1], strict=True):
        enclosing.append(next(a.g for a in node.attribute if a.name == attr_name))
    constants = _scope_constants(enclosing)
    for name in sorted(free_names(place.graph)):
        if name in constants:
            tensor = graph.initializer.add()
            tensor.CopyFrom(constants[name])
            tensor.name = name
        else:
            elem, shape = place.scope.get(name, (None, None))
            graph.input.append(helper.make_tensor_value_info(name, elem or 0, shape))
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    sub.functions.extend(model.functions)
    sub.metadata_props.extend(model.metadata_props)
    return sub


# -- rewriting --------------------------------------------------------------------------------
class _Names:
    """Fresh names that no graph of the model uses, for values and nodes alike."""

    def __init__(self, model: ModelProto) -> None:
        self.taken: set[str] = set()
        subs = _subgraphs(model.graph, (), ChainMap(), 0, False)
        for g in [model.graph, *(sub.graph for sub in subs)]:
            self.taken.update(v.name for v in (*g.input, *g.output, *g.value_info))
            self.taken.update(t.name for t in g.initializer)
            for n in g.node:
                self.taken.update((n.name, *n.input, *n.output))

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


@dataclass(frozen=True)
class _Local:
    """A requested tensor as some graph on its path sees it."""

    name: str
    elem_type: int
    shape: Shape  # None where the size is not fixed
    stacked: int
    conditional: bool


def _fixed(shape: Shape) -> Shape:
    """*shape* with symbolic sizes dropped: a subgraph's symbols need not hold outside it."""
    return tuple(d if isinstance(d, int) else None for d in shape)


def _empty_value(name: str, elem_type: int, shape: Shape) -> onnx.TensorProto:
    dims = [0, *(d if isinstance(d, int) else 0 for d in shape[1:])]
    return helper.make_tensor(name, elem_type, dims, vals=b"", raw=True)


def _pad_outputs(node: NodeProto, expected: int, names: _Names) -> None:
    """Name every output the node leaves out, so an appended one lines up with its body."""
    while len(node.output) < expected:
        node.output.append(names.fresh(f"{node.name or node.op_type}.unused"))


def _emit(graph: GraphProto, local: _Local, base: str, names: _Names) -> str:
    """Make *local* an output of *graph* (through an Identity); the output's name."""
    out = names.fresh(base)
    graph.node.append(
        helper.make_node("Identity", [local.name], [out], name=names.fresh(f"{base}.identity"))
    )
    graph.output.append(helper.make_tensor_value_info(out, local.elem_type, local.shape))
    return out


def _thread_node(
    node: NodeProto,
    label: str,
    found: Mapping[str, Mapping[NestedTensor, _Local]],
    names: _Names,
) -> dict[NestedTensor, _Local]:
    """Add an output to owner *node* for every tensor *found* in its subgraphs."""
    graphs = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    result: dict[NestedTensor, _Local] = {}
    for attr_name, locals_ in found.items():
        body = graphs[attr_name]
        for tensor, local in locals_.items():
            base = f"{tensor.tensor}.{label}"
            if node.op_type == "If":
                other = graphs[_OTHER_BRANCH[attr_name]]
                _pad_outputs(node, len(body.output), names)
                _emit(body, local, f"{base}.{attr_name}", names)
                empty = names.fresh(f"{base}.empty")
                value = _empty_value(empty, local.elem_type, local.shape)
                other.node.append(
                    helper.make_node("Constant", [], [empty], name=empty, value=value)
                )
                other.output.append(
                    helper.make_tensor_value_info(empty, local.elem_type, list(value.dims))
                )
                shape: Shape = (None, *local.shape[1:])
                stacked, conditional = local.stacked, True
            else:  # Loop or Scan: an extra scan output, stacked on a new leading axis
                carried = len(body.output) - (1 if node.op_type == "Loop" else 0)
                _pad_outputs(node, carried, names)
                _emit(body, local, f"{base}.step", names)
                for attr in node.attribute:
                    if attr.name in ("scan_output_axes", "scan_output_directions"):
                        attr.ints.append(0)
                shape, stacked = (None, *local.shape), local.stacked + 1
                conditional = local.conditional
            out = names.fresh(base)
            node.output.append(out)
            result[tensor] = _Local(out, local.elem_type, shape, stacked, conditional)
    return result


def _thread(
    graph: GraphProto,
    requests: Mapping[NestedTensor, Path],
    inner: Mapping[NestedTensor, tuple[int, Shape]],
    names: _Names,
) -> dict[NestedTensor, _Local]:
    """Expose each request (with the part of its path below *graph*) as a value of *graph*."""
    labels = node_labels(graph)
    result: dict[NestedTensor, _Local] = {}
    below: dict[str, dict[str, dict[NestedTensor, Path]]] = {}
    for tensor, rest in requests.items():
        if rest:
            below.setdefault(rest[0], {}).setdefault(rest[1], {})[tensor] = rest[2:]
        else:
            elem, shape = inner[tensor]
            result[tensor] = _Local(tensor.tensor, elem, _fixed(shape), 0, False)
    for label, by_attr in below.items():
        node = graph.node[labels.index(label)]
        found = {
            attr_name: _thread(
                next(a.g for a in node.attribute if a.name == attr_name), inside, inner, names
            )
            for attr_name, inside in by_attr.items()
        }
        result.update(_thread_node(node, label, found, names))
    return result


def expose(
    model: ModelProto, tensors: Sequence[NestedTensor]
) -> tuple[ModelProto, dict[NestedTensor, ExposedTensor]]:
    """Return a copy of *model* whose main graph also outputs each nested tensor.

    Parameters
    ----------
    model:
        The model (not changed).
    tensors:
        Tensors inside If branches and Loop/Scan bodies, nested to any depth, each named
        by the path of its subgraph (see ``nested_nodes``). A tensor asked for twice is
        exposed once.

    Returns
    -------
    The new model, whose original outputs come first and unchanged, and per requested
    tensor the main-graph output that carries it (see ExposedTensor and the module
    docstring for what it holds). Every path or name that does not resolve is reported at
    once, with suggestions.
    """
    wanted = list(dict.fromkeys(tensors))
    inferred = _inferred(model)
    located = {t: _locate(model, inferred, t) for t in wanted}
    problems = [p for p in located.values() if isinstance(p, _Problem)]
    if problems:
        error = LayerNotFoundError if any(p.missing for p in problems) else ModelError
        raise error(" ".join(p.text for p in problems))
    inner = {t: info for t, info in located.items() if not isinstance(info, _Problem)}
    out = ModelProto()
    out.CopyFrom(model)
    names = _Names(out)
    # the rewrite edits a plain copy: it has the inferred copy's nodes in the same order
    found = _thread(out.graph, {t: t.path for t in wanted}, inner, names)
    exposed: dict[NestedTensor, ExposedTensor] = {}
    for tensor in wanted:
        local = found[tensor]
        out.graph.output.append(
            helper.make_tensor_value_info(local.name, local.elem_type, local.shape)
        )
        place = _walk(inferred, tensor.path, str(tensor))
        assert isinstance(place, _Place)  # resolved above
        ops = [n.op_type for n in place.owners]
        stacking = [i for i, op in enumerate(ops) if op in _STACKING]
        exposed[tensor] = ExposedTensor(
            local.name,
            tensor,
            local.stacked,
            local.conditional,
            local.elem_type,
            local.shape,
            inner[tensor][1],
            branch_in_loop=bool(stacking) and "If" in ops[stacking[0] :],
        )
    return out, exposed
