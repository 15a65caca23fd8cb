"""capture.weights: an instrumented model's weights reach onnxruntime as references to the
bytes of its own file, never serialized; anything that does not line up is left alone."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_state
from onnx_state import capture
from onnx_state.capture.weights import point_at_own_file, raw_data_spans
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


def test_spans_are_the_bytes_of_each_tensor_in_the_file(tmp_path):
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    proto = onnx.load(path)
    spans = raw_data_spans(data)
    assert [s[0] for s in spans] == [t.name for t in proto.graph.initializer]
    for tensor, (_, offset, length) in zip(proto.graph.initializer, spans):
        if tensor.raw_data:
            assert data[offset : offset + length] == tensor.raw_data
        else:  # w2 holds float_data
            assert (offset, length) == (-1, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda data: data[: len(data) - 7],  # truncated inside the graph
        lambda data: data + data,  # two graph fields: protobuf would merge them
        lambda data: data + b"\x0b",  # a group's start tag
    ],
    ids=["truncated", "two graphs", "group"],
)
def test_spans_refuse_what_they_cannot_read(tmp_path, make):
    path, _ = _saved(tmp_path)
    assert raw_data_spans(make(path.read_bytes())) is None


def test_pointed_model_runs_as_the_file_and_holds_no_weights(tmp_path):
    path, p = _saved(tmp_path)
    proto = capture.load_model(path)
    assert point_at_own_file(proto, path)
    by_name = {t.name: t for t in proto.graph.initializer}
    assert by_name["w1"].data_location == TensorProto.EXTERNAL and not by_name["w1"].raw_data
    assert by_name["b1"].raw_data  # small: kept
    assert len(by_name["w2"].float_data) == 64 * 8  # not raw_data: kept
    assert len(proto.SerializeToString()) < p["w1"].nbytes  # w1 is no longer in it
    session = capture.make_session(proto, model_dir=path.parent)
    x = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    expected = np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_analyze_reads_the_weights_from_the_file_and_counts_as_from_memory(tmp_path):
    path, p = _saved(tmp_path)
    x = np.random.default_rng(4).normal(size=(40, 16)).astype(np.float32)
    inst = capture.Instrumented(path, attach_to="Relu")
    inst.session  # noqa: B018 (built on first use)
    w1 = next(t for t in inst.original.graph.initializer if t.name == "w1")
    assert w1.data_location == TensorProto.EXTERNAL  # the proto dropped the weights
    full = next(t for t in inst.model.graph.initializer if t.name == "w1")
    np.testing.assert_array_equal(numpy_helper.to_array(full), p["w1"])  # `model` re-reads
    a = onnx_state.analyze(path, x, attach_to="Relu")
    b = onnx_state.analyze(_mlp()[0], x, attach_to="Relu")  # in memory: serialized
    assert a.layers[0] == b.layers[0]
    states = np.maximum(x @ p["w1"] + p["b1"], 0) > 0
    packed = np.packbits(states, axis=1, bitorder="little")
    _, counts = np.unique(packed, axis=0, return_counts=True)
    np.testing.assert_array_equal(np.sort(a.layers[0].counts()), np.sort(counts))


def test_a_file_that_changed_since_it_was_read_is_not_pointed_at(tmp_path):
    path, _ = _saved(tmp_path)
    proto = capture.load_model(path)
    before = proto.SerializeToString()
    onnx.save(_mlp(seed=1)[0], path)  # same layout, other weights
    assert not point_at_own_file(proto, path)
    assert proto.SerializeToString() == before


@pytest.mark.filterwarnings("ignore:The onnxtxt format is experimental")
def test_other_formats_and_links_are_left_alone(tmp_path):
    path, _ = _saved(tmp_path)
    proto = capture.load_model(path)
    before = proto.SerializeToString()
    link = tmp_path / "link.onnx"
    os.symlink(path, link)
    assert not point_at_own_file(proto, link)
    text = tmp_path / "m.onnxtxt"
    onnx.save(proto, text, format="onnxtxt")
    assert not point_at_own_file(capture.load_model(text), text)
    assert proto.SerializeToString() == before


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


def test_packed_bits_read_the_weights_from_the_file_too(tmp_path):
    model, _ = conv_net()  # G (2,880 bytes) is pointed at, W (432) stays in the proto
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    x = int_data(20)
    inst = capture.Instrumented(path, attach_to="Conv", pack=True)
    inst.session  # noqa: B018 (built on first use)
    g = next(t for t in inst.original.graph.initializer if t.name == "G")
    assert g.data_location == TensorProto.EXTERNAL and inst.captures[0].packed
    a = onnx_state.analyze(path, x, attach_to="Conv", pack=True)
    b = onnx_state.analyze(model, x, attach_to="Conv")
    assert a.layers[0] == b.layers[0]
