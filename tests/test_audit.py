"""audit(): dead and always-on neurons, coverage and novelty equal numpy references; errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_state
from onnx_state.audit import audit
from onnx_state.errors import StoreError
from tests.models import make_model, numpy_conv
from tests.reference import reference_states


def dead_and_alive_model():
    """Conv with 5 channels: 0 is dead (bias -1), 1 always on (bias +1), 2-4 depend on x."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    w[:2] = 0
    bias = np.array([-1, 1, 0, 0, 0], np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4])],
        [("W", w), ("B", bias)],
    )
    return model, w, bias


def test_audit_finds_exactly_the_dead_and_always_on_neurons():
    model, w, bias = dead_and_alive_model()
    x = np.random.default_rng(8).standard_normal((60, 2, 6, 6)).astype(np.float32)
    result = audit(model, x, attach_to="Conv", top_k=2, batch_size=16)
    (layer,) = result.layers
    assert layer.dead == [0] and layer.always_on == [1]
    # independent: numpy conv, DeepXplore coverage, DeepGauge top-k coverage
    y = numpy_conv(x, w) + bias[None, :, None, None]
    assert layer.coverage == pytest.approx(np.mean((y > 0).any(axis=(0, 2, 3))), abs=1e-15)
    activity = y.mean(axis=(2, 3))
    top = np.argsort(-activity, axis=1)[:, :2]
    assert layer.topk_coverage == pytest.approx(len(np.unique(top)) / 5, abs=1e-15)


def test_novelty_rises_for_shifted_data_and_equals_a_set_reference(bundled, tmp_path):
    model, x, _ = bundled
    ref = onnx_state.analyze(model, x[:1000], attach_to=["Conv2d", "Linear"])
    ref.save(tmp_path / "ref.zarr")
    held = audit(
        model, x[1000:1400], reference=tmp_path / "ref.zarr", attach_to=["Conv2d", "Linear"]
    )
    inverted = audit(model, 1 - x[1000:1400], reference=tmp_path / "ref.zarr",
                     attach_to=["Conv2d", "Linear"])  # fmt: skip
    noise = np.random.default_rng(0).normal(0, 0.5, x[1000:1400].shape).astype(np.float32)
    noised = audit(model, x[1000:1400] + noise, reference=tmp_path / "ref.zarr",
                   attach_to=["Conv2d", "Linear"])  # fmt: skip
    for name in ("conv_1_post_states", "pred_post_states"):
        h = next(la for la in held.layers if la.name == name)
        for shifted in (inverted, noised):
            s = next(la for la in shifted.layers if la.name == name)
            assert s.novelty > 3 * h.novelty, (name, h.novelty, s.novelty)
            assert s.js_divergence > h.js_divergence
    # pred has one state per sample: per-sample novelty is membership, checked with a set
    from onnx_state.capture import Instrumented

    inst = Instrumented(model, attach_to=["Linear"])
    cap = inst.run({"x": x[1000:1400]}).captured
    states = reference_states(cap[inst.captures[0].tensor], 1)
    known = {r.tobytes() for r in ref.layer("pred").state_ids()}
    novel = np.array([r.tobytes() not in known for r in states])
    assert np.array_equal(held.sample_novelty["pred_post_states"], novel.astype(float))
    h = next(la for la in held.layers if la.name == "pred_post_states")
    assert h.novelty == pytest.approx(novel.mean(), abs=1e-15)


def test_audit_error_paths(bundled, tmp_path):
    model, x, _ = bundled
    onnx_state.analyze(model, x[:100], attach_to="Linear").save(tmp_path / "ref.zarr")
    with pytest.raises(StoreError, match="no layer"):
        audit(model, x[:50], reference=tmp_path / "ref.zarr", attach_to="Conv2d")
    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError):
        audit(model, x[:50], reference=tmp_path / "junk")


def test_an_audit_reads_back_from_its_json_and_refuses_a_corrupt_one():
    import json

    from onnx_state.audit import Audit
    from onnx_state.errors import StoreError
    from tests.models import conv_net, int_data

    model, _ = conv_net()
    a = audit(model, int_data(12), attach_to=["Conv", "Relu"])
    d = json.loads(json.dumps(a.to_dict()))
    assert Audit.from_dict(d).to_dict() == a.to_dict()
    d["layers"][0]["coverage"] = 2
    with pytest.raises(StoreError, match=r"layers\[0\] .*coverage"):
        Audit.from_dict(d)
