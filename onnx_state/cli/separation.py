"""``onnx-state separation`` and ``separation-test``: Henze–Penrose class separation."""

from __future__ import annotations

import click

from onnx_state.cli.options import echo_json, selection, session
from onnx_state.errors import InputError
from onnx_state.separation import FORMULAS, SeparationResult, separation, separation_tests

_FORMULA = click.option("--formula", type=click.Choice(FORMULAS), default=FORMULAS[0],
                        show_default=True, help="Henze–Penrose form (see README).")  # fmt: skip


@click.command("separation")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="PATH[:KEY]", help="Training inputs.")
@click.option("--labels", required=True, metavar="PATH[:KEY]", help="Training labels.")
@click.option("--test-data", metavar="PATH[:KEY]", help="Test inputs.")
@click.option("--test-labels", metavar="PATH[:KEY]", help="Test labels.")
@selection
@click.option("--samples-per-class", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--draw", type=click.Choice(["first", "random"]), default="first", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Save the result (JSON).")
@click.option("--plots", type=click.Path(file_okay=False), help="Write plots to this folder.")
@click.option("--pca-pair", nargs=2, type=int, help="Two classes for the PCA scatter plots.")
@_FORMULA
@session
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def separation_command(
    model,
    data,
    labels,
    test_data,
    test_labels,
    attach_to,
    exclude,
    method,
    neuron_axes,
    samples_per_class,
    draw,
    seed,
    batch_size,
    output,
    plots,
    pca_pair,
    formula,
    providers,
    threads,
    optimization,
    as_json,
) -> None:
    """Separation of every pair of classes at each layer of MODEL (MST-based)."""
    if neuron_axes:
        raise InputError("--neuron-axis does not apply: separation flattens each layer output")
    result = separation(
        model, data, labels, attach_to=list(attach_to) or None,
        samples_per_class=samples_per_class, test_data=test_data, test_labels=test_labels,
        exclude=list(exclude), method=method, draw=draw, seed=seed, batch_size=batch_size,
        pca_pair=tuple(pca_pair) if pca_pair else (tuple(_first_two(labels)) if plots else None),
        providers=list(providers) or None, threads=threads, optimization=optimization,
    )  # fmt: skip
    if output:
        result.save(output)
    if plots:
        from onnx_state.plots import plot_separation

        plot_separation(result, plots, formula=formula)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.table(formula))


def _first_two(labels: str) -> list[int]:
    import numpy as np

    from onnx_state.analysis import labels_array
    from onnx_state.runtime import load_array

    return sorted(np.unique(labels_array(load_array(labels))).tolist())[:2]


@click.command("separation-test")
@click.argument("result_a", type=click.Path(dir_okay=False))
@click.argument("result_b", required=False, type=click.Path(dir_okay=False))
@click.option("--layers", is_flag=True, help="Test layer k vs k+1 of RESULT_A.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("-n", "--permutations", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_FORMULA
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def separation_test_command(
    result_a, result_b, layers, split, permutations, seed, formula, as_json
) -> None:
    """Fisher permutation tests of mean separation: RESULT_A vs RESULT_B per layer (e.g.
    before vs after training), or consecutive layers of RESULT_A with --layers."""
    a = SeparationResult.load(result_a)
    b = SeparationResult.load(result_b) if result_b else None
    rows = separation_tests(a, b, layers, split, formula, permutations, seed)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'A':28s} {'B':28s} {'mean A':>8s} {'mean B':>8s} {'diff':>8s} {'p':>8s}")
    for r in rows:
        click.echo(f"{r['a'][:28]:28s} {r['b'][:28]:28s} {r['mean_a']:8.4f} {r['mean_b']:8.4f} "
                   f"{r['diff']:+8.4f} {r['p']:8.4f}")  # fmt: skip
    click.echo("class pairs share classes, so they are not independent: read p as a guide")
