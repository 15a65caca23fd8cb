"""``onnx-state separation`` and ``separation-test``: Henze–Penrose class separation."""

from __future__ import annotations

from typing import Any

import click

from onnx_state.cli.options import (
    data_option,
    echo_json,
    feeding,
    json_option,
    report_option,
    selection,
    session,
    write_report,
)
from onnx_state.errors import InputError
from onnx_state.outputs import check_output
from onnx_state.report import check_report_path
from onnx_state.separation import (
    FORMULAS,
    Formula,
    SeparationResult,
    first_classes,
    separation,
    separation_tests,
    tests_table,
)

_FORMULA = click.option("--formula", type=click.Choice(FORMULAS), default=FORMULAS[0],
                        show_default=True, help="Henze–Penrose form (see README).")  # fmt: skip


@click.command("separation")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True, help="Training inputs.")
@click.option("--labels", required=True, metavar="PATH[:KEY]", help="Training labels.")
@data_option("--test-data", help="Test inputs.")
@click.option("--test-labels", metavar="PATH[:KEY]", help="Test labels.")
@selection
@click.option("--samples-per-class", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--draw", type=click.Choice(["first", "random"]), default="first", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@feeding(output_axis=False)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Save the result (JSON).")
@click.option("--plots", type=click.Path(file_okay=False), help="Write plots to this folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --output, --plots or --report.")  # fmt: skip
@report_option
@click.option("--pairs", is_flag=True, help="Print each layer's class x class separations too.")
@click.option("--pca-pair", nargs=2, type=int, help="Two classes for the PCA scatter plots.")
@_FORMULA
@session
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@json_option
def separation_command(
    model: str,
    data: Any,
    labels: str,
    neuron_axes: dict[str, int],
    output: str | None,
    plots: str | None,
    overwrite: bool,
    pca_pair: tuple[int, int] | None,
    formula: Formula,
    report: str | None,
    pairs: bool,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Separation of every pair of classes at each layer of MODEL (MST-based)."""
    if neuron_axes:
        raise InputError("--neuron-axis does not apply: separation flattens each layer output")
    if output:
        check_output(output, overwrite=overwrite, kind="file")
    if plots:
        check_output(plots, overwrite=overwrite, kind="folder")
    if report:
        check_report_path(report, overwrite)
    if not pca_pair and plots:
        pca_pair = first_classes(labels)
    result = separation(model, data, labels=labels, pca_pair=pca_pair or None,
                        progress=False if quiet else None, **options)  # fmt: skip
    if output:
        result.save(output, overwrite=overwrite)
    if plots:
        from onnx_state.plots import plot_separation

        plot_separation(result, plots, formula=formula)
    write_report(report, overwrite, separation=result)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.table(formula, pairs=pairs))


@click.command("separation-test")
@click.argument("result_a", type=click.Path(dir_okay=False))
@click.argument("result_b", required=False, type=click.Path(dir_okay=False))
@click.option("--layers", is_flag=True, help="Test layer k vs k+1 of RESULT_A.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("-n", "--permutations", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_FORMULA
@json_option
def separation_test_command(
    result_a: str,
    result_b: str | None,
    layers: bool,
    split: str,
    permutations: int,
    seed: int,
    formula: Formula,
    as_json: bool,
) -> None:
    """Fisher permutation tests of mean separation: RESULT_A vs RESULT_B per layer (e.g.
    before vs after training), or consecutive layers of RESULT_A with --layers."""
    a = SeparationResult.load(result_a)
    b = SeparationResult.load(result_b) if result_b else None
    rows = separation_tests(a, b, layers, split, formula, permutations, seed)
    if as_json:
        echo_json(rows)
    else:
        click.echo(tests_table(rows))
