"""The TensorState-compatible API (``import onnx_state as ts``) on PyTorch and Keras models.

Skipped cleanly when an extra is missing; CI installs both.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx_state as ts
import onnx_state.errors
from tests.lenet import nhwc
from tests.reference import reference_counts

torch = pytest.importorskip("torch")


def test_compat_torch_hooks_with_the_users_own_loop(torch_net, digits):
    x = digits[0][:120]
    seen = {}
    handle = torch_net.conv_2.register_forward_hook(
        lambda m, a, out: seen.setdefault("conv_2", []).append(out.detach().numpy())
    )
    eff = ts.build_efficiency_model(
        torch_net, attach_to=["Conv2d"], exclude=["conv_3"], method="both"
    )
    try:
        with torch.no_grad():
            for start in range(0, len(x), 50):  # the tutorial's own evaluation loop
                torch_net(torch.from_numpy(x[start : start + 50]))
    finally:
        handle.remove()
        eff.remove_hooks()
    names = [la.name for la in eff.efficiency_layers]
    assert names == [
        "conv_1_pre_states", "conv_1_post_states", "conv_2_pre_states", "conv_2_post_states",
    ]  # fmt: skip
    layer = eff.efficiency_layers[3]
    ids, counts = reference_counts(np.concatenate(seen["conv_2"]), 1)
    assert layer.state_ids() == [r.tobytes() for r in ids]
    np.testing.assert_array_equal(layer.counts(), counts)
    assert layer.state_count == 120 * 8 * 8
    assert 0 < ts.network_efficiency(eff) <= 1
    ts.reset_efficiency_model(eff)
    assert layer.state_count == 0


def test_compat_torch_predict_and_bad_names(torch_net, digits):
    eff = ts.build_efficiency_model(torch_net, attach_to=["Linear"])
    try:
        pred = eff.predict(digits[0][:30], batch_size=7)
        assert pred.shape == (30, 10) and eff.efficiency_layers[0].state_count == 30
        with pytest.raises(ts.errors.LayerNotFoundError, match=r"Did you mean: .*Conv2d"):
            ts.build_efficiency_model(torch_net, attach_to=["Conv2"])
    finally:
        eff.remove_hooks()


@pytest.mark.tensorflow
def test_keras_tutorial_flow_through_the_compat_api(keras_pair, digits):
    model, _ = keras_pair
    x, y = nhwc(digits[0]), digits[1]
    eff = ts.build_efficiency_model(model, attach_to=["Conv2D"], method="after")
    predictions = eff.predict(x, batch_size=200)
    counts = [la.state_count for la in eff.efficiency_layers]
    assert counts == [600 * 24 * 24, 600 * 8 * 8, 600]
    accuracy = float(np.mean(np.argmax(predictions, axis=1) == y))
    aiq = ts.aIQ(ts.network_efficiency(eff), accuracy, 2)
    assert 0 < aiq < 1
