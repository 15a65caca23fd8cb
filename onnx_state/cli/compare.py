"""``onnx-state compare MODEL_A MODEL_B --data X``: layer-by-layer state agreement."""

from __future__ import annotations

import click

from onnx_state.cli.options import print_gated, session
from onnx_state.compare import compare, load_mapping


@click.command("compare")
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="PATH[:KEY]", help="Input data for both models.")
@click.option("--data-b", metavar="PATH[:KEY]", help="B's own data, when its inputs differ.")
@click.option("--labels", metavar="PATH[:KEY]", help="Class labels, for each model's accuracy.")
@click.option("--attach-to", multiple=True, metavar="TYPE|NAME", help="Layers to compare.")
@click.option("--attach-to-b", multiple=True, metavar="TYPE|NAME", help="B's, if different.")
@click.option("--method", type=click.Choice(["after", "before", "both"]), default="after")
@click.option("--mapping", type=click.Path(dir_okay=False), help="JSON {layer of A: layer of B}.")
@click.option("--batch-size", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="State agreement below which a layer is flagged.")  # fmt: skip
@click.option("--min-state-agreement", type=click.FloatRange(0, 1), help="Gate: exit 1 below.")
@click.option("--min-top1-agreement", type=click.FloatRange(0, 1), help="Gate: exit 1 below.")
@click.option("--max-js", type=click.FloatRange(0, 1), help="Gate: exit 1 above.")
@click.option("--max-output-diff", type=click.FloatRange(min=0), help="Gate: exit 1 above.")
@session
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def compare_command(
    model_a,
    model_b,
    data,
    data_b,
    labels,
    attach_to,
    attach_to_b,
    method,
    mapping,
    batch_size,
    threshold,
    min_state_agreement,
    min_top1_agreement,
    max_js,
    max_output_diff,
    providers,
    threads,
    optimization,
    as_json,
) -> None:
    """Run MODEL_A and MODEL_B on the same batches and compare their states layer by layer.

    Exit code 1 when a gate (--min-*/--max-*) is violated, 2 on bad input.
    """
    result = compare(
        model_a, model_b, data, labels=labels, attach_to=list(attach_to) or None,
        attach_to_b=list(attach_to_b) or None, method=method,
        mapping=load_mapping(mapping) if mapping else None, batch_size=batch_size,
        data_b=data_b, threshold=threshold, providers=list(providers) or None,
        threads=threads, optimization=optimization,
    )  # fmt: skip
    broken = result.violations(min_state_agreement, min_top1_agreement, max_js, max_output_diff)
    print_gated(result, broken, as_json)
