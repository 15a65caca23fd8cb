"""``onnx-state audit MODEL --data X``: dead neurons, coverage and drift from a reference."""

from __future__ import annotations

from typing import Any

import click

from onnx_state.audit import RULES, audit, load_rules
from onnx_state.cli.options import (
    data_option,
    feeding,
    json_option,
    print_gated,
    reading,
    report_option,
    selection,
    session,
    write_report,
)
from onnx_state.outputs import check_output


def _rules(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float]:
    return load_rules(value) if value else {}


@click.command("audit")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True, help="Data to audit.")
@click.option("--reference", type=click.Path(file_okay=False), help="Reference results store.")
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for accuracy.")
@selection
@reading
@feeding()
@click.option("--top-k", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rules", type=click.Path(dir_okay=False), callback=_rules,
              help="JSON file of thresholds.")  # fmt: skip
@click.option("--max-dead-fraction", type=float, help="Gate: exit 1 above.")
@click.option("--min-coverage", type=float, help="Gate: exit 1 below.")
@click.option("--max-novelty", type=float, help="Gate (with --reference): exit 1 above.")
@click.option("--max-js", type=float, help="Gate (with --reference): exit 1 above.")
@click.option("--max-efficiency-drift", type=float, help="Gate (with --reference): |drift| above.")
@session
@report_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --report file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def audit_command(model: str, data: Any, rules: dict[str, float], report: str | None,
                  overwrite: bool, quiet: bool, as_json: bool,
                  **options: Any) -> None:  # fmt: skip
    """Find dead and always-on neurons, coverage, and drift of MODEL on --data.

    Exit code 1 when a rule is violated, 2 on bad input.
    """
    flags = {k: options.pop(k) for k in RULES}
    thresholds = {**rules, **{k: v for k, v in flags.items() if v is not None}}
    if report:
        check_output(report, overwrite=overwrite, kind="file")
    result = audit(model, data, progress=False if quiet else None, **options)
    write_report(report, overwrite, audit=result)
    print_gated(result, result.violations(**thresholds), as_json)
