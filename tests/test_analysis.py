"""analyze() end to end: every layer's states equal a numpy reference; accuracy; warnings."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_state
from tests.models import make_model
from tests.reference import assert_states, reference_counts


def test_states_equal_the_numpy_reference_for_every_layer(net):
    model, _, x, ref = net
    a = onnx_state.analyze(
        model, x, attach_to=["Conv", "Relu", "MatMul"], method="both", batch_size=7
    )
    by_name = {r.name: r for r in a.layers}
    assert_states(by_name["conv_pre_states"], *reference_counts(ref["x"], 1))
    assert_states(by_name["conv_post_states"], *reference_counts(ref["c"], 1))
    assert_states(by_name["relu_post_states"], *reference_counts(ref["r"], 1))
    assert_states(by_name["fc_pre_states"], *reference_counts(ref["f"], 1))
    assert_states(by_name["fc_post_states"], *reference_counts(ref["y"], 1))
    assert a.n_samples == 53
    assert by_name["conv_post_states"].neurons == 4 and by_name["fc_pre_states"].neurons == 144
    assert a.parity_max_abs_diff == 0.0
    assert a.layer("conv").efficiency() == pytest.approx(
        onnx_state.entropy(by_name["conv_post_states"].counts()) / 4, abs=1e-12
    )


def test_transposed_capture_uses_the_moved_neuron_axis(net):
    model, _params, x, ref = net
    transpose = helper.make_node("Transpose", ["c"], ["t"], name="nhwc", perm=[0, 2, 3, 1])
    nodes = [*model.graph.node, transpose]
    m2 = make_model(
        nodes,
        list(model.graph.input),
        [
            *model.graph.output,
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 6, 6, 4]),
        ],
        [(i.name, onnx.numpy_helper.to_array(i)) for i in model.graph.initializer],
    )
    a = onnx_state.analyze(m2, x, attach_to=["nhwc"], batch_size=10)
    (layer,) = a.layers
    assert layer.axis == 3 and layer.neurons == 4
    assert_states(layer, *reference_counts(ref["c"], 1))  # same states as the conv output in NCHW


def test_gemm_layer_and_accuracy(net):
    rng = np.random.default_rng(5)
    w = rng.integers(-2, 3, (6, 4)).astype(np.float32)
    b = rng.integers(-2, 3, (4,)).astype(np.float32)
    model = make_model(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="dense")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [("W", w), ("B", b)],
    )
    x = rng.integers(-2, 3, (101, 6)).astype(np.float32)
    y = x @ w + b
    labels = rng.integers(0, 4, 101)
    a = onnx_state.analyze(model, x, attach_to="Gemm", batch_size=16, labels=labels)
    assert_states(a.layers[0], *reference_counts(y, 1))
    assert a.accuracy == pytest.approx(np.mean(np.argmax(y, 1) == labels), abs=1e-15)
    assert a.aiq(2) == pytest.approx((a.network_efficiency() * a.accuracy**2) ** (1 / 3), abs=1e-12)
    onehot = np.eye(4)[labels]
    assert onnx_state.analyze(model, x, attach_to="Gemm", labels=onehot).accuracy == a.accuracy


def test_nan_activations_warn_with_their_count(net):
    model, _, x, _ = net
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"\d+ NaN activations"):
        a = onnx_state.analyze(model, bad, attach_to="Conv", method="before")
    assert a.layers[0].nan_count == 1


def test_keep_outputs_returns_the_final_outputs_in_order(net):
    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to="Conv", batch_size=10, keep_outputs=True)
    np.testing.assert_allclose(a.outputs[0], ref["y"], rtol=0, atol=1e-4)
    assert onnx_state.analyze(model, x, attach_to="Conv").outputs is None


def test_labels_give_per_class_state_counts_equal_to_numpy(net, tmp_path):
    model, _, x, ref = net
    labels = np.arange(len(x)) % 3
    a = onnx_state.analyze(model, x, labels=labels, attach_to=["Conv", "Relu"], batch_size=10)
    a.save(tmp_path / "s.zarr")
    back = onnx_state.Analysis.load(tmp_path / "s.zarr")
    for r, tensor in zip(a.layers, ("c", "r")):
        ids = [row.tobytes() for row in r.state_ids()]
        expected = []
        for c in range(3):  # numpy: each class's states, as rows of the layer's state ids
            cids, counts = reference_counts(ref[tensor][labels == c], 1)
            expected += [[ids.index(i.tobytes()), c, int(n)] for i, n in zip(cids, counts)]
        assert r.class_counts.tolist() == sorted(expected)
        assert np.array_equal(back.layer(r.name).class_counts, r.class_counts)
    assert all(
        r.class_counts is None for r in onnx_state.analyze(model, x, attach_to="Conv").layers
    )


def test_packed_bits_count_exactly_what_the_float_maps_give(net):
    """pack=True reads conv maps as bits packed inside the graph: the same states (numpy
    reference of the Conv output), ±0 and ties at zero included (small integer data)."""
    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "Relu"], batch_size=7, pack=True)
    by_name = {r.name: r for r in a.layers}
    assert_states(by_name["conv_post_states"], *reference_counts(ref["c"], 1))
    assert_states(by_name["relu_post_states"], *reference_counts(ref["r"], 1))
    assert a.parity_max_abs_diff == 0.0


def test_a_nan_reaching_packed_bits_is_refused_in_one_line():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Sqrt", ["c"], ["s"], name="root"),
        helper.make_node("Conv", ["s", "W2"], ["y"], name="conv2"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 3, 3])],
        [("W", np.ones((8, 2, 1, 1), np.float32)), ("W2", np.ones((8, 8, 1, 1), np.float32))],
    )
    x = np.ones((4, 2, 3, 3), np.float32)
    x[1] = -1  # sqrt of a negative conv output: NaN in conv2's input and output
    from onnx_state.errors import ModelError

    with pytest.raises(ModelError, match=r"layer 'conv2': a NaN activation reached the packed"):
        onnx_state.analyze(model, x, attach_to=["conv2"], pack=True, parity=False)
    # unpacked, the NaNs are counted as not firing
    with pytest.warns(RuntimeWarning, match="NaN activations"):
        (layer,) = onnx_state.analyze(model, x, attach_to=["conv2"], parity=False).layers
    assert layer.nan_count == 8 * 9


def test_results_let_each_counter_go_after_its_last_capture(net):
    """Tables are released as their snapshots are taken (memory), also when two captures
    share one counter (the same tensor and axis): both get the full states."""
    from onnx_state.analysis import _release_into_results
    from onnx_state.capture import Instrumented
    from onnx_state.capture.session import new_counter

    model, _, x, ref = net
    inst = Instrumented(model, attach_to="Relu")
    (c,) = inst.captures
    counters = {(c.key, c.axis): new_counter(c)}
    counters[(c.key, c.axis)].update(inst.run({"x": x}).captured[c.key], c.axis)
    first, second = _release_into_results([c, c], counters)
    assert counters == {}
    for layer in (first, second):
        assert_states(layer, *reference_counts(ref["r"], 1))
