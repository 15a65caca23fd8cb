"""``onnx-state compare MODEL_A MODEL_B --data X``: layer-by-layer state agreement."""

from __future__ import annotations

from typing import Any

import click

from onnx_state.cli.options import (
    cluster,
    data_option,
    feeding,
    json_option,
    list_or_none,
    parse_constants,
    print_gated,
    report_option,
    selection,
    session,
    write_report,
)
from onnx_state.compare import compare, load_mapping
from onnx_state.report import check_report_path


def _mapping(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return load_mapping(value) if value else None


@click.command("compare")
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@data_option(required=True, help="Input data for both models.")
@data_option("--data-b", help="B's own data, when its inputs differ.")
@click.option("--const-b", "constants_b", multiple=True, metavar="NAME=PATH[:KEY]|NAME=NUMBER",
              callback=lambda ctx, param, v: parse_constants(v),
              help="B's constant inputs, when they differ from --const.")  # fmt: skip
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for each model's accuracy.")
@selection
@click.option("--attach-to-b", multiple=True, metavar="TYPE|NAME", callback=list_or_none,
              help="B's layers, if different.")  # fmt: skip
@click.option("--mapping", type=click.Path(dir_okay=False), callback=_mapping,
              help="JSON {layer of A: layer of B}.")  # fmt: skip
@feeding()
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="State agreement below which a layer is flagged.")  # fmt: skip
@click.option("--min-state-agreement", type=click.FloatRange(0, 1), help="Gate: exit 1 below.")
@click.option("--min-top1-agreement", type=click.FloatRange(0, 1), help="Gate: exit 1 below.")
@click.option("--max-js", type=click.FloatRange(0, 1), help="Gate: exit 1 above.")
@click.option("--max-output-diff", type=click.FloatRange(min=0), help="Gate: exit 1 above.")
@session
@cluster
@report_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --report file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def compare_command(
    model_a: str,
    model_b: str,
    data: Any,
    min_state_agreement: float | None,
    min_top1_agreement: float | None,
    max_js: float | None,
    max_output_diff: float | None,
    report: str | None,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Run MODEL_A and MODEL_B on the same batches and compare their states layer by layer.

    Exit code 1 when a gate (--min-*/--max-*) is violated, 2 on bad input.
    """
    if report:
        check_report_path(report, overwrite)
    result = compare(model_a, model_b, data, progress=False if quiet else None, **options)
    write_report(report, overwrite, comparison=result)
    broken = result.violations(min_state_agreement, min_top1_agreement, max_js, max_output_diff)
    print_gated(result, broken, as_json)
