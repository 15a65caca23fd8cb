"""``onnx-state export``: a Keras .keras file or a PyTorch module + state dict -> ONNX."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

from onnx_state.errors import InputError, MissingExtraError, first_line


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise InputError(f"--input-shape {text!r} is not a list of integers like 1,28,28") from None
    if not shape or min(shape) < 1:
        raise InputError(f"--input-shape {text!r} needs positive sizes (without the batch axis)")
    return shape


def load_torch_module(spec: str, weights: str | None):
    """Import ``package.module:ClassOrFactory``, call it, load a weights-only state dict."""
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("install onnx-state[torch] to export PyTorch models") from exc
    modname, _, attr = spec.partition(":")
    if not modname or not attr:
        raise InputError(f"{spec!r} is not package.module:ClassOrFactory")
    try:
        factory = getattr(importlib.import_module(modname), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import {spec!r}: {exc}") from None
    try:
        module = factory()
    except Exception as exc:  # whatever the user's constructor raises
        raise InputError(f"{spec}() failed: {type(exc).__name__}: {first_line(exc)}") from None
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(f"state-dict file {weights!r} does not exist")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling refusal or a corrupt file
            raise InputError(f"cannot load {weights} as plain weights: {first_line(exc)}") from None
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as exc:
            raise InputError(f"{weights} does not fit {spec}: {first_line(exc)}") from None
    return module


def export_model(
    source: str,
    output: str,
    weights: str | None = None,
    input_shape: str | None = None,
    opset: int = 18,
) -> None:
    """Export a .keras file, or a torch module spec (with weights and input shape), to *output*."""
    target = Path(output)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        if source.endswith(".keras"):
            from exporters.from_keras import export

            try:
                import keras
            except ImportError as exc:
                raise MissingExtraError(
                    "install onnx-state[tensorflow] to export Keras models"
                ) from exc
            if not Path(source).is_file():
                raise InputError(f"Keras file {source!r} does not exist")
            try:
                model = keras.saving.load_model(source, safe_mode=True)
            except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
                raise InputError(
                    f"cannot load {source} as a Keras model: {first_line(exc)}"
                ) from None
            export(model, tmp, opset=min(opset, 18))
        else:
            if input_shape is None:
                raise InputError("a PyTorch module needs --input-shape (without the batch axis)")
            shape = _parse_shape(input_shape)
            module = load_torch_module(source, weights)
            import torch

            from exporters.from_torch import export

            export(module, torch.zeros((2, *shape)), tmp, opset=opset)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@click.command("export")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="PyTorch state-dict file.")
@click.option("--input-shape", metavar="C,H,W", help="PyTorch sample shape without batch.")
@click.option("--opset", type=int, default=18, show_default=True)
def export_command(source, output, weights, input_shape, opset) -> None:
    """Export SOURCE (model.keras, or package.module:ClassOrFactory) to OUTPUT.onnx."""
    export_model(source, output, weights, input_shape, opset)
    click.echo(f"wrote {output}")
