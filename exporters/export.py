"""Export a saved model to ONNX with layer metadata: TensorFlow, Keras or a PyTorch module.

The ``onnx-state export`` command calls ``export_model``; frameworks are imported only here,
inside the functions, and a missing one names the extra to install.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporters.from_tf import export_saved_model, export_tflite, is_tflite
from onnx_state.errors import InputError, MissingExtraError, first_line
from onnx_state.outputs import check_output

__all__ = ["export_model", "load_torch_module", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,28,28`` (or ``1x28x28``) into a tuple of positive sizes."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise InputError(f"--input-shape {text!r} is not a list of integers like 1,28,28") from None
    if not shape or min(shape) < 1:
        raise InputError(f"--input-shape {text!r} needs positive sizes (without the batch axis)")
    return shape


def load_torch_module(spec: str, weights: str | os.PathLike[str] | None = None) -> Any:
    """Import ``package.module:ClassOrFactory``, call it, load a weights-only state dict.

    Parameters
    ----------
    spec:
        ``package.module:ClassOrFactory``; it is called with no arguments.
    weights:
        A state-dict file, loaded with ``torch.load(weights_only=True)`` (never unpickled).
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("install onnx-state[torch] to export PyTorch models") from exc
    modname, _, attr = spec.partition(":")
    if not modname or not attr:
        raise InputError(f"{spec!r} is not package.module:ClassOrFactory")
    # Like `python -m`, look in the current folder too (a console script does not).
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(modname), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot import {spec!r}: {exc}") from None
    except Exception as exc:  # whatever the user's module raises on import
        raise InputError(f"importing {modname} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    try:
        module = factory()
    except Exception as exc:  # whatever the user's constructor raises
        raise InputError(f"{spec}() failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"{spec}() returned a {type(module).__name__}, not a torch.nn.Module; give a module "
            "class or a function that builds one"
        )
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
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    input_shape: str | Sequence[int] | None = None,
    opset: int = 18,
    signature: str = "serving_default",
    overwrite: bool = False,
) -> None:
    """Export a SavedModel, a TFLite or Keras file, or a torch module spec to *output*.

    Parameters
    ----------
    source:
        A TensorFlow SavedModel directory (or its ``saved_model.pb``), a ``.tflite`` file
        (any file holding a TFLite flatbuffer), a ``.keras`` file (loaded with
        ``safe_mode``) or ``package.module:ClassOrFactory``.
    output:
        The .onnx file to write; it appears only once the export has succeeded.
    weights:
        PyTorch only: a state-dict file.
    input_shape:
        PyTorch only: the shape of one sample without the batch axis (``1,28,28``).
    opset:
        ONNX opset; TensorFlow and Keras exports (tf2onnx) support up to 18, and a higher one
        is refused.
    signature:
        SavedModel only: the signature to export.
    overwrite:
        Replace an existing *output* file (see ``onnx_state.outputs.check_output``).
    """
    target = check_output(output, overwrite=overwrite, kind="file")
    tmp = target.with_name(f".{target.name}.partial")
    path = Path(source)
    if path.name == "saved_model.pb" and path.is_file():
        path = path.parent
    try:
        if path.is_dir():
            export_saved_model(path, tmp, opset=opset, signature=signature)
        elif source.endswith(".tflite") or (not source.endswith(".keras") and is_tflite(path)):
            export_tflite(path, tmp, opset=opset)
        elif source.endswith(".keras"):
            from exporters.from_keras import export as export_keras

            if not Path(source).is_file():
                raise InputError(f"Keras file {source!r} does not exist")
            try:
                import keras
            except ImportError as exc:
                raise MissingExtraError(
                    "install onnx-state[tensorflow] to export Keras models"
                ) from exc
            try:
                model = keras.saving.load_model(source, safe_mode=True)
            except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
                raise InputError(
                    f"cannot load {source} as a Keras model: {first_line(exc)}"
                ) from None
            export_keras(model, tmp, opset=opset)
        elif ":" not in source:  # not package.module:ClassOrFactory, so meant as a path
            what = "is not a SavedModel directory, nor a .tflite or .keras file"
            if not path.exists():
                what = "does not exist"
            raise InputError(
                f"{source!r} {what} (SOURCE: a SavedModel directory, a .tflite or .keras file, "
                "or package.module:ClassOrFactory)"
            )
        else:
            if input_shape is None:
                raise InputError("a PyTorch module needs --input-shape (without the batch axis)")
            shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
            module = load_torch_module(source, weights)
            import torch

            from exporters.from_torch import export as export_torch

            export_torch(module, torch.zeros((2, *shape)), tmp, opset=opset)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
