"""Expose captured tensors as extra graph outputs: ModelProto in, a new ModelProto out."""

from __future__ import annotations

from collections.abc import Sequence

from onnx import ModelProto, helper

from onnx_state.capture.select import Capture

__all__ = ["add_outputs"]


def add_outputs(model: ModelProto, captures: Sequence[Capture]) -> ModelProto:
    """Return a copy of *model* with the captured tensors as extra graph outputs.

    Original outputs stay first and unchanged; each tensor read (``Capture.read``) is
    added once.
    """
    out = ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for capture in captures:
        if capture.read in present:
            continue
        present.add(capture.read)
        out.graph.output.append(
            helper.make_tensor_value_info(capture.read, capture.elem_type, capture.shape)
        )
    return out
