"""Expose captured tensors as extra graph outputs: ModelProto in, a new ModelProto out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from onnx import ModelProto, helper

from onnx_state.capture.select import Capture

__all__ = ["add_outputs", "expose_nested"]


def expose_nested(
    model: ModelProto, captures: Sequence[Capture]
) -> tuple[ModelProto, list[Capture]]:
    """Thread the captures inside If/Loop/Scan bodies out to the main graph.

    Returns *model* itself when no capture is nested, else a copy whose main graph outputs
    each nested tensor (see ``capture.control.expose``), with those captures now reading
    that output: a Loop or Scan adds one leading iteration axis per level, so their neuron
    axis moves right as much.
    """
    nested = [c for c in captures if c.path]
    if not nested:
        return model, list(captures)
    from onnx_state.capture.control import NestedTensor, expose

    out, exposed = expose(model, [NestedTensor(c.path, c.read) for c in nested])
    result = []
    for c in captures:
        if not c.path:
            result.append(c)
            continue
        e = exposed[NestedTensor(c.path, c.read)]
        result.append(
            replace(
                c,
                source=e.output,
                axis=c.axis + e.stacked,
                rank=None if c.rank is None else c.rank + e.stacked,
                elem_type=e.elem_type,
                shape=e.shape,
                merge_axis=None if c.merge_axis is None else c.merge_axis + e.stacked,
                stacked=e.stacked,
            )
        )
    return out, result


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
