"""Layers of a graph: one node, or the connected nodes that share exporter metadata.

A node that carries ``onnx_state.layer_name`` belongs to that framework layer; the nodes with
one layer name that are connected by data flow form that layer (tf2onnx's ``conv_1/BiasAdd``
then ``conv_1/Elu``, even with shape arithmetic in between), and a module called twice gives
two layers (``act``, ``act_1``). A node without metadata is a layer of its own, named after
the node. A layer's output is the last of its tensors used outside it; its input is the
first tensor from outside, preferring float data over shape arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto, NodeProto

from onnx_state.capture.index import (
    CAPTURABLE_TYPES,
    FLOAT_TYPES,
    GraphIndex,
    as_index,
    node_meta,
)
from onnx_state.capture.metadata import META_LAYER_NAME, META_LAYER_TYPE

__all__ = ["Layer", "list_layers", "node_label"]


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
    # Every output worth a capture, the final one first: a node with several used outputs
    # (LSTM's Y, Y_h, Y_c; a Split's parts) offers each of them.
    outputs: tuple[str, ...] = ()


def node_label(node: NodeProto, index: int) -> str:
    """A node's name, or ``<op type>_<index>`` for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


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


def list_layers(model: GraphIndex | ModelProto) -> list[Layer]:
    """Layers of the main graph of *model* (or of its index) in order of their first node.

    Nodes sharing an ``onnx_state.layer_name`` and connected by data flow form one layer,
    even when other nodes sit between them (tf2onnx interleaves shape arithmetic); a
    module called twice gives two layers (``act``, ``act_1``). A layer's output is the last of its
    tensors used outside it (for a layer of one node, its first used output); its input is
    the first tensor from outside, preferring float data over shape arithmetic. The other
    used outputs of the node that makes the output (float or 8/32-bit integer) are
    ``Layer.outputs`` too.
    """
    index = as_index(model)
    info, constants, consumers = index.info, index.constants, index.consumers
    graph_outputs = index.graph_outputs
    named: dict[str, list[tuple[int, NodeProto]]] = {}
    for i, node in enumerate(index.nodes):
        if node.op_type == "Constant":
            continue
        key = node_meta(node).get(META_LAYER_NAME) or f"\0{i}"  # \0: a node of its own
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
        floats = [i for i in inputs if info.get(i, (None,))[0] in FLOAT_TYPES]
        has_meta = not key.startswith("\0")
        name = key if has_meta else node_label(nodes[0], members[0][0])
        base, k = name, 0
        while name in taken:  # a module called twice (act, act_1), or a name reused
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        meta = node_meta(nodes[-1])
        if has_meta:
            output = outside[-1] if outside else (list(nodes[-1].output) or [""])[0]
            last = next((n for n in nodes if output in n.output), nodes[-1])
        else:  # one node: its first used output is the layer's output, as in TensorState
            output = (outside or list(nodes[-1].output) or [""])[0]
            last = nodes[-1]
        used = set(outside)
        extra = [
            o for o in last.output
            if o in used and o != output and info.get(o, (None,))[0] in CAPTURABLE_TYPES
        ]  # fmt: skip
        layers.append(
            Layer(
                name=name,
                layer_type=meta.get(META_LAYER_TYPE, nodes[-1].op_type),
                op_types=tuple(n.op_type for n in nodes),
                nodes=tuple(node_label(n, i) for i, n in members),
                input=(floats or inputs or [None])[0],
                output=output,
                has_metadata=has_meta,
                outputs=(output, *extra),
            )
        )
    return layers
