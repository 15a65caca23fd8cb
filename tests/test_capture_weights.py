"""capture.weights: an instrumented model's weights reach onnxruntime from memory, never
serialized, exactly as loaded; the proto keeps no copy once the session exists."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_state
from onnx_state import capture
from onnx_state.capture.weights import detach_weights
from tests.models import OPSET, conv_net, int_data


def _mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (N, 16) -> MatMul(w1: 16 x 64, 4 KiB raw) + b1 (256 B, below the 1 KiB cut) -> Relu
    -> MatMul(w2: 64 x 8, 2 KiB, given as float_data, not raw_data)."""
    rng = np.random.default_rng(seed)
    p = {
        "w1": rng.normal(size=(16, 64)).astype(np.float32),
        "b1": rng.normal(size=64).astype(np.float32),
        "w2": rng.normal(size=(64, 8)).astype(np.float32),
    }
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [64, 8], p["w2"].ravel().tolist())
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "b1"], ["a"], name="add1"),
            helper.make_node("Relu", ["a"], ["r"], name="relu1"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(p["w1"], "w1"), numpy_helper.from_array(p["b1"], "b1"), w2],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    return model, p


def _saved(tmp_path, seed: int = 0, name: str = "m.onnx"):
    model, p = _mlp(seed)
    path = tmp_path / name
    onnx.save(model, path)
    return path, p


def test_detached_weights_run_as_the_file_and_restore_exactly(tmp_path):
    path, p = _saved(tmp_path)
    proto = capture.load_model(path)
    before = proto.SerializeToString()
    weights = detach_weights(proto)
    by_name = {t.name: t for t in proto.graph.initializer}
    assert weights.tensors == [by_name["w1"]] and weights.buffers == [p["w1"].tobytes()]
    assert by_name["w1"].data_location == TensorProto.EXTERNAL and not by_name["w1"].raw_data
    assert by_name["b1"].raw_data  # small: kept
    assert len(by_name["w2"].float_data) == 64 * 8  # not raw_data: kept
    assert len(proto.SerializeToString()) < p["w1"].nbytes  # w1 is no longer in it
    empty = tmp_path / "empty"
    empty.mkdir()  # no file of that name anywhere: the bytes come from memory
    session = capture.make_session(proto, model_dir=empty, weights=weights)
    x = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    expected = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    weights.restore()
    assert proto.SerializeToString() == before


def test_analyze_hands_the_weights_over_from_memory_and_counts_as_the_proto(tmp_path):
    path, p = _saved(tmp_path)
    x = np.random.default_rng(4).normal(size=(40, 16)).astype(np.float32)
    inst = capture.Instrumented(path, attach_to="Relu")
    inst.session  # noqa: B018 (built on first use)
    big = [t for t in inst.original.graph.initializer if t.name in ("w1", "w2")]
    assert all(not t.raw_data and not t.float_data and not t.external_data for t in big)
    full = {t.name: t for t in inst.model.graph.initializer}  # `model` reads the file again
    np.testing.assert_array_equal(numpy_helper.to_array(full["w1"]), p["w1"])
    a = onnx_state.analyze(path, x, attach_to="Relu")
    b = onnx_state.analyze(_mlp()[0], x, attach_to="Relu")  # in memory: serialized
    assert a.layers[0] == b.layers[0]
    states = np.maximum(x @ p["w1"] + p["b1"], 0) > 0
    packed = np.packbits(states, axis=1, bitorder="little")
    _, counts = np.unique(packed, axis=0, return_counts=True)
    np.testing.assert_array_equal(np.sort(a.layers[0].counts()), np.sort(counts))


def test_the_loaded_weights_run_whatever_happens_to_the_file(tmp_path):
    """The session runs the bytes that were loaded and hashed: the file rewritten before the
    session is built, or truncated and rewritten while it runs, changes nothing."""
    path, p = _saved(tmp_path)
    x = np.random.default_rng(6).normal(size=(7, 16)).astype(np.float32)
    expected = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    inst = capture.Instrumented(path, attach_to="Relu")
    other = _mlp(seed=1)[0]
    onnx.save(other, path)  # same layout, other weights, before the session exists
    np.testing.assert_allclose(inst.run({"x": x}).outputs[0], expected, rtol=1e-5, atol=1e-5)
    path.write_bytes(b"")  # truncated under the running session
    onnx.save(_mlp(seed=2)[0], path)
    np.testing.assert_allclose(inst.run({"x": x}).outputs[0], expected, rtol=1e-5, atol=1e-5)


