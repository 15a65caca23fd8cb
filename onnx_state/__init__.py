"""onnx_state: state-space analysis of neural networks through ONNX.

Pipeline: graph (select and expose layer outputs) -> runtime (onnxruntime batches)
-> counter (firing states) -> metrics -> results/store -> analysis -> cli.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnx-state")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

from onnx_state.counter import StateCounter
from onnx_state.errors import OnnxStateError
from onnx_state.metrics import (
    aIQ,
    bootstrap_entropy,
    chao_shen_entropy,
    efficiency,
    entropy,
    miller_madow_entropy,
    network_efficiency,
)

__all__ = [
    "OnnxStateError",
    "StateCounter",
    "__version__",
    "aIQ",
    "bootstrap_entropy",
    "chao_shen_entropy",
    "efficiency",
    "entropy",
    "miller_madow_entropy",
    "network_efficiency",
]
