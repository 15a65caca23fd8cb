"""``onnx-state export``: a Keras .keras file or a PyTorch module + state dict -> ONNX."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="PyTorch state-dict file.")
@click.option("--input-shape", metavar="C,H,W", help="PyTorch sample shape without batch.")
@click.option("--opset", type=int, default=18, show_default=True,
              help="ONNX opset (Keras: at most 18).")  # fmt: skip
def export_command(
    source: str, output: str, weights: str | None, input_shape: str | None, opset: int
) -> None:
    """Export SOURCE (model.keras, or package.module:ClassOrFactory) to OUTPUT.onnx."""
    from exporters.export import export_model  # the exporters are an optional part

    export_model(source, output, weights=weights, input_shape=input_shape, opset=opset)
    click.echo(f"wrote {output}")
