"""Options shared by several commands and their conversions (click callbacks), defined once."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnx_state.capture import METHODS, OPTIMIZATION_LEVELS
from onnx_state.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


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


def _axes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    return parse_axes(values)


def list_or_none(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """A repeated option as a list, or None when never given (the library's default)."""
    return list(values) or None


def _list(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    return list(values)


def selection(f: F) -> F:
    """--attach-to, --exclude, --method, --neuron-axis."""
    f = click.option(
        "--neuron-axis",
        "neuron_axes",
        multiple=True,
        metavar="LAYER=AXIS",
        callback=_axes,
        help="Override the inferred neuron axis of a layer.",
    )(f)
    f = method_option(f)
    f = click.option(
        "--exclude",
        multiple=True,
        metavar="NAME",
        callback=_list,
        help="Layer or tensor name to skip even if its type matches (repeatable).",
    )(f)
    f = click.option(
        "--attach-to",
        multiple=True,
        metavar="TYPE|NAME",
        callback=list_or_none,
        help="ONNX op type, framework layer type, or layer/tensor name (repeatable)."
        " Default: Conv, ConvTranspose, Gemm, MatMul and their integer/QLinear forms.",
    )(f)
    return f


def reading(f: F) -> F:
    """--literal, --quantized: which tensor is read for a layer (same states, or int8)."""
    f = click.option(
        "--quantized",
        is_flag=True,
        help="QDQ models: read a tensor that only a QuantizeLinear consumes as that int8 "
        "tensor (fires iff > its zero point): the deployed arithmetic, QLinear kernels kept.",
    )(f)
    f = click.option(
        "--literal",
        is_flag=True,
        help="Read each layer's tensor itself, not the Relu-like activation output that has "
        "the same states (the default keeps onnxruntime's Conv+Relu fusion).",
    )(f)
    return f


def method_option(f: F) -> F:
    """--method after|before|both."""
    return click.option(
        "--method",
        type=click.Choice(METHODS),
        default="after",
        show_default=True,
        help="Capture layer outputs, inputs, or both.",
    )(f)


def session(f: F) -> F:
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
        callback=list_or_none,
        help="onnxruntime execution provider, e.g. CUDAExecutionProvider.",
    )(f)
    return f


def cluster(f: F) -> F:
    """--workers N, --scheduler ADDRESS: run on Dask, as the library's ``cluster=``."""

    @functools.wraps(f)
    def run(*args: Any, workers: int | None, scheduler: str | None, **kwargs: Any) -> Any:
        if workers is not None and scheduler is not None:
            raise InputError(
                "give --workers N (worker processes started for this run) or --scheduler "
                "ADDRESS (an existing Dask cluster), not both"
            )
        return f(*args, cluster=scheduler if scheduler is not None else workers, **kwargs)

    run = click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Run on the Dask cluster whose scheduler is at ADDRESS (tcp://HOST:PORT); needs "
        "the [dask] extra.",
    )(run)
    run = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Run on N local Dask worker processes (one thread each); needs the [dask] extra.",
    )(run)
    return run  # type: ignore[return-value]


def parse_data(values: tuple[str, ...], option: str = "--data") -> Any:
    """``--data PATH[:KEY]`` once, or ``--data NAME=PATH[:KEY]`` per model input.

    Returns None, a path, or {input name: path}.
    """
    if not values:
        return None
    named = [_named(v) for v in values]
    if len(values) == 1 and named[0] is None:
        return values[0]
    if any(n is None for n in named):
        raise InputError(
            f"give {option} once as PATH[:KEY], or once per model input as NAME=PATH[:KEY]; "
            f"got {' '.join(values)}"
        )
    out: dict[str, str] = {}
    for name, path in (n for n in named if n is not None):
        if name in out:
            raise InputError(f"{option} names input {name!r} twice")
        out[name] = path
    return out


def _named(text: str) -> tuple[str, str] | None:
    """(NAME, VALUE) for ``NAME=VALUE`` (NAME free of path separators), else None."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value or "/" in name or os.sep in name or Path(text).exists():
        return None
    return name, value


def parse_constants(values: tuple[str, ...]) -> dict[str, Any] | None:
    """``NAME=PATH[:KEY]`` or ``NAME=NUMBER`` pairs into {input name: path or number}."""
    out: dict[str, Any] = {}
    for item in values:
        pair = _named(item)
        if pair is None:
            raise InputError(f"--const {item!r} is not NAME=PATH[:KEY] or NAME=NUMBER")
        name, value = pair
        if name in out:
            raise InputError(f"--const names input {name!r} twice")
        out[name] = _number(value)
    return out or None


def _number(text: str) -> Any:
    """A bool, int or float when *text* spells one (and is not a file), else *text* itself."""
    if Path(text).exists():
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def data_option(
    name: str = "--data", required: bool = False, help: str = "Input data."
) -> Callable[[F], F]:
    """--data PATH[:KEY] (one array, or an .npz / zarr group with one array per input), or
    --data NAME=PATH[:KEY] repeated, one per model input."""

    def convert(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        return parse_data(values, name)

    return click.option(
        name,
        multiple=True,
        required=required,
        metavar="PATH[:KEY]|NAME=PATH[:KEY]",
        callback=convert,
        help=help + " Repeat as NAME=PATH[:KEY] for several inputs.",
    )


def feeding(output_axis: bool = True) -> Callable[[F], F]:
    """--batch-size, --const (repeatable) and, with *output_axis*, --output-batch-axis."""

    def constants(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        return parse_constants(values)

    def decorate(f: F) -> F:
        if output_axis:
            f = click.option(
                "--output-batch-axis",
                type=int,
                default=None,
                help="Axis of the model's outputs that holds the samples (default: from the "
                "graph).",
            )(f)
        f = click.option(
            "--const",
            "constants",
            multiple=True,
            metavar="NAME=PATH[:KEY]|NAME=NUMBER",
            callback=constants,
            help="An input fed whole with every batch (a state, a scalar); repeatable.",
        )(f)
        return click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help="Samples per run (default: the model's fixed batch size, else 200).",
        )(f)

    return decorate


def report_option(f: F) -> F:
    """--report FILE.html (replaced only with the command's --overwrite, where it has one)."""
    return click.option(
        "--report",
        type=click.Path(dir_okay=False),
        help="Also write a self-contained HTML report of the result here.",
    )(f)


def write_report(path: str | None, overwrite: bool = False, **results: Any) -> None:
    """Write the HTML report of *results* (``report.save_report`` keywords) to *path*."""
    if path:
        from onnx_state.report import save_report

        save_report(path, overwrite=overwrite, **results)
        click.echo(f"report: {path}", err=True)


def json_option(f: F) -> F:
    """--json."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def echo_json(data: Any) -> None:
    """Print *data* as indented JSON with sorted keys."""
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
