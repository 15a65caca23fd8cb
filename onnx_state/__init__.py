"""onnx_state: state-space analysis of neural networks through ONNX.

Pipeline: graph (select and expose layer outputs) -> runtime (onnxruntime batches)
-> counter (firing states) -> metrics -> results/store -> analysis -> cli.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnx-state")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

from onnx_state.analysis import analyze, instrument
from onnx_state.compat import build_efficiency_model, network_efficiency, reset_efficiency_model
from onnx_state.counter import StateCounter
from onnx_state.errors import OnnxStateError
from onnx_state.metrics import (
    aIQ,
    bootstrap_entropy,
    chao_shen_entropy,
    efficiency,
    entropy,
    miller_madow_entropy,
)
from onnx_state.results import Analysis, LayerResult

__all__ = [
    "Analysis",
    "LayerResult",
    "OnnxStateError",
    "StateCounter",
    "__version__",
    "aIQ",
    "analyze",
    "bootstrap_entropy",
    "build_efficiency_model",
    "chao_shen_entropy",
    "efficiency",
    "entropy",
    "instrument",
    "miller_madow_entropy",
    "network_efficiency",
    "reset_efficiency_model",
]
