"""``onnx-state audit MODEL --data X``: neurons, coverage, class information, novelty, OOD
detection and drift from a reference."""

from __future__ import annotations

from typing import Any

import click

from onnx_state.audit import CLASSES, NOVELTY, RULES, audit, load_rules
from onnx_state.cli.options import (
    cluster,
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
from onnx_state.report import check_report_path


def _rules(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float]:
    return load_rules(value) if value else {}


@click.command("audit")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True, help="Data to audit (in time order with --window).")
@click.option("--reference", type=click.Path(file_okay=False), help="Reference results store.")
@click.option("--labels", metavar="PATH[:KEY]",
              help="Class labels: accuracy, per-class states, mutual information.")  # fmt: skip
@data_option("--ood-data", help="Out-of-distribution data (with --reference): AUROC and FPR "
             "at 95% TPR of the novelty score vs the softmax baseline.")  # fmt: skip
@data_option("--calibration", help="Held-out in-distribution data, not in the reference: "
             "the per-layer thresholds of Hamming novelty.")  # fmt: skip
@click.option("--window", type=click.IntRange(min=1),
              help="Novelty, JS and efficiency per window of this many samples.")  # fmt: skip
@click.option("--novelty", type=click.Choice(NOVELTY), default="hamming", show_default=True,
              help="Hamming-tolerant novelty, or the strict exact-membership mode.")  # fmt: skip
@click.option("--by-class/--any-class", default=True, show_default=True,
              help="Compare with the reference states of the sample's class.")  # fmt: skip
@click.option("--class-from", type=click.Choice(CLASSES), default="predicted",
              show_default=True, help="Whose class a sample is compared under.")  # fmt: skip
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.95, show_default=True, help="Vote threshold quantile.")  # fmt: skip
@click.option("--min-votes", type=click.IntRange(min=0),
              help="Layer votes that flag a sample (default: half the layers).")  # fmt: skip
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
@click.option("--max-ood-fraction", type=float,
              help="Gate: fraction of samples flagged novel (Hamming votes) above.")  # fmt: skip
@click.option("--min-auroc", type=float, help="Gate (with --ood-data): novelty AUROC below.")
@click.option("--max-fpr95", type=float, help="Gate (with --ood-data): FPR at 95% TPR above.")
@session
@cluster
@report_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --report file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def audit_command(model: str, data: Any, rules: dict[str, float], report: str | None,
                  overwrite: bool, quiet: bool, as_json: bool,
                  **options: Any) -> None:  # fmt: skip
    """Find dead, always-on and redundant neurons, coverage, class information, novelty and
    drift of MODEL on --data.

    Exit code 1 when a rule is violated (with --window, also the first window that crosses
    a gate), 2 on bad input.
    """
    flags = {k: options.pop(k) for k in RULES}
    thresholds = {**rules, **{k: v for k, v in flags.items() if v is not None}}
    if report:
        check_report_path(report, overwrite)
    result = audit(model, data, progress=False if quiet else None, **options)
    write_report(report, overwrite, audit=result)
    print_gated(result, result.violations(**thresholds), as_json)
