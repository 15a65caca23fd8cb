"""``onnx-state report [STORE] -o report.html``: one self-contained HTML report."""

from __future__ import annotations

import click

from onnx_state.errors import InputError


@click.command("report")
@click.argument("store", required=False, type=click.Path(file_okay=False))
@click.option("--compare", "compare_json", type=click.Path(dir_okay=False),
              help="A comparison's JSON (compare --json).")  # fmt: skip
@click.option("--audit", "audit_json", type=click.Path(dir_okay=False),
              help="An audit's JSON (audit --json).")  # fmt: skip
@click.option("--separation", "separation_json", type=click.Path(dir_okay=False),
              help="A separation result (separation -o, or --json).")  # fmt: skip
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--n-boot", type=click.IntRange(min=1), default=200, show_default=True,
              help="Bootstrap resamples per layer for the entropy interval.")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def report_command(
    store: str | None,
    compare_json: str | None,
    audit_json: str | None,
    separation_json: str | None,
    output: str,
    overwrite: bool,
    n_boot: int,
    quiet: bool,
) -> None:
    """Write one HTML file (offline, plots inline) from a results STORE and/or the JSON of
    compare, audit and separation results."""
    from onnx_state.report import check_report_path, load_result, save_report
    from onnx_state.results import Analysis

    if not (store or compare_json or audit_json or separation_json):
        raise InputError("give a results STORE, or --compare, --audit or --separation JSON")
    check_report_path(output, overwrite)
    save_report(
        output,
        Analysis.load(store) if store else None,
        comparison=load_result(compare_json, "compare") if compare_json else None,
        audit=load_result(audit_json, "audit") if audit_json else None,
        separation=load_result(separation_json, "separation") if separation_json else None,
        n_boot=n_boot,
        progress=False if quiet else None,
        overwrite=overwrite,
    )
    click.echo(f"wrote {output}")
