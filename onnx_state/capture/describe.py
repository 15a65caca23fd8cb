"""What ``inspect`` shows of a model: inputs, outputs, opsets, op types, candidate layers."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from onnx import ModelProto

from onnx_state.capture.axes import neuron_axis
from onnx_state.capture.data import input_specs
from onnx_state.capture.index import GraphIndex
from onnx_state.capture.layers import list_layers
from onnx_state.capture.load import load_model
from onnx_state.capture.select import nested_layers

__all__ = ["describe", "describe_table"]


def describe(model: str | os.PathLike[str] | ModelProto) -> dict[str, Any]:
    """A model's inputs, outputs, opsets, op-type histogram and layers, as plain data.

    Layers inside If/Loop/Scan bodies are listed after the main graph's, named with the
    path of their owning nodes (``inside``: ``if0/then_branch/If_3/else_branch``).

    External data is not loaded, so this is cheap for models of any size.
    """
    proto = load_model(model, load_external=False)
    index = GraphIndex(proto)
    placed = [((), index, la) for la in list_layers(index)] + nested_layers(index)
    return {
        "inputs": [
            {"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)}
            for s in input_specs(proto)
        ],
        "outputs": [o.name for o in proto.graph.output],
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "op_types": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        "layers": [
            {
                "name": la.name,
                "layer_type": la.layer_type,
                "op_types": list(la.op_types),
                "output": la.output,
                "from_exporter": la.has_metadata,
                "outputs": [_output(where, t) for t in la.outputs or (la.output,)],
                "inside": "/".join(path),
            }
            for path, where, la in placed
        ],
    }


def _output(index: GraphIndex, tensor: str) -> dict[str, Any]:
    """One layer output: its shape, neuron axis and the rule that chose it."""
    choice = neuron_axis(index, tensor)
    shape = index.shape(tensor)
    return {
        "tensor": tensor,
        "shape": None if shape is None else list(shape),
        "neuron_axis": choice.axis,
        "axis_rule": choice.rule,
        "guessed": choice.guessed,
    }


def describe_table(info: dict[str, Any]) -> str:
    """``describe``'s data as the text ``inspect`` prints."""
    lines = ["inputs:"]
    for i in info["inputs"]:
        shape = ", ".join("?" if d in (None, 0) else str(d) for d in i["shape"])
        lines.append(f"  {i['name']}: {i['dtype']} ({shape})")
    lines.append("outputs: " + ", ".join(info["outputs"]))
    lines.append("op types: " + ", ".join(f"{k}×{v}" for k, v in info["op_types"].items()))
    lines.append("layers:")
    for la in info["layers"]:
        ops = "+".join(la["op_types"])
        tag = " [exporter metadata]" if la["from_exporter"] else ""
        lines.append(f"  {la['name']:32s} {la['layer_type']:16s} {ops}{tag}")
        for out in la["outputs"]:
            guess = "  GUESSED: override with --neuron-axis" if out["guessed"] else ""
            lines.append(
                f"      {out['tensor']}: neuron axis {out['neuron_axis']} ({out['axis_rule']})"
                + guess
            )
    return "\n".join(lines)
