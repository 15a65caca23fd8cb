"""The ``onnx-state`` command: one thin module per subcommand over the Python API."""

from __future__ import annotations

import sys
from typing import Any

import click

from onnx_state._version import __version__
from onnx_state.errors import OnnxStateError, first_line


class _Group(click.Group):
    """Turn onnx_state's errors into one line on stderr and exit code 2 (``--debug``: trace)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OnnxStateError, OSError, MemoryError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            hint = ""
            if isinstance(exc, MemoryError):
                hint = " (out of memory: try a smaller --batch-size or fewer layers)"
            click.echo(f"Error: {first_line(exc) or 'out of memory'}{hint}", err=True)
            sys.exit(2)


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
from onnx_state.cli.separation import separation_command, separation_test_command  # noqa: E402

main.add_command(inspect_command)
main.add_command(analyze_command)
main.add_command(export_command)
main.add_command(compare_command)
main.add_command(audit_command)
main.add_command(separation_command)
main.add_command(separation_test_command)
