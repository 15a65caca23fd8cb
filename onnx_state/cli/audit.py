"""``onnx-state audit MODEL --data X``: dead neurons, coverage and drift from a reference."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnx_state.audit import audit
from onnx_state.cli.options import parse_axes, print_gated, selection, session
from onnx_state.errors import InputError

_RULES = ("max_dead_fraction", "min_coverage", "max_novelty", "max_js", "max_efficiency_drift")


def load_rules(path: str) -> dict[str, float]:
    """Thresholds from a JSON file: {"max_dead_fraction": 0.1, ...}."""
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the rules file {path}: {exc}") from None
    if not isinstance(rules, dict):
        raise InputError(f"{path} must hold a JSON object of thresholds")
    unknown = sorted(set(rules) - set(_RULES))
    if unknown:
        raise InputError(f"unknown rule(s) {', '.join(unknown)} in {path}; use {', '.join(_RULES)}")
    return {k: float(v) for k, v in rules.items()}


@click.command("audit")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="PATH[:KEY]", help="Data to audit.")
@click.option("--reference", type=click.Path(file_okay=False), help="Reference results store.")
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for accuracy.")
@selection
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rules", type=click.Path(dir_okay=False), help="JSON file of thresholds.")
@click.option("--max-dead-fraction", type=float, help="Gate: exit 1 above.")
@click.option("--min-coverage", type=float, help="Gate: exit 1 below.")
@click.option("--max-novelty", type=float, help="Gate (with --reference): exit 1 above.")
@click.option("--max-js", type=float, help="Gate (with --reference): exit 1 above.")
@click.option("--max-efficiency-drift", type=float, help="Gate (with --reference): |drift| above.")
@session
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit_command(
    model,
    data,
    reference,
    labels,
    attach_to,
    exclude,
    method,
    neuron_axes,
    batch_size,
    top_k,
    rules,
    max_dead_fraction,
    min_coverage,
    max_novelty,
    max_js,
    max_efficiency_drift,
    providers,
    threads,
    optimization,
    as_json,
) -> None:
    """Find dead and always-on neurons, coverage, and drift of MODEL on --data.

    Exit code 1 when a rule is violated, 2 on bad input.
    """
    thresholds = load_rules(rules) if rules else {}
    flags = dict(zip(_RULES, (max_dead_fraction, min_coverage, max_novelty, max_js,
                              max_efficiency_drift)))  # fmt: skip
    thresholds.update({k: v for k, v in flags.items() if v is not None})
    result = audit(
        model, data, reference=reference, labels=labels, attach_to=list(attach_to) or None,
        exclude=list(exclude), method=method, batch_size=batch_size, top_k=top_k,
        neuron_axes=parse_axes(neuron_axes), providers=list(providers) or None,
        threads=threads, optimization=optimization,
    )  # fmt: skip
    broken = result.violations(**thresholds)
    print_gated(result, broken, as_json)
