"""The installed version of onnx-state, in one place (results record it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnx-state")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
