"""The ``onnx-state`` command: one thin module per subcommand over the Python API."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

from onnx_state._version import __version__
from onnx_state.errors import OnnxStateError, first_line


class _Group(click.Group):
    """The error boundary: every error a user can cause is one line on stderr and exit code
    2 — onnx_state's errors, OS errors, memory, and click's own usage errors (which would
    print three lines) — and warnings are one line each (``--debug``: full tracebacks)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        argv = kwargs.get("args", args[0] if args else None)
        debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _one_line_warning
            try:
                code = super().main(*args, **kwargs)
            except _NO_ARGS as exc:  # a bare group call: its help, as click prints it
                click.echo(str(getattr(exc, "format_message", exc.__str__)()))
                sys.exit(2)
            except click.exceptions.UsageError as exc:
                _fail(f"{exc.format_message()} (see --help)")
            except click.exceptions.Abort:
                click.echo("Aborted.", err=True)
                sys.exit(130)
            except click.exceptions.ClickException as exc:
                _fail(exc.format_message())
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OnnxStateError, OSError, MemoryError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            hint = ""
            if isinstance(exc, MemoryError):
                hint = " (out of memory: try a smaller --batch-size or fewer layers)"
            _fail(f"{first_line(exc) or 'out of memory'}{hint}")


# click >= 8.2 raises this for a bare ``onnx-state``; older versions print the help itself.
_NO_ARGS: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", RuntimeError)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print a warning as ``Warning: message`` (no source line)."""
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-state")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """State-space analysis of neural networks through ONNX."""
    ctx.obj = {"debug": debug}


from onnx_state.cli.analyze import analyze_command  # noqa: E402
from onnx_state.cli.audit import audit_command  # noqa: E402
from onnx_state.cli.compare import compare_command  # noqa: E402
from onnx_state.cli.export import export_command  # noqa: E402
from onnx_state.cli.inspect import inspect_command  # noqa: E402
from onnx_state.cli.report import report_command  # noqa: E402
from onnx_state.cli.separation import separation_command, separation_test_command  # noqa: E402

main.add_command(inspect_command)
main.add_command(analyze_command)
main.add_command(export_command)
main.add_command(compare_command)
main.add_command(audit_command)
main.add_command(separation_command)
main.add_command(separation_test_command)
main.add_command(report_command)
