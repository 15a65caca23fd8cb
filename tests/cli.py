"""Invoking the command line in-process, as every CLI test does."""

from __future__ import annotations

from click.testing import CliRunner, Result

from onnx_state.cli import main


def run_cli(*args: object) -> Result:
    """``onnx-state ARGS...`` through click's CliRunner (stdout and stderr in ``output``)."""
    return CliRunner().invoke(main, [str(a) for a in args])
