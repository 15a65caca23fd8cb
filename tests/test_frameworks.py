"""Exporters, the TensorState-compatible API and cross-framework parity (torch and Keras).

Skipped cleanly when an extra is missing; CI installs both.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnx_state as ts
import onnx_state.capture
import onnx_state.errors
from examples.lenet import (
    bundled_digits,
    copy_torch_to_keras,
    keras_lenet5,
    torch_lenet5,
    train_torch,
)
from onnx_state.capture import Instrumented
from onnx_state.cli import main
from tests.reference import reference_counts, reference_states

torch = pytest.importorskip("torch")


def onnx_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def digits():
    x, y = bundled_digits()
    return x[:600], y[:600]


@pytest.fixture(scope="module")
def torch_net(digits):
    x, y = digits
    net = torch_lenet5()
    train_torch(net, x[:500], y[:500], epochs=2)
    return net


@pytest.fixture(scope="module")
def torch_onnx(torch_net, digits):
    from exporters.from_torch import export

    return export(torch_net, torch.from_numpy(digits[0][:2]))


# -- PyTorch ----------------------------------------------------------------------------------
def test_torch_round_trip_and_layer_metadata(torch_net, torch_onnx, digits):
    x = digits[0][:64]
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_run(torch_onnx, x), expected, atol=1e-5, rtol=0)
    layers = {la.name: la for la in ts.capture.list_layers(torch_onnx)}
    assert layers["conv_1"].layer_type == "Conv2d" and layers["pred"].layer_type == "Linear"
    assert "BatchNormalization" in layers["norm_1"].op_types  # not folded into the Conv


def test_nested_torch_modules_keep_their_paths():
    from torch import nn

    from exporters.from_torch import export

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.seq(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.block(x).flatten(1))

    net = Net().eval()
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    proto = export(net, torch.from_numpy(x[:2]))
    with torch.no_grad():
        np.testing.assert_allclose(onnx_run(proto, x), net(torch.from_numpy(x)).numpy(), atol=1e-5)
    a = ts.analyze(proto, x, attach_to=["Conv2d", "Linear"])
    assert [r.name for r in a.layers] == ["block.seq.0_post_states", "fc_post_states"]
    assert [r.layer_type for r in a.layers] == ["Conv2d", "Linear"]


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


# -- Keras ------------------------------------------------------------------------------------
keras_needed = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def keras_pair(torch_net):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from exporters.from_keras import export

    model = keras_lenet5()
    copy_torch_to_keras(torch_net, model)
    return model, export(model)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@keras_needed
def test_keras_round_trip_and_layer_names(keras_pair, torch_net, digits):
    model, proto = keras_pair
    x = nhwc(digits[0][:64])
    np.testing.assert_allclose(onnx_run(proto, x), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    with torch.no_grad():  # the transferred weights compute the same function
        np.testing.assert_allclose(
            onnx_run(proto, x), torch_net(torch.from_numpy(digits[0][:64])).numpy(), atol=1e-4
        )
    layers = {la.name: la for la in ts.capture.list_layers(proto)}
    assert layers["conv_1"].layer_type == "Conv2D" and layers["conv_1"].op_types[-1] == "Elu"
    assert layers["norm_1"].layer_type == "BatchNormalization"
    assert layers["pred"].layer_type == "Dense"


@keras_needed
def test_cross_framework_parity_state_by_state(keras_pair, torch_onnx, digits):
    """The Keras and the PyTorch export are the same network, layer by layer."""
    _, keras_onnx = keras_pair
    x = digits[0]
    t = Instrumented(torch_onnx, attach_to=["Conv2d", "Linear"], method="both")
    k = Instrumented(keras_onnx, attach_to=["Conv2D", "Dense"], method="both")
    assert [c.name for c in t.captures] == [c.name for c in k.captures]
    same = total = 0
    for start in range(0, len(x), 200):
        ct = t.run({"x": x[start : start + 200]}).captured
        ck = k.run({"input": nhwc(x[start : start + 200])}).captured
        for a, b in zip(t.captures, k.captures):
            sa = reference_states(ct[a.tensor], a.axis)
            sb = reference_states(ck[b.tensor], b.axis)
            assert sa.shape == sb.shape, a.name
            same += int(np.sum(np.all(sa == sb, axis=1)))
            total += len(sa)
    assert same / total >= 0.9999, f"{total - same} of {total} states differ"
    ra = ts.analyze(torch_onnx, x, attach_to=["Conv2d", "Linear"], batch_size=100)
    rb = ts.analyze(keras_onnx, nhwc(x), attach_to=["Conv2D", "Dense"], batch_size=100)
    for la, lb in zip(ra.layers, rb.layers):
        assert la.state_count == lb.state_count and la.neurons == lb.neurons
        assert la.efficiency() == pytest.approx(lb.efficiency(), abs=1e-3)


@keras_needed
def test_keras_three_channel_input_and_dense_stack():
    import keras

    from exporters.from_keras import export

    rng = np.random.default_rng(2)
    inp = keras.Input((10, 10, 3), name="img")
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(5, 3, name="c2")(h)
    out = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, out)
    x = rng.standard_normal((40, 10, 10, 3)).astype(np.float32)
    proto = export(model)
    np.testing.assert_allclose(onnx_run(proto, x), model.predict(x, verbose=0), atol=1e-5)
    a = ts.analyze(proto, x, attach_to=["Conv2D"], method="both")
    by = {r.name: r for r in a.layers}
    assert by["c1_pre_states"].neurons == 3 and by["c1_post_states"].neurons == 6
    inner = keras.Model(inp, model.get_layer("c2").output).predict(x, verbose=0)
    ids, counts = reference_counts(inner, -1)
    agree = np.isin(by["c2_post_states"].state_bytes(), [r.tobytes() for r in ids])
    assert agree.mean() >= 0.999 and by["c2_post_states"].state_count == counts.sum()

    dense = keras.Sequential(
        [keras.Input((7,)), keras.layers.Dense(9, activation="tanh", name="d1"),
         keras.layers.Dense(4, name="d2")]
    )  # fmt: skip
    xd = rng.standard_normal((50, 7)).astype(np.float32)
    pd = export(dense)
    np.testing.assert_allclose(onnx_run(pd, xd), dense.predict(xd, verbose=0), atol=1e-5)
    eff = ts.build_efficiency_model(dense, attach_to=["Dense"], method="after")
    np.testing.assert_allclose(
        eff.predict(xd, batch_size=16), dense.predict(xd, verbose=0), atol=1e-5
    )
    assert [la.name for la in eff.efficiency_layers] == ["d1_post_states", "d2_post_states"]
    h1 = keras.Model(dense.inputs, dense.get_layer("d1").output).predict(xd, verbose=0)
    assert eff.efficiency_layers[0].state_ids() == [r.tobytes() for r in reference_counts(h1, 1)[0]]


@keras_needed
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


@keras_needed
def test_export_cli_for_keras_and_torch(tmp_path, keras_pair, torch_net, monkeypatch):
    model, _ = keras_pair
    model.save(tmp_path / "m.keras")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "m.keras"), str(tmp_path / "k.onnx")])
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(str(tmp_path / "k.onnx"))
    torch.save(torch_net.state_dict(), tmp_path / "w.pt")
    args = ["export", "examples.lenet:torch_lenet5", str(tmp_path / "t.onnx"),
            "--weights", str(tmp_path / "w.pt"), "--input-shape", "1,28,28"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert (
        next(la.name for la in ts.capture.list_layers(onnx.load(tmp_path / "t.onnx"))) == "conv_1"
    )
    bad = CliRunner().invoke(
        main, [*args[:3], "--input-shape", "1,28,28", "--weights", str(tmp_path / "m.keras")]
    )
    assert bad.exit_code == 2 and "cannot load" in bad.output
    assert not (tmp_path / "t.onnx.partial").exists()


def test_elementwise_modules_take_the_neuron_axis_of_their_producer():
    from torch import nn

    from exporters.from_torch import export

    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU()).eval()
    x = np.random.default_rng(5).standard_normal((6, 5, 8)).astype(np.float32)
    a = ts.analyze(export(net, torch.from_numpy(x[:2])), x, attach_to=["ReLU"])
    (layer,) = a.layers
    assert layer.neurons == 16 and layer.state_count == 6 * 5
    with torch.no_grad():
        _ids, counts = reference_counts(net(torch.from_numpy(x)).numpy(), -1)
    np.testing.assert_array_equal(layer.counts(), counts)
