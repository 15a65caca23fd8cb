"""compare() and audit(): figures equal numpy references; gating exit codes; error paths."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnx_state
from onnx_state.audit import audit
from onnx_state.cli import main
from onnx_state.compare import compare
from onnx_state.errors import InputError, LayerNotFoundError, StoreError
from tests.models import conv_net, int_data, make_model, numpy_conv
from tests.reference import reference_states


# -- compare ----------------------------------------------------------------------------------
def test_model_against_itself_agrees_completely(bundled):
    model, x, y = bundled
    c = compare(model, model, x[:300], labels=y[:300])
    for p in c.pairs:
        assert p.rule == "name" and p.state_agreement == 1.0 and p.mean_hamming == 0
        assert p.js_divergence == 0 and p.cosine == pytest.approx(1.0) and p.max_abs_diff == 0
    assert c.top1_agreement == 1.0 and c.accuracy_a == c.accuracy_b and c.first_divergent is None


def perturbed(seed=0):
    model, params = conv_net(seed)
    w2 = params["W"].copy()
    w2[2] = -w2[2]  # flip one output channel
    b = make_model(
        list(model.graph.node), list(model.graph.input), list(model.graph.output),
        [("W", w2), ("G", params["G"])],
    )  # fmt: skip
    return model, params, b, w2


def test_agreement_figures_equal_a_numpy_reference():
    a, params, b, w2 = perturbed()
    x = int_data(30)
    c = compare(a, b, x, attach_to=["Conv"], batch_size=7)
    (p,) = c.pairs
    ca = np.moveaxis(numpy_conv(x, params["W"]), 1, -1).reshape(-1, 4)
    cb = np.moveaxis(numpy_conv(x, w2), 1, -1).reshape(-1, 4)
    fa, fb = ca > 0, cb > 0
    assert p.state_agreement == pytest.approx(np.mean(np.all(fa == fb, axis=1)), abs=1e-15)
    assert p.mean_hamming == pytest.approx(np.mean(np.sum(fa != fb, axis=1)), abs=1e-12)
    assert p.neuron_agreement_min == pytest.approx(np.min(np.mean(fa == fb, axis=0)), abs=1e-12)
    assert p.max_abs_diff == pytest.approx(np.max(np.abs(ca - cb)), abs=1e-6)
    cos = np.sum(ca * cb) / np.sqrt(np.sum(ca * ca) * np.sum(cb * cb))
    assert p.cosine == pytest.approx(cos, abs=1e-9)
    # Jensen–Shannon divergence by scipy, which returns its square root
    from scipy.spatial.distance import jensenshannon

    ids_a = [r.tobytes() for r in np.packbits(fa, axis=1, bitorder="little")]
    ids_b = [r.tobytes() for r in np.packbits(fb, axis=1, bitorder="little")]
    keys = sorted(set(ids_a) | set(ids_b))
    pa = np.array([ids_a.count(k) for k in keys], float)
    pb = np.array([ids_b.count(k) for k in keys], float)
    assert p.js_divergence == pytest.approx(jensenshannon(pa, pb, base=2) ** 2, abs=1e-12)
    assert c.first_divergent == "conv_post_states"


def nhwc_twin():
    """The conv net fed channels-last: Transpose in, the same Conv, Transpose out."""
    model, params = conv_net()
    nodes = [
        helper.make_node("Transpose", ["xl"], ["x"], name="to_nchw", perm=[0, 3, 1, 2]),
        *model.graph.node,
    ]
    return model, make_model(
        nodes,
        [helper.make_tensor_value_info("xl", TensorProto.FLOAT, ["N", 8, 8, 3])],
        list(model.graph.output),
        [("W", params["W"]), ("G", params["G"])],
    )


def test_layouts_are_aligned_and_inputs_permuted():
    a, b = nhwc_twin()
    c = compare(a, b, int_data(20), attach_to=["Conv", "MatMul"])
    assert [p.state_agreement for p in c.pairs] == [1.0, 1.0]


def test_order_rule_and_mapping_rule():
    a, _params, b, _ = perturbed()
    for node in b.graph.node:
        node.name = "renamed_" + node.name
    c = compare(a, b, int_data(10), attach_to=["Conv", "MatMul"])
    assert [p.rule for p in c.pairs] == ["order", "order"]
    c = compare(a, b, int_data(10), attach_to=["Conv"], mapping={"conv": "renamed_conv"})
    assert [(p.rule, p.b) for p in c.pairs] == [("mapping", "renamed_conv_post_states")]


def test_fp32_vs_int8_qdq_is_measured_per_layer(bundled, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model, x, y = bundled

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x[i : i + 100]} for i in range(0, 300, 100)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(model, tmp_path / "q.onnx", Reader(), quant_format=QuantFormat.QDQ)
    c = compare(model, tmp_path / "q.onnx", x[:400], labels=y[:400])
    assert [p.rule for p in c.pairs] == ["name"] * 4
    assert all(0.3 < p.state_agreement < 1 for p in c.pairs)
    assert c.top1_agreement > 0.95


def test_compare_error_paths(bundled):
    model, x, _ = bundled
    a, _ = conv_net()
    with pytest.raises(InputError, match="give B its own data"):
        compare(a, model, int_data(4))
    with pytest.raises(LayerNotFoundError, match="match layers of B"):
        compare(a, model, int_data(4), attach_to=["Relu"], attach_to_b=["Elu"],
                data_b=x[:4])  # fmt: skip


# -- audit ------------------------------------------------------------------------------------
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


def test_cli_gates_exit_1_and_bad_input_exits_2(bundled, tmp_path):
    model, x, _ = bundled
    np.save(tmp_path / "x.npy", x[:200])
    r = CliRunner().invoke(main, ["audit", model, "--data", str(tmp_path / "x.npy"),
                                  "--min-coverage", "1.01"])  # fmt: skip
    assert r.exit_code == 1 and "rule(s) violated" in r.output
    (tmp_path / "rules.json").write_text(json.dumps({"max_dead_fraction": 0.5}))
    r = CliRunner().invoke(main, ["audit", model, "--data", str(tmp_path / "x.npy"),
                                  "--rules", str(tmp_path / "rules.json"), "--json"])  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.output)["violations"] == []
    (tmp_path / "bad.json").write_text(json.dumps({"max_deadness": 0.5}))
    r = CliRunner().invoke(main, ["audit", model, "--data", str(tmp_path / "x.npy"),
                                  "--rules", str(tmp_path / "bad.json")])  # fmt: skip
    assert r.exit_code == 2 and "unknown rule(s) max_deadness" in r.output
    r = CliRunner().invoke(main, ["compare", model, model, "--data", str(tmp_path / "x.npy"),
                                  "--min-state-agreement", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.output)["first_divergent"] is None
    a, _ = conv_net()
    onnx.save(a, tmp_path / "a.onnx")
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.onnx"), model, "--data",
                                  str(tmp_path / "x.npy")])  # fmt: skip
    assert r.exit_code == 2 and "Traceback" not in r.output
