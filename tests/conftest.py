"""Fixtures shared by several test modules."""

from __future__ import annotations

import numpy as np
import pytest

from examples.lenet import bundled_digits, keras_lenet5, torch_lenet5, train_torch
from onnx_state.capture import load_array
from onnx_state.data import example_paths
from tests.lenet import copy_torch_to_keras
from tests.models import conv_net, conv_net_reference, int_data


@pytest.fixture(scope="session")
def bundled():
    """(model path, digits x, labels y) of the bundled example."""
    model, data, labels = example_paths()
    return model, np.asarray(load_array(data)), np.asarray(load_array(labels))


@pytest.fixture(scope="module")
def net():
    """(model, params, x, reference activations) of the small conv net on 53 samples."""
    model, params = conv_net()
    x = int_data(53)
    return model, params, x, conv_net_reference(x, params)


# -- PyTorch and Keras (skipped when an extra is missing; CI installs both) -------------------
@pytest.fixture(scope="session")
def digits():
    x, y = bundled_digits()
    return x[:600], y[:600]


@pytest.fixture(scope="session")
def torch_net(digits):
    """The tutorial's LeNet-5 in PyTorch, trained briefly on the first 500 digits."""
    pytest.importorskip("torch")
    x, y = digits
    net = torch_lenet5()
    train_torch(net, x[:500], y[:500], epochs=2)
    return net


@pytest.fixture(scope="session")
def keras_pair(torch_net):
    """(the Keras LeNet-5 with the torch net's weights, its ONNX export)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from exporters.from_keras import export

    model = keras_lenet5()
    copy_torch_to_keras(torch_net, model)
    return model, export(model)
