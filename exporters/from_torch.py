"""PyTorch module -> ONNX via torch.onnx (dynamo exporter), with module names and classes.

The dynamo exporter records, per node, ``pkg.torch.onnx.name_scopes`` (module paths from the
root, then the op) and ``pkg.torch.onnx.class_hierarchy`` (their classes). The deepest module
is the layer: its path (``conv_1``, ``features.0``) and class (``Conv2d``) become the
``onnx_state.layer_name`` / ``onnx_state.layer_type`` metadata the rewriter reads.

torch.onnx's own ``optimize=True`` runs onnxscript's default rewrite rules, and some of them
merge nodes of different modules: BatchNorm folded into the Conv before it (the fused node
keeps the BatchNorm's scope, so the Conv2d layer vanishes and the BatchNorm2d layer outputs
what was never the BatchNorm's input), Pad into Conv, Relu/Clip chains into one node. A layer
must output what its module outputs, so ``optimize`` here runs the same pipeline — constant
folding, the other rewrite rules, the clean-up passes — without those fusions. onnxruntime
still folds BatchNorm into any Conv whose output is not captured.
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

__all__ = ["annotate", "export", "module_axis", "optimize"]

# Module classes whose neuron axis is known from the class alone. Element-wise modules
# (ReLU, Dropout, ...) get none: the rewriter follows the data to their producer instead,
# so a ReLU after a Linear on (N, T, E) keeps E as its neurons. Recurrent modules give
# (N, T, D*H) or (T, N, D*H) outputs and (D*layers, N, H) states: hidden units last in all.
_LAST_AXIS_CLASSES = {"Linear", "Bilinear", "LazyLinear", "Embedding", "LayerNorm", "RMSNorm",
                      "LSTM", "GRU", "RNN"}  # fmt: skip
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


def _layer_preserving_rules() -> list[Any]:
    """onnxscript's default rewrite rules (``onnxscript.rewriter._DEFAULT_REWRITE_RULES``,
    0.7) less those that merge nodes across module boundaries, named by their public names."""
    from onnxscript.rewriter.rules import common as r

    return [
        *r.mul_by_1_rule.commute(), *r.add_0_rule.commute(), r.sub_0_rule, r.div_by_1_rule,
        r.dropout_zero_rule, r.dropout_inference_rule,
        r.two_reshapes_matmul_reshape_rule, r.one_reshape_matmul_reshape_rule,
        r.cast_constant_of_shape_rule, r.cast_constant_of_shape_without_value_rule,
        r.collapse_slice_rule, r.collapse_slice2_rule,
        r.materialize_reshape_shape_rule,
        r.min_min_rule, r.max_max_rule, r.min_max_rule, r.max_min_rule,
        r.cast_cast_rule, r.no_op_cast_rule, r.no_op_expand_rule, r.flatten_to_reshape_rule,
        r.reshape_reshape_rule, r.slice_split_rule, r.no_op_transpose_rule,
        r.transpose_transpose_rule, r.unsqueeze_unsqueeze_rule, r.squeeze_reshape_1d_rule,
        r.no_op_dynamic_scatter_nd_rule, r.no_op_static_scatter_nd_rule,
        r.normalize_pad_format_conv_rule, r.normalize_pad_format_conv_integer_rule,
        r.remove_optional_bias_from_conv_rule, r.remove_optional_bias_from_conv_transpose_rule,
        r.remove_optional_bias_from_qlinear_conv_rule, r.remove_optional_bias_from_gemm_rule,
    ]  # fmt: skip
    # Left out: fuse_batchnorm_into_{conv,conv_transpose,gemm}, fuse_pad_into_conv(_integer),
    # successive_{relu,clip,relu_clip,clip_relu}.


def optimize(model: Any, iterations: int = 2) -> bool:
    """Optimize an ``onnx_ir.Model`` in place like onnxscript's ``optimize_ir``, keeping
    every module's nodes apart (no BatchNorm, Pad or Relu/Clip fusion across modules).

    Returns False, leaving *model* unoptimized (which is correct, only larger), when this
    onnxscript lacks the public rule names (``onnxscript.rewriter.rules.common``, 0.7 has
    them).
    """
    try:
        import onnx_ir.passes.common as passes
        from onnxscript.optimizer import fold_constants
        from onnxscript.rewriter import RewritePass

        rules = _layer_preserving_rules()
    except (ImportError, AttributeError):
        return False
    if model.functions:
        passes.InlinePass()(model)
    rewrite = RewritePass(rules)
    unused_functions = passes.RemoveUnusedFunctionsPass()  # type: ignore[no-untyped-call, unused-ignore]
    tidy = [passes.RemoveUnusedNodesPass(), unused_functions, passes.RemoveUnusedOpsetsPass()]
    for _ in range(iterations):
        changed = fold_constants(model, onnx_shape_inference=True).modified
        changed = rewrite(model).modified or changed
        for step in tidy:
            step(model)
        if not changed:
            break
    for step in (
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.OutputFixPass(),
        passes.NameFixPass(),
    ):
        step(model)
    return True


def export(
    module: Any,
    sample_input: Any,
    path: str | os.PathLike[str] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
) -> onnx.ModelProto:
    """Export *module* (put in eval mode) to ONNX with layer metadata; save to *path* if given.

    BatchNorm stays a node of its own (no folding into Conv), so layer boundaries survive:
    the graph is optimized by ``optimize`` rather than by torch.onnx's ``optimize=True``.
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
                optimize=False, do_constant_folding=False, verbose=False,
            )  # fmt: skip
    finally:
        logger.setLevel(level)
    optimize(program.model)
    model = annotate(program.model_proto)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
