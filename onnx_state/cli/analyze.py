"""``onnx-state analyze MODEL --data X``: per-layer states, entropy and efficiency."""

from __future__ import annotations

from typing import Any

import click

from onnx_state.analysis import analyze
from onnx_state.cli.options import (
    cluster,
    data_option,
    echo_json,
    feeding,
    reading,
    report_option,
    selection,
    session,
    write_report,
)
from onnx_state.errors import InputError
from onnx_state.outputs import check_output
from onnx_state.report import check_report_path
from onnx_state.store import is_store


@click.command("analyze")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@data_option(help=".npy, .npz or zarr input data.")
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for accuracy and aIQ.")
@click.option("--example", is_flag=True, help="Analyse the bundled LeNet-5 on digits.")
@selection
@reading
@feeding()
@session
@cluster
@click.option("--output", "-o", type=click.Path(), help="Write the results store (zarr) here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output or --report.")
@report_option
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Write the counters to --output every N batches, for --resume.",
)
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run whose checkpoint is at --output.")  # fmt: skip
@click.option("--no-parity", is_flag=True, help="Skip the instrumented-vs-original check.")
@click.option("--pack-bits", "pack", is_flag=True,
              help="Pack float32 conv maps' firing bits inside the graph (exact; fewer bytes "
              "to count).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def analyze_command(
    model: str | None,
    data: Any,
    labels: str | None,
    example: bool,
    output: str | None,
    overwrite: bool,
    checkpoint_every: int | None,
    resume: bool,
    no_parity: bool,
    report: str | None,
    as_json: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Count the firing states of MODEL's layers on --data and report their efficiency."""
    if example:
        from onnx_state.data import example_paths

        if model or data:
            raise InputError("--example brings its own model and data; drop MODEL and --data")
        model, data, labels = example_paths()
    elif not model or not data:
        raise InputError("give MODEL and --data (or --example for the bundled demo)")
    if (checkpoint_every or resume) and not output:
        raise InputError("--checkpoint-every and --resume need --output (the store to write)")
    if output and not resume:  # before the run, not after it
        check_output(output, overwrite=overwrite, kind="store", is_ours=is_store)
    if report:
        check_report_path(report, overwrite)
    checkpointing = bool(checkpoint_every or resume)
    result = analyze(
        model, data, labels=labels, parity=not no_parity, progress=False if quiet else None,
        checkpoint=output if checkpointing else None, checkpoint_every=checkpoint_every,
        resume=resume, overwrite=overwrite, **options,
    )  # fmt: skip
    if output and not checkpointing:  # (a checkpointed run saved its result itself)
        result.save(output, overwrite=overwrite)
    write_report(report, overwrite, analysis=result, progress=False if quiet else None)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.table())
        if output:
            click.echo(f"results store: {output}")
