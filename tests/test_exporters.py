"""The PyTorch and Keras exporters: round trips, layer metadata, cross-framework parity.

Skipped cleanly when an extra is missing; CI installs both.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_state as ts
import onnx_state.capture
from onnx_state.capture import Instrumented
from onnx_state.capture.metadata import META_NEURON_AXIS
from tests.lenet import nhwc
from tests.reference import reference_counts, reference_states

torch = pytest.importorskip("torch")


def onnx_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


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


def small_resnet():
    """A Conv-BN-ReLU ResNet: a stem and two residual blocks, random weights and statistics."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            h = self.relu1(self.bn1(self.conv1(x)))
            return self.relu2(self.bn2(self.conv2(h)) + x)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.relu = nn.ReLU()
            self.block1, self.block2 = Block(6), Block(6)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            h = self.block2(self.block1(self.relu(self.bn(self.stem(x)))))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(3)
    net = ResNet()
    for m in net.modules():  # non-trivial running statistics, so folding would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def test_torch_batchnorm_stays_its_own_layer_in_a_resnet():
    """Every Conv2d, BatchNorm2d and ReLU module is a layer; a Conv2d layer's states are the
    torch Conv2d module's output, taken before its BatchNorm."""
    from torch import nn

    from exporters.from_torch import export

    net = small_resnet()
    x = np.random.default_rng(7).standard_normal((6, 3, 8, 8)).astype(np.float32)
    proto = export(net, torch.from_numpy(x[:2]))
    hooked: dict[str, np.ndarray] = {}
    kinds = {"Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "ReLU": nn.ReLU}
    modules = {name: type(m).__name__ for name, m in net.named_modules()
               if isinstance(m, tuple(kinds.values()))}  # fmt: skip
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(
                lambda _m, _i, out, name=name: hooked.__setitem__(name, out.numpy())
            )
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_run(proto, x), expected, atol=1e-5, rtol=0)
    layers = {la.name: la for la in ts.capture.list_layers(proto)}
    assert {n: layers[n].layer_type for n in modules} == modules
    for name, cls in modules.items():
        op = {"Conv2d": "Conv", "BatchNorm2d": "BatchNormalization", "ReLU": "Relu"}[cls]
        assert layers[name].op_types == (op,), name
    a = ts.analyze(proto, x, attach_to=["Conv2d"], batch_size=4)
    assert [r.layer for r in a.layers] == [n for n, c in modules.items() if c == "Conv2d"]
    inst = Instrumented(proto, attach_to=["Conv2d"])
    run = inst.run({inst.specs[0].name: x})
    for c, r in zip(inst.captures, a.layers):
        assert c.axis == 1 and r.neurons == 6
        got = run.captured[c.tensor]
        np.testing.assert_allclose(got, hooked[c.layer], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(
            reference_states(got, 1), reference_states(hooked[c.layer], 1), err_msg=c.layer
        )
        ids, counts = reference_counts(hooked[c.layer], 1)
        np.testing.assert_array_equal(r.state_ids(), ids, err_msg=c.layer)
        np.testing.assert_array_equal(r.counts(), counts)


def test_torch_bidirectional_lstm_counts_its_hidden_units():
    from torch import nn

    from exporters.from_torch import export

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(6, 4, bidirectional=True, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    torch.manual_seed(4)
    net = Net().eval()
    x = np.random.default_rng(6).standard_normal((5, 7, 6)).astype(np.float32)
    proto = export(net, torch.from_numpy(x[:2]))
    (node,) = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert {p.key: p.value for p in node.metadata_props}[META_NEURON_AXIS] == "-1"
    (layer,) = ts.analyze(proto, x, attach_to=["LSTM"]).layers
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()  # (N, T, 2 * 4): both directions
    assert layer.layer_type == "LSTM" and layer.neurons == 8 and layer.state_count == 5 * 7
    ids, counts = reference_counts(out, -1)
    np.testing.assert_array_equal(layer.state_ids(), ids)
    np.testing.assert_array_equal(layer.counts(), counts)


# -- Keras ------------------------------------------------------------------------------------
@pytest.mark.tensorflow
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


@pytest.mark.tensorflow
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


@pytest.mark.tensorflow
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


@pytest.mark.tensorflow
def test_keras_bidirectional_lstm_is_one_layer_with_both_directions():
    """tf2onnx fuses the two LSTMs into one node without the Keras scope: it used to cut
    the layer in three, and the name ``lstm`` landed on its input Transpose (4 neurons)."""
    import keras

    from exporters.from_keras import export

    inp = keras.Input((5, 4), name="x")
    h = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="lstm")(inp)
    out = keras.layers.Dense(2, name="fc")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(9).standard_normal((30, 5, 4)).astype(np.float32)
    proto = export(model)
    layers = [la for la in ts.capture.list_layers(proto) if la.layer_type == "Bidirectional"]
    assert [la.name for la in layers] == ["lstm"] and "LSTM" in layers[0].op_types
    (layer,) = ts.analyze(proto, x, attach_to=["Bidirectional"]).layers
    inner = keras.Model(inp, model.get_layer("lstm").output).predict(x, verbose=0)  # (N, 5, 6)
    assert layer.neurons == 6 and layer.state_count == 30 * 5
    ids, counts = reference_counts(inner, -1)
    assert sorted(layer.counts().tolist()) == sorted(counts.tolist())
    agree = np.isin(layer.state_bytes(), [r.tobytes() for r in ids])
    assert agree.mean() >= 0.999
