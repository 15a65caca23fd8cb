"""Edge cases: label and output shapes, shared modules, thread safety, wide layers, numerics."""

from __future__ import annotations

import math
import pickle
import threading

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnx_state
from onnx_state import capture, metrics
from onnx_state.cli import main
from onnx_state.compare import compare
from onnx_state.count import StateCounter
from onnx_state.errors import InputError
from onnx_state.mst import cross_edges
from tests.models import conv_net, int_data, make_model, tag
from tests.reference import reference_counts, reference_renyi, reference_states


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


def test_a_module_called_twice_gives_two_layers():
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], name="conv_a"),
        tag(helper.make_node("Relu", ["c1"], ["r1"], name="/act/Relu"), "act", "ReLU"),
        helper.make_node("Conv", ["r1", "W"], ["c2"], name="conv_b"),
        tag(helper.make_node("Relu", ["c2"], ["r2"], name="/act/Relu_1"), "act", "ReLU"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [("W", w)],
    )
    caps = capture.select_captures(model, ["ReLU"], method="both")
    assert [(c.name, c.tensor) for c in caps] == [
        ("act_pre_states", "c1"), ("act_post_states", "r1"),
        ("act_1_pre_states", "c2"), ("act_1_post_states", "r2"),
    ]  # fmt: skip


def test_external_data_counts_towards_the_large_model_limit(tmp_path, monkeypatch):
    model, _ = conv_net()
    path = tmp_path / "m.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save turns the proto's own tensors into references
    onnx.save(saved, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    monkeypatch.setattr(capture.load, "LARGE_MODEL_BYTES", path.stat().st_size + 10)
    proto = capture.load_model(path, max_bytes=capture.load.LARGE_MODEL_BYTES)
    assert all(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = int_data(6)
    a = onnx_state.analyze(path, x, attach_to="Conv")
    b = onnx_state.analyze(model, x, attach_to="Conv")
    np.testing.assert_array_equal(a.layers[0].counts(), b.layers[0].counts())


def test_iterators_that_reuse_one_buffer_are_counted_and_fingerprinted_right():
    model, _ = conv_net()
    x = int_data(40)
    buffer = np.empty((8, 3, 8, 8), np.float32)

    def reuse():
        for i in range(0, 40, 8):
            buffer[:] = x[i : i + 8]
            yield buffer

    a = onnx_state.analyze(model, reuse(), attach_to="Conv")
    b = onnx_state.analyze(model, x, attach_to="Conv", batch_size=8)
    assert a.data_fingerprint == b.data_fingerprint
    np.testing.assert_array_equal(a.layers[0].counts(), b.layers[0].counts())


def test_one_counter_updated_from_many_threads():
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal((50, 70, 6, 6)) > 0.5).astype(np.float32) for _ in range(8)]
    counter = StateCounter()
    threads = [threading.Thread(target=counter.update, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids, counts = reference_counts(np.concatenate(parts), 1)
    np.testing.assert_array_equal(counter.counts(), counts)
    np.testing.assert_array_equal(counter.state_ids(), ids)


def test_wide_layers_record_in_small_chunks(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 65_536)).astype(np.float32)
    counter = StateCounter(record=tmp_path / "raw.zarr")
    for _ in range(3):
        counter.update(x, axis=1)
    assert counter.raw_states.chunks[0] * counter.raw_states.chunks[1] <= 8 << 20
    np.testing.assert_array_equal(np.asarray(counter.raw_states[:4]), reference_states(x, 1))


def test_a_pickled_disk_recorder_does_not_share_the_disk_array(tmp_path):
    x = np.random.default_rng(2).standard_normal((5, 9)).astype(np.float32)
    original = StateCounter(record=tmp_path / "raw.zarr").update(x)
    copy = pickle.loads(pickle.dumps(original))
    copy.update(x[:2])
    original.update(x[3:])
    assert copy.raw_states.shape[0] == 7 and original.raw_states.shape[0] == 7
    np.testing.assert_array_equal(np.asarray(original.raw_states[5:]), reference_states(x[3:], 1))
    with pytest.raises(InputError, match="records states but the other does not"):
        original.merge(StateCounter().update(x))


def test_firing_counts_equal_a_numpy_reference():
    rng = np.random.default_rng(3)
    bits = rng.random((300, 77)) > 0.6
    counts = rng.integers(1, 9, 300)
    ids = np.packbits(bits, axis=1, bitorder="little")
    np.testing.assert_array_equal(
        metrics.firing_counts(ids, counts, 77), (bits * counts[:, None]).sum(axis=0)
    )


@pytest.mark.parametrize("alpha", [1 + 1e-12, 1 - 1e-12, 50.0, 2000.0])
def test_renyi_is_stable_near_one_and_for_large_orders(alpha):
    counts = [5, 3, 1, 1]
    h = metrics.entropy(counts, alpha)
    if abs(alpha - 1) < 1e-6:
        assert h == pytest.approx(reference_renyi(counts, 1), abs=1e-9)
    else:
        assert math.isfinite(h) and metrics.entropy(counts, math.inf) <= h
        assert h == pytest.approx(reference_renyi(counts, math.inf), abs=0.05)


def test_non_finite_points_are_refused():
    a = np.zeros((3, 2))
    a[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        cross_edges(a, np.ones((3, 2)))


def test_compare_takes_a_string_and_maps_layers_on_both_sides():
    model, _ = conv_net()
    c = compare(model, model, int_data(6), attach_to="Conv", mapping={"relu": "relu"})
    assert [(p.a, p.rule) for p in c.pairs] == [
        ("conv_post_states", "name"), ("relu_post_states", "mapping"),
    ]  # fmt: skip
    with pytest.raises(InputError, match="labels"):
        compare(model, model, int_data(6), labels=np.zeros(3, int))


def test_api_and_cli_input_errors_are_one_line(tmp_path, bundled):
    model, x, y = bundled
    net, _ = conv_net()
    with pytest.raises(InputError, match="batch_size"):
        onnx_state.analyze(net, int_data(4), attach_to="Conv", batch_size=0)
    from onnx_state.separation import separation

    with pytest.raises(InputError, match="pca_pair"):
        separation(model, x, labels=y, samples_per_class=3, pca_pair=(0, 42))
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    (tmp_path / "file").write_text("keep me")
    np.save(tmp_path / "x.npy", int_data(4))
    onnx.save(net, tmp_path / "m.onnx")
    for args, message in [
        (["export", str(tmp_path / "bad.keras"), str(tmp_path / "o.onnx")], "Keras"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "-q",
          "-o", str(tmp_path / "file"), "--overwrite"], "not an onnx_state results store"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"),
          "--neuron-axis", "conv"], "LAYER=AXIS"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", f"{tmp_path / 'x.npy'}:k"], "drop"),
    ]:  # fmt: skip
        if args[0] == "export":
            pytest.importorskip("keras")
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    assert (tmp_path / "file").read_text() == "keep me"
    assert not (tmp_path / "o.onnx").exists()
