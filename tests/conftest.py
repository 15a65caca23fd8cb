"""Fixtures shared by several test modules."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_state.capture import load_array
from onnx_state.data import example_paths


@pytest.fixture(scope="session")
def bundled():
    """(model path, digits x, labels y) of the bundled example."""
    model, data, labels = example_paths()
    return model, np.asarray(load_array(data)), np.asarray(load_array(labels))
