"""labels: label forms, the class scores accuracy needs, label counts."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_state
from onnx_state.errors import InputError
from tests.models import make_model


def test_label_columns_are_indices_not_one_hot(bundled):
    model, x, y = bundled
    a = onnx_state.analyze(model, x[:300], attach_to="Linear", labels=y[:300])
    b = onnx_state.analyze(model, x[:300], attach_to="Linear", labels=y[:300, None])
    assert a.accuracy == b.accuracy > 0.9


def test_accuracy_needs_class_scores():
    model = make_model(
        [helper.make_node("ReduceSum", ["x"], ["y"], name="s", keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    with pytest.raises(InputError, match="class scores of shape"):
        onnx_state.analyze(
            model, np.ones((4, 3), np.float32), attach_to=["s"], labels=np.zeros(4, int)
        )


def test_label_count_mismatch(net):
    model, _, x, _ = net
    with pytest.raises(InputError, match="labels"):
        onnx_state.analyze(model, x, attach_to="Conv", labels=np.zeros(10, int))


def test_accuracy_reads_class_scores_whose_samples_are_not_axis_0():
    # The first output is (classes, N): the graph says its samples lie along axis 1.
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="r"),
            helper.make_node("Transpose", ["r"], ["y"], name="t", perm=[1, 0]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "N"])],
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    expected = np.mean(np.argmax(np.maximum(x, 0), axis=1) == y)
    a = onnx_state.analyze(model, x, attach_to=["r"], labels=y, batch_size=16)
    assert a.n_samples == 40 and a.accuracy == expected
    from onnx_state.compare import compare

    c = compare(model, model, x, attach_to=["r"], labels=y, batch_size=16)
    assert c.n_samples == 40 and c.accuracy_a == c.accuracy_b == expected
    with pytest.raises(InputError, match=r"class scores .* got \(3, 40\) for 40 samples"):
        onnx_state.analyze(model, x, attach_to=["r"], labels=y, output_batch_axis=0)


def test_the_label_count_is_checked_before_the_results(net):
    import warnings

    model, _, x, _ = net
    x = x.copy()
    x[0] = np.nan  # NaN activations would warn once the layers are summed up
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=f"got {len(x) + 1} labels for {len(x)} samples"):
            onnx_state.analyze(model, x, attach_to="Conv", labels=np.zeros(len(x) + 1, int))
