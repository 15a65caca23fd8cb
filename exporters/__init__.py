"""Framework exporters: PyTorch, Keras and TensorFlow (SavedModel, TFLite) models to ONNX
with onnx_state layer metadata.

This package imports no framework; each exporter imports its framework when called and
says which extra to install when it is missing.
"""

from onnx_state.capture.metadata import META_LAYER_NAME, META_LAYER_TYPE, META_NEURON_AXIS

__all__ = ["META_LAYER_NAME", "META_LAYER_TYPE", "META_NEURON_AXIS"]
