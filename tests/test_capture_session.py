"""capture.session: the instrumented session, parity, optimization levels, providers, the
large-model path, progress."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnx_state
from onnx_state import capture
from onnx_state.errors import InputError
from tests.models import conv_net, int_data
from tests.reference import assert_states, reference_counts


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_optimization_levels_give_the_same_states(net, level):
    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to="Relu", optimization=level)
    assert_states(a.layers[0], *reference_counts(ref["r"], 1))


def test_unknown_provider_and_optimization_level(net):
    model, _, x, _ = net
    with pytest.raises(InputError, match="not available"):
        onnx_state.analyze(model, x, attach_to="Conv", providers=["NopeExecutionProvider"])
    with pytest.raises(InputError, match="optimization"):
        onnx_state.analyze(model, x, attach_to="Conv", optimization="max")


def test_parity_reports_the_largest_difference_of_the_final_outputs(net):
    model, _, x, _ = net
    inst = onnx_state.capture.Instrumented(model, attach_to="Conv")
    batch = {"x": x[:5]}
    finals = inst.run(batch).outputs
    assert inst.parity(batch) == 0.0
    assert inst.parity(batch, finals) == 0.0
    shifted = [f.copy() for f in finals]
    shifted[0][2, 1] += 0.75
    assert inst.parity(batch, shifted) == 0.75


# -- models over the 2 GB protobuf limit: by path, external data kept -------------------------
def test_large_model_path_with_external_data(net, tmp_path, monkeypatch):
    model, _, x, ref = net
    path = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save turns the proto's own tensors into references
    onnx.save(saved, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    monkeypatch.setattr(capture.load, "LARGE_MODEL_BYTES", 10)  # force the over-2-GB code path
    a = onnx_state.analyze(path, x, attach_to="Relu")
    assert_states(a.layers[0], *reference_counts(ref["r"], 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.bin", "ext.onnx"]


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


def test_progress_bar_only_when_asked(net, capsys):
    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to="Conv", batch_size=9, progress=True)
    assert "batch" in capsys.readouterr().err
    onnx_state.analyze(model, x, attach_to="Conv", batch_size=9, progress=False)
    assert capsys.readouterr().err == ""


def test_parity_never_holds_two_sessions_and_a_file_is_not_serialized(net, tmp_path, monkeypatch):
    """The original's session for the parity check is built from the file and released
    before the instrumented one exists; the instrumented model reaches onnxruntime without
    its weights (they are read from the file: see capture.weights)."""
    from onnx_state.capture import session as session_module

    model, _, x, _ = net
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    alive, peak, built = [0], [0], []
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    real = session_module.make_session

    class Tracked:
        def __init__(self, inner):
            self.inner = inner
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])

        def run(self, *args):
            return self.inner.run(*args)

        def __del__(self):
            alive[0] -= 1

    def tracked(model, *args, **kwargs):
        built.append("path" if isinstance(model, str) else "proto")
        return Tracked(real(model, *args, **kwargs))

    serialized = []
    real_serialize = onnx.ModelProto.SerializeToString

    def counting(self, *args, **kwargs):
        data = real_serialize(self, *args, **kwargs)
        if len(data) > weights:  # a copy with the weights (shape inference gets none)
            serialized.append(len(data))
        return data

    monkeypatch.setattr(session_module, "make_session", tracked)
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", counting)
    result = onnx_state.analyze(path, x, batch_size=10)
    assert result.parity_max_abs_diff is not None
    assert built == ["path", "proto"]
    assert peak[0] == 1
    assert serialized == []  # no copy with the weights (the hash reads the file too)


def test_the_model_hash_covers_external_weights(tmp_path):
    model, _ = conv_net()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin",
              size_threshold=0)  # fmt: skip
    first = capture.Instrumented(tmp_path / "m.onnx").sha256
    data = bytearray((tmp_path / "w.bin").read_bytes())
    data[5] ^= 1  # one bit of one weight
    (tmp_path / "w.bin").write_bytes(bytes(data))
    second = capture.Instrumented(tmp_path / "m.onnx").sha256
    assert first != second
    import hashlib

    expected = hashlib.sha256((tmp_path / "m.onnx").read_bytes() + bytes(data)).hexdigest()
    assert second == expected  # the file, then every referenced byte range (one file here)
