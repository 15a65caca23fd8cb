"""Options shared by several commands, defined once."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from onnx_state.errors import InputError
from onnx_state.runtime import OPTIMIZATION_LEVELS


def parse_axes(values: tuple[str, ...]) -> dict[str, int]:
    """``LAYER=AXIS`` pairs into a dict."""
    axes = {}
    for item in values:
        name, sep, axis = item.rpartition("=")
        if not sep or not name:
            raise InputError(f"--neuron-axis {item!r} is not LAYER=AXIS, e.g. conv_1=3")
        try:
            axes[name] = int(axis)
        except ValueError:
            raise InputError(f"--neuron-axis {item!r}: axis {axis!r} is not an integer") from None
    return axes


def selection(f):
    """--attach-to, --exclude, --method, --neuron-axis."""
    f = click.option(
        "--neuron-axis",
        "neuron_axes",
        multiple=True,
        metavar="LAYER=AXIS",
        help="Override the inferred neuron axis of a layer.",
    )(f)
    f = click.option(
        "--method",
        type=click.Choice(["after", "before", "both"]),
        default="after",
        show_default=True,
        help="Capture layer outputs, inputs, or both.",
    )(f)
    f = click.option(
        "--exclude",
        multiple=True,
        metavar="NAME",
        help="Layer or tensor name to skip even if its type matches (repeatable).",
    )(f)
    f = click.option(
        "--attach-to",
        multiple=True,
        metavar="TYPE|NAME",
        help="ONNX op type, framework layer type, or layer/tensor name (repeatable)."
        " Default: Conv, ConvTranspose, Gemm, MatMul.",
    )(f)
    return f


def session(f):
    """--provider, --threads, --optimization."""
    f = click.option(
        "--optimization",
        type=click.Choice(OPTIMIZATION_LEVELS),
        default="all",
        show_default=True,
        help="onnxruntime graph optimization level.",
    )(f)
    f = click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="onnxruntime intra-op threads (default: all cores).",
    )(f)
    f = click.option(
        "--provider",
        "providers",
        multiple=True,
        metavar="NAME",
        help="onnxruntime execution provider, e.g. CUDAExecutionProvider.",
    )(f)
    return f


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_gated(result: Any, broken: list[str], as_json: bool) -> None:
    """Print a gated result (table or JSON with its violations); exit 1 if a rule broke.

    Violations go to stderr, one line each, so a CI log shows them under the table.
    """
    if as_json:
        echo_json({**result.to_dict(), "violations": broken})
    else:
        click.echo(result.table())
        if broken:
            click.echo(f"{len(broken)} rule(s) violated:", err=True)
            for line in broken:
                click.echo(f"  {line}", err=True)
    if broken:
        sys.exit(1)
