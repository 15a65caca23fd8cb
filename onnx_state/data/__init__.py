"""The bundled example: a LeNet-5 trained on scikit-learn's digits, and those digits.

``digits28.npz`` holds ``x`` (1797 x 1 x 28 x 28 float32: the 8x8 digits scaled to [0, 1],
upsampled 3x, padded to 28x28), ``y`` (labels) and ``n_train`` (the first 80 % trained the
model). The digits come from scikit-learn (BSD-3-Clause), which ships the test set of the
UCI "Optical Recognition of Handwritten Digits" data (CC BY 4.0). Rebuilt by
``python -m examples.make_bundled_model``.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["example_paths"]


def example_paths() -> tuple[str, str, str]:
    """(model path, data path:key, labels path:key) of the bundled example."""
    root = files(__name__)
    npz = str(root / "digits28.npz")
    return str(root / "lenet5_digits.onnx"), f"{npz}:x", f"{npz}:y"
