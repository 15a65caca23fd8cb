"""``onnx-state analyze MODEL --data X``: per-layer states, entropy and efficiency."""

from __future__ import annotations

import click

from onnx_state.analysis import analyze
from onnx_state.cli.options import echo_json, parse_axes, selection, session
from onnx_state.errors import InputError


@click.command("analyze")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--data", metavar="PATH[:KEY]", help=".npy, .npz or zarr input data.")
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for accuracy and aIQ.")
@click.option("--example", is_flag=True, help="Analyse the bundled LeNet-5 on digits.")
@selection
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True)
@session
@click.option("--output", "-o", type=click.Path(), help="Write the results store (zarr) here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output store.")
@click.option("--no-parity", is_flag=True, help="Skip the instrumented-vs-original check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def analyze_command(
    model,
    data,
    labels,
    example,
    attach_to,
    exclude,
    method,
    neuron_axes,
    batch_size,
    providers,
    threads,
    optimization,
    output,
    overwrite,
    no_parity,
    as_json,
    quiet,
) -> None:
    """Count the firing states of MODEL's layers on --data and report their efficiency."""
    if example:
        from onnx_state.data import example_paths

        if model or data:
            raise InputError("--example brings its own model and data; drop MODEL and --data")
        model, data, labels = example_paths()
    elif not model or not data:
        raise InputError("give MODEL and --data (or --example for the bundled demo)")
    result = analyze(
        model, data, attach_to=list(attach_to) or None, exclude=list(exclude), method=method,
        batch_size=batch_size, labels=labels, neuron_axes=parse_axes(neuron_axes),
        providers=list(providers) or None, threads=threads, optimization=optimization,
        parity=not no_parity, progress=False if quiet else None,
    )  # fmt: skip
    if output:
        result.save(output, overwrite=overwrite)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.table())
        if output:
            click.echo(f"results store: {output}")
