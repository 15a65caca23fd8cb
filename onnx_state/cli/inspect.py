"""``onnx-state inspect MODEL``: inputs, outputs, op types and candidate layers."""

from __future__ import annotations

from collections import Counter

import click

from onnx_state import graph, runtime
from onnx_state.cli.options import echo_json


def describe(model_path: str) -> dict:
    """What inspect prints, as plain data."""
    model = graph.load_model(model_path, load_external=False)
    return {
        "inputs": [
            {"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)}
            for s in runtime.input_specs(model)
        ],
        "outputs": [o.name for o in model.graph.output],
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "op_types": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "layers": [
            {
                "name": la.name,
                "layer_type": la.layer_type,
                "op_types": list(la.op_types),
                "output": la.output,
                "from_exporter": la.has_metadata,
            }
            for la in graph.list_layers(model)
        ],
    }


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_command(model: str, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, op-type histogram and candidate layers."""
    info = describe(model)
    if as_json:
        echo_json(info)
        return
    click.echo("inputs:")
    for i in info["inputs"]:
        shape = ", ".join("?" if d in (None, 0) else str(d) for d in i["shape"])
        click.echo(f"  {i['name']}: {i['dtype']} ({shape})")
    click.echo("outputs: " + ", ".join(info["outputs"]))
    click.echo("op types: " + ", ".join(f"{k}×{v}" for k, v in info["op_types"].items()))
    click.echo("layers:")
    for la in info["layers"]:
        ops = "+".join(la["op_types"])
        tag = " [exporter metadata]" if la["from_exporter"] else ""
        click.echo(f"  {la['name']:32s} {la['layer_type']:16s} {ops}{tag}")
