"""``onnx-state inspect MODEL``: inputs, outputs, op types and candidate layers."""

from __future__ import annotations

import click

from onnx_state.capture.describe import describe, describe_table
from onnx_state.cli.options import echo_json, json_option


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@json_option
def inspect_command(model: str, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, op-type histogram and candidate layers."""
    info = describe(model)
    if as_json:
        echo_json(info)
    else:
        click.echo(describe_table(info))
