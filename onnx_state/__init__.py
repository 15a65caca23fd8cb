"""onnx_state: state-space analysis of neural networks through ONNX.

Pipeline: capture (select and expose layer outputs, run onnxruntime in batches) -> count
(firing states) -> metrics -> results/store -> analyze, compare, audit, separation -> cli.
"""

from onnx_state._version import __version__
from onnx_state.analysis import analyze
from onnx_state.capture import instrument
from onnx_state.compat import build_efficiency_model, network_efficiency, reset_efficiency_model
from onnx_state.count import StateCounter, count_states
from onnx_state.errors import OnnxStateError
from onnx_state.metrics import (
    aIQ,
    bootstrap_entropy,
    chao_shen_entropy,
    efficiency,
    entropy,
    miller_madow_entropy,
)
from onnx_state.report import build_report, save_report
from onnx_state.results import Analysis, LayerResult, RunRecord

__all__ = [
    "Analysis",
    "LayerResult",
    "OnnxStateError",
    "RunRecord",
    "StateCounter",
    "__version__",
    "aIQ",
    "analyze",
    "bootstrap_entropy",
    "build_efficiency_model",
    "build_report",
    "chao_shen_entropy",
    "count_states",
    "efficiency",
    "entropy",
    "instrument",
    "miller_madow_entropy",
    "network_efficiency",
    "reset_efficiency_model",
    "save_report",
]
