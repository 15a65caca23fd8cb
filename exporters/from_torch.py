"""PyTorch module -> ONNX via torch.onnx (dynamo exporter), with module names and classes.

The dynamo exporter records, per node, ``pkg.torch.onnx.name_scopes`` (module paths from the
root, then the op) and ``pkg.torch.onnx.class_hierarchy`` (their classes). The deepest module
is the layer: its path (``conv_1``, ``features.0``) and class (``Conv2d``) become the
``onnx_state.layer_name`` / ``onnx_state.layer_type`` metadata the rewriter reads.
"""

from __future__ import annotations

import ast
import logging
import os
import warnings
from typing import Any

import onnx

from onnx_state.capture.metadata import META_LAYER_NAME, META_LAYER_TYPE, META_NEURON_AXIS
from onnx_state.errors import MissingExtraError

__all__ = ["annotate", "export", "module_axis"]

# Module classes whose neuron axis is known from the class alone. Element-wise modules
# (ReLU, Dropout, ...) get none: the rewriter follows the data to their producer instead,
# so a ReLU after a Linear on (N, T, E) keeps E as its neurons.
_LAST_AXIS_CLASSES = {"Linear", "Bilinear", "LazyLinear", "Embedding", "LayerNorm", "RMSNorm"}
_CHANNEL_PREFIXES = ("Conv", "LazyConv", "BatchNorm", "LazyBatchNorm", "InstanceNorm",
                     "MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "LPPool",
                     "GroupNorm", "LocalResponseNorm")  # fmt: skip


def module_axis(cls: str) -> int | None:
    """Neuron axis of a torch module class's output, or None when the class does not say."""
    if cls in _LAST_AXIS_CLASSES:
        return -1
    if cls.startswith(_CHANNEL_PREFIXES):
        return 1
    return None


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(
            "PyTorch is not installed; install it with: pip install 'onnx-state[torch]'"
        ) from exc
    return torch


def _parse_list(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def annotate(model: onnx.ModelProto) -> onnx.ModelProto:
    """Write onnx_state layer metadata from the dynamo exporter's scope metadata (in place)."""
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = _parse_list(meta.get("pkg.torch.onnx.name_scopes", ""))
        classes = _parse_list(meta.get("pkg.torch.onnx.class_hierarchy", ""))
        # scopes = ['', 'block', 'block.seq.0', 'conv2d']: the last entry is the op itself.
        if len(scopes) < 3 or len(classes) != len(scopes):
            continue  # an op called in the root module's forward: no layer of its own
        path, cls = scopes[-2], classes[-2].rsplit(".", 1)[-1]
        axis = module_axis(cls)
        items = [(META_LAYER_NAME, path), (META_LAYER_TYPE, cls)]
        if axis is not None:
            items.append((META_NEURON_AXIS, str(axis)))
        for key, value in items:
            entry = next((p for p in node.metadata_props if p.key == key), None)
            if entry is None:
                entry = node.metadata_props.add()
                entry.key = key
            entry.value = value
    return model


def export(
    module: Any,
    sample_input: Any,
    path: str | os.PathLike[str] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
) -> onnx.ModelProto:
    """Export *module* (put in eval mode) to ONNX with layer metadata; save to *path* if given.

    BatchNorm stays a node of its own (no folding into Conv), so layer boundaries survive.
    """
    torch = _import_torch()
    module = module.eval()
    args = sample_input if isinstance(sample_input, tuple) else (sample_input,)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} for _ in args)
    # torch.onnx logs its progress and deprecations; the export's own errors say what failed.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                optimize=True, do_constant_folding=False, verbose=False,
            )  # fmt: skip
    finally:
        logger.setLevel(level)
    model = annotate(program.model_proto)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