def test_a_failed_build_leaves_the_weights_in_place(tmp_path, monkeypatch):
    import onnxruntime as ort

    path, p = _saved(tmp_path)
    inst = capture.Instrumented(path, attach_to="Relu")
    before = inst.original.SerializeToString()
    real = ort.InferenceSession

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ort, "InferenceSession", failing)
    with pytest.raises(onnx_state.errors.ModelError, match="simulated"):
        inst.session  # noqa: B018
    assert inst.original.SerializeToString() == before
    monkeypatch.setattr(ort, "InferenceSession", real)
    x = np.random.default_rng(7).normal(size=(3, 16)).astype(np.float32)
    expected = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    np.testing.assert_allclose(inst.run({"x": x}).outputs[0], expected, rtol=1e-5, atol=1e-5)


def test_every_large_tensor_leaves_the_proto_once_the_session_exists(tmp_path):
    """Detached raw_data, typed float_data and tensors loaded from an external file alike."""
    model, _ = _mlp()
    path = tmp_path / "mixed.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save turns the proto's own tensors into references
    onnx.save(saved, path, save_as_external_data=True, location="w.bin", size_threshold=3000)
    inst = capture.Instrumented(path, attach_to="Relu")
    assert any(t.raw_data for t in inst.original.graph.initializer if t.name == "w1")
    inst.session  # noqa: B018
    held = {t.name: t.ByteSize() for t in inst.original.graph.initializer}
    assert max(held.values()) < 1100, held


