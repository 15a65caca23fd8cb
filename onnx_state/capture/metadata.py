"""Metadata keys the exporters write and the capture stage reads (see README)."""

from __future__ import annotations

__all__ = ["META_INPUT_AXES", "META_LAYER_NAME", "META_LAYER_TYPE", "META_NEURON_AXIS"]

META_LAYER_NAME = "onnx_state.layer_name"  # node: framework layer name or module path
META_LAYER_TYPE = "onnx_state.layer_type"  # node: framework class (Conv2d, Dense)
META_NEURON_AXIS = "onnx_state.neuron_axis"  # node: neuron axis of its output (ONNX layout)
META_INPUT_AXES = "onnx_state.input_axes"  # model: JSON {input name: neuron axis}
