"""``onnx-state export``: a SavedModel, a .tflite or .keras file, or a PyTorch module -> ONNX."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="PyTorch state-dict file.")
@click.option("--input-shape", metavar="C,H,W", help="PyTorch sample shape without batch.")
@click.option("--opset", type=int, default=18, show_default=True,
              help="ONNX opset (TensorFlow and Keras: at most 18).")  # fmt: skip
@click.option("--signature", default="serving_default", show_default=True,
              help="SavedModel signature to export.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT file.")
def export_command(
    source: str,
    output: str,
    weights: str | None,
    input_shape: str | None,
    opset: int,
    signature: str,
    overwrite: bool,
) -> None:
    """Export SOURCE to OUTPUT.onnx: a TensorFlow SavedModel directory, a .tflite file, a
    .keras file, or a PyTorch package.module:ClassOrFactory (with --input-shape)."""
    from exporters.export import export_model  # the exporters are an optional part

    export_model(
        source, output, weights=weights, input_shape=input_shape, opset=opset,
        signature=signature, overwrite=overwrite,
    )  # fmt: skip
    click.echo(f"wrote {output}")