def test_kept_external_references_load_without_a_temporary_file(tmp_path, monkeypatch):
    """A model whose weights stay references (over the in-memory limit) goes to onnxruntime
    as bytes with its folder: nothing is written next to it, so a read-only folder works."""
    model, _ = _mlp()
    path = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save turns the proto's own tensors into references
    onnx.save(saved, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    x = np.random.default_rng(5).normal(size=(30, 16)).astype(np.float32)
    b = onnx_state.analyze(model, x, attach_to="Relu")  # in memory, before the limit moves
    # below the weights (6 KiB), above the graph with its extra outputs
    monkeypatch.setattr(capture.load, "LARGE_MODEL_BYTES", path.stat().st_size + 1000)

    def no_temporary_file(*args, **kwargs):
        raise AssertionError("a temporary file was written")

    monkeypatch.setattr(capture.session.tempfile, "mkstemp", no_temporary_file)
    a = onnx_state.analyze(path, x, attach_to="Relu")
    assert a.layers[0] == b.layers[0]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ext.bin", "ext.onnx"]


def test_packed_bits_take_the_detached_weights_too(tmp_path, monkeypatch):
    """pack=True builds from a copy of the proto with the packing nodes: the copy is made
    after the weights are detached, so it is light too."""
    from onnx_state.capture import session as session_module

    model, _ = conv_net()  # G (2,880 bytes) is detached, W (432) stays in the proto
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    handed = []
    real = session_module.make_session

    def spy(model, *args, weights=None, **kwargs):
        handed.append(None if weights is None else list(weights.names))
        return real(model, *args, weights=weights, **kwargs)

    monkeypatch.setattr(session_module, "make_session", spy)
    inst = capture.Instrumented(path, attach_to="Conv", pack=True)
    inst.session  # noqa: B018 (built on first use)
    assert inst.captures[0].packed and handed == [["onnx_state-detached-1.bin"]]
    x = int_data(20)
    a = onnx_state.analyze(path, x, attach_to="Conv", pack=True)
    b = onnx_state.analyze(model, x, attach_to="Conv")
    assert a.layers[0] == b.layers[0]


def _two_matmuls(a: np.ndarray, b: onnx.TensorProto) -> onnx.ModelProto:
    """x (N, 16) -> MatMul a (16 x 64) -> Relu -> MatMul b (64 x 8)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "b"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(a, "a"), b],
    )
    return helper.make_model(graph, opset_imports=OPSET)


@pytest.mark.parametrize("file_name", ["w.bin", "onnx_state-detached-0.bin"])
def test_embedded_and_kept_external_weights_together_run_right(tmp_path, monkeypatch, file_name):
    """A large model keeps its file references; an embedded tensor next to them is not
    detached (onnxruntime would look the file up among the in-memory ones), even when the
    file bears the name a detached tensor would get."""
    rng = np.random.default_rng(8)
    a = rng.normal(size=(16, 64)).astype(np.float32)  # 4 KiB, embedded
    b = rng.normal(size=(64, 8)).astype(np.float32)  # 2 KiB, in the data file
    (tmp_path / file_name).write_bytes(b.tobytes())
    ref = numpy_helper.from_array(b, "b")
    ref.ClearField("raw_data")
    ref.data_location = TensorProto.EXTERNAL
    for key, value in (("location", file_name), ("offset", "0"), ("length", str(b.nbytes))):
        entry = ref.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "m.onnx"
    onnx.save(_two_matmuls(a, ref), path)
    monkeypatch.setattr(capture.load, "LARGE_MODEL_BYTES", path.stat().st_size + 1000)
    x = rng.normal(size=(5, 16)).astype(np.float32)
    out = capture.Instrumented(path, attach_to="Relu").run({"x": x}).outputs[0]
    np.testing.assert_allclose(out, np.maximum(x @ a, 0) @ b, rtol=1e-5, atol=1e-5)


def test_shadowed_initializer_names_keep_onnxruntimes_choice(tmp_path):
    """Two initializers named "a": onnxruntime keeps one; the instrumented model runs what
    a plain session of the file runs (the weights are serialized, not detached)."""
    import onnxruntime as ort

    rng = np.random.default_rng(9)
    a = rng.normal(size=(16, 64)).astype(np.float32)
    b = rng.normal(size=(64, 8)).astype(np.float32)
    model = _two_matmuls(a, numpy_helper.from_array(b, "b"))
    model.graph.initializer.append(numpy_helper.from_array(a + 1, "a"))
    path = tmp_path / "dup.onnx"
    onnx.save(model, path)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    plain = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    inst = capture.Instrumented(path, attach_to="Relu")
    assert not capture.weights.can_detach(inst.original)
    np.testing.assert_array_equal(inst.run({"x": x}).outputs[0], plain)


def test_an_interrupt_while_detaching_leaves_the_proto_as_it_was(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    a = rng.normal(size=(16, 64)).astype(np.float32)
    b = rng.normal(size=(64, 8)).astype(np.float32)
    proto = _two_matmuls(a, numpy_helper.from_array(b, "b"))
    before = proto.SerializeToString()
    turns = [0]
    real_add = onnx.TensorProto.ClearField

    def interrupted(self, name):
        turns[0] += 1
        if turns[0] == 2:  # the second tensor, half-way
            raise KeyboardInterrupt
        return real_add(self, name)

    monkeypatch.setattr(onnx.TensorProto, "ClearField", interrupted)
    with pytest.raises(KeyboardInterrupt):
        detach_weights(proto)
    monkeypatch.setattr(onnx.TensorProto, "ClearField", real_add)
    assert proto.SerializeToString() == before


def test_a_relative_path_survives_a_change_of_folder(tmp_path, monkeypatch):
    _, p = _saved(tmp_path)
    monkeypatch.chdir(tmp_path)
    inst = capture.Instrumented("m.onnx", attach_to="Relu")
    inst.parity_first = True  # the original's session is built from the file, later
    monkeypatch.chdir(tmp_path.parent)
    x = np.random.default_rng(11).normal(size=(6, 16)).astype(np.float32)
    run = inst.run({"x": x})
    assert inst.parity({"x": x}, run.outputs) == 0.0
    full = {t.name: t for t in inst.model.graph.initializer}
    np.testing.assert_array_equal(numpy_helper.to_array(full["w1"]), p["w1"])


def test_the_model_is_not_read_back_from_a_file_that_changed(tmp_path):
    path, _ = _saved(tmp_path)
    inst = capture.Instrumented(path, attach_to="Relu")
    inst.session  # noqa: B018 (the proto's weights go)
    onnx.save(_mlp(seed=3)[0], path)
    with pytest.raises(onnx_state.errors.ModelError, match="changed since it was loaded"):
        inst.model  # noqa: B018


def test_the_loaded_proto_is_let_go_once_the_session_exists(tmp_path):
    """protobuf frees a message's memory only with the message: after the build nothing of
    the onnx_state side holds the loaded proto (its detached weights would stay resident)."""
    import sys

    path, p = _saved(tmp_path)
    inst = capture.Instrumented(path, attach_to="Relu")
    loaded = inst.original
    inst.session  # noqa: B018
    assert inst.original is not loaded and inst.index.model is inst.original
    assert sys.getrefcount(loaded) == 2  # `loaded` and the call's argument
    x = np.random.default_rng(12).normal(size=(4, 16)).astype(np.float32)
    expected = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    np.testing.assert_allclose(inst.run({"x": x}).outputs[0], expected, rtol=1e-5, atol=1e-5)
    assert inst.batch_axis("r", np.zeros((4, 64)), 4) == 0  # the new index knows the shapes
