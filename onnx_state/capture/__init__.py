"""The model side: load, index, select layers and neuron axes, rewrite, run in batches.

One job per module, imports flowing down this list: ``load`` (external-data safety),
``metadata`` (exporter keys), ``index`` (one GraphIndex per model), ``layers``, ``axes``,
``select``, ``rewrite``, ``data`` (inputs and batches), ``fingerprint`` (of the data)
and ``session`` (onnxruntime, the instrumented model and the one run loop).
"""

from onnx_state.capture.axes import neuron_axis
from onnx_state.capture.data import (
    DEFAULT_BATCH_SIZE,
    InputSpec,
    Rows,
    as_inputs,
    batch_count,
    batch_samples,
    check_batch,
    check_constants,
    check_inputs,
    data_length,
    data_specs,
    input_specs,
    iter_batches,
    load_array,
    load_data,
    open_data,
    resolve_batch_size,
)
from onnx_state.capture.fingerprint import Fingerprint
from onnx_state.capture.index import GraphIndex
from onnx_state.capture.layers import Layer, list_layers
from onnx_state.capture.load import LARGE_MODEL_BYTES, check_external_data, load_model, model_sha256
from onnx_state.capture.metadata import (
    META_INPUT_AXES,
    META_LAYER_NAME,
    META_LAYER_TYPE,
    META_NEURON_AXIS,
)
from onnx_state.capture.rewrite import add_outputs
from onnx_state.capture.select import (
    DEFAULT_ATTACH_TO,
    METHODS,
    Capture,
    Method,
    Side,
    capture_name,
    sanitize_name,
    select_captures,
)
from onnx_state.capture.session import (
    OPTIMIZATION_LEVELS,
    BatchRun,
    Instrumented,
    Optimization,
    instrument,
    make_session,
)

__all__ = [
    "DEFAULT_ATTACH_TO",
    "DEFAULT_BATCH_SIZE",
    "LARGE_MODEL_BYTES",
    "META_INPUT_AXES",
    "META_LAYER_NAME",
    "META_LAYER_TYPE",
    "META_NEURON_AXIS",
    "METHODS",
    "OPTIMIZATION_LEVELS",
    "BatchRun",
    "Capture",
    "Fingerprint",
    "GraphIndex",
    "InputSpec",
    "Instrumented",
    "Layer",
    "Method",
    "Optimization",
    "Rows",
    "Side",
    "add_outputs",
    "as_inputs",
    "batch_count",
    "batch_samples",
    "capture_name",
    "check_batch",
    "check_constants",
    "check_external_data",
    "check_inputs",
    "data_length",
    "data_specs",
    "input_specs",
    "instrument",
    "iter_batches",
    "list_layers",
    "load_array",
    "load_data",
    "load_model",
    "make_session",
    "model_sha256",
    "neuron_axis",
    "open_data",
    "resolve_batch_size",
    "sanitize_name",
    "select_captures",
]
