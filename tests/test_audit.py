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


# -- Hamming novelty, detection, redundancy, class information, windows ------------------------
def planted_model():
    """Gemm 4 -> 7: units 4, 5 copy 0 and 1, unit 6 is the negation of 2 (complementary)."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 7)).astype(np.float32)
    w[:, 4], w[:, 5], w[:, 6] = w[:, 0], w[:, 1], -w[:, 2]
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="dense")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
        [("W", w)],
    )
    return model, w


def test_planted_redundant_neurons_are_found_exactly():
    model, w = planted_model()
    x = np.random.default_rng(12).standard_normal((300, 4)).astype(np.float32)
    (la,) = audit(model, x, attach_to="MatMul", batch_size=64).layers
    assert la.redundant_groups == [[0, 4], [1, 5], [2, 6]]
    assert la.complementary == [6]
    assert la.effective_neurons == 4
    fired = (x @ w) > 0
    _, counts = np.unique(fired[:, [0, 1, 2, 3]], axis=0, return_counts=True)
    p = counts / counts.sum()
    assert la.effective_efficiency == pytest.approx(-np.sum(p * np.log2(p)) / 4, abs=1e-12)


def test_class_information_and_windows_equal_manual_computations(bundled, tmp_path):
    model, x, y = bundled
    ref = onnx_state.analyze(model, x[:600], attach_to="Linear", parity=False)
    data, labels = x[600:850], y[600:850]
    a = audit(model, data, reference=ref, labels=labels, window=100, attach_to="Linear")
    (la,) = a.layers
    from onnx_state.capture import Instrumented

    inst = Instrumented(model, attach_to=["Linear"])
    states = reference_states(inst.run({"x": data}).captured[inst.captures[0].tensor], 1)
    rows = [r.tobytes() for r in states]
    keys = sorted(set(rows))
    joint = np.zeros((len(keys), 10))
    for r, c in zip(rows, labels):
        joint[keys.index(r), c] += 1
    n = joint.sum()

    def h(v):
        p = v[v > 0] / v.sum()
        return -np.sum(p * np.log2(p))

    plug = h(joint.sum(1)) - sum(joint[:, c].sum() / n * h(joint[:, c]) for c in range(10))
    k_c = sum((joint[:, c] > 0).sum() - 1 for c in range(10))
    assert la.mutual_information == pytest.approx(plug, abs=1e-12)
    assert la.mutual_information_mm == pytest.approx(
        plug + ((len(keys) - 1) - k_c) / (2 * n * np.log(2)), abs=1e-12
    )
    assert la.class_states == [int((joint[:, c] > 0).sum()) for c in range(10)]
    # windows: the same figures as auditing each slice on its own
    assert [(w.start, w.stop) for w in a.windows] == [(0, 100), (100, 200), (200, 250)]
    for w in a.windows:
        alone = audit(model, data[w.start : w.stop], reference=ref, attach_to="Linear")
        (s,) = alone.layers
        name = s.name
        assert w.novelty[name] == pytest.approx(s.novelty, abs=1e-15)
        assert w.js_divergence[name] == pytest.approx(s.js_divergence, abs=1e-12)
        assert w.efficiency[name] == pytest.approx(s.efficiency, abs=1e-12)
        assert w.ood_fraction == pytest.approx(alone.ood_fraction, abs=1e-15)
    gate = 0.5 * max(w.novelty[name] for w in a.windows) + 0.5 * min(
        w.novelty[name] for w in a.windows
    )
    first = a.first_window(max_novelty=gate)
    expected = next(i for i, w in enumerate(a.windows) if w.novelty[name] > gate)
    assert first is not None and first[0] == expected
    assert any(v.startswith(f"window {expected} ") for v in a.violations(max_novelty=gate))


def test_detection_equals_scikit_learn_on_the_same_scores(bundled, tmp_path):
    skm = pytest.importorskip("sklearn.metrics")
    model, x, y = bundled
    layers = ["Conv2d", "Linear"]
    onnx_state.analyze(model, x[:500], labels=y[:500], attach_to=layers, parity=False).save(
        tmp_path / "ref.zarr"
    )
    ref = tmp_path / "ref.zarr"
    held, cal = x[1437:1557], x[1557:1637]
    ood = np.random.default_rng(5).uniform(0, 1, held.shape).astype(np.float32)
    a = audit(model, held, reference=ref, ood_data=ood, calibration=cal, attach_to=layers)
    o = audit(model, ood, reference=ref, calibration=cal, attach_to=layers)  # the OOD scores
    det = a.detection
    y_true = np.r_[np.zeros(len(held)), np.ones(len(ood))]
    scores = np.r_[a.sample_scores, o.sample_scores]
    assert det.auroc == pytest.approx(skm.roc_auc_score(y_true, scores), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(1 - y_true, -scores, drop_intermediate=False)
    assert det.fpr95 == pytest.approx(fpr[np.searchsorted(tpr, 0.95 - 1e-12)], abs=1e-12)
    assert det.ood_fraction == pytest.approx(o.ood_fraction, abs=1e-15)
    # the baseline: 1 - max softmax of the model's own logits, computed here with numpy
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def msp(batch):
        z = sess.run(None, {sess.get_inputs()[0].name: batch})[0].astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).max(1)

    base = np.r_[1 - msp(held), 1 - msp(ood)]
    assert det.msp_auroc == pytest.approx(skm.roc_auc_score(y_true, base), abs=1e-9)
    assert det.auroc > 0.9  # uniform noise is far from every digit state
    # thresholds: the quantile of the calibration digits' own distances
    for la, d in zip(a.layers, _calibration_distances(model, ref, cal, layers)):
        assert la.hamming_threshold == np.sort(d)[int(np.ceil(0.95 * len(d))) - 1]
    # gates
    assert a.violations(min_auroc=1.01) and not a.violations(min_auroc=0.5)
    assert a.violations(max_ood_fraction=-1) and not a.violations(max_ood_fraction=1)
    # exact mode keeps the strict membership score
    e = audit(model, held, reference=ref, ood_data=ood, novelty="exact", attach_to=layers)
    strict = np.mean([e.sample_novelty[la.name] for la in e.layers], axis=0)
    assert np.array_equal(e.sample_scores, strict) and e.detection.score == "exact"


def _calibration_distances(model, ref, cal, layers):
    c = audit(model, cal, reference=ref, attach_to=layers)
    return [c.sample_distance[la.name] for la in c.layers]


def test_new_fields_read_back_and_bad_options_are_one_line_errors(bundled, tmp_path):
    import json

    from onnx_state.audit import Audit
    from onnx_state.errors import InputError

    model, x, y = bundled
    ref = onnx_state.analyze(model, x[:300], labels=y[:300], attach_to="Linear", parity=False)
    a = audit(model, x[300:400], reference=ref, labels=y[300:400], window=40,
              ood_data=1 - x[300:400], attach_to="Linear")  # fmt: skip
    d = json.loads(json.dumps(a.to_dict()))
    assert Audit.from_dict(d).to_dict() == a.to_dict()
    d["detection"]["auroc"] = 1.5
    with pytest.raises(StoreError, match="detection auroc"):
        Audit.from_dict(d)
    with pytest.raises(InputError, match="Did you mean: hamming"):
        audit(model, x[:10], reference=ref, novelty="hammming", attach_to="Linear")
    with pytest.raises(InputError, match="needs a reference"):
        audit(model, x[:10], ood_data=x[:10], attach_to="Linear")


def test_cli_reports_detection_and_windows_and_gates_exit_1(bundled, tmp_path):
    import json

    from tests.cli import run_cli

    model, x, y = bundled
    np.save(tmp_path / "train.npy", x[:300])
    np.save(tmp_path / "train_y.npy", y[:300])
    np.save(tmp_path / "held.npy", x[1437:1517])
    np.save(tmp_path / "ood.npy", 1 - x[1437:1517])
    ref, t = tmp_path / "ref.zarr", tmp_path
    r = run_cli("analyze", model, "--data", t / "train.npy", "--labels", t / "train_y.npy",
                "--attach-to", "Linear", "--output", ref, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    args = ["audit", model, "--data", t / "held.npy", "--reference", ref,
            "--ood-data", t / "ood.npy", "--window", "40", "--attach-to", "Linear"]  # fmt: skip
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    assert "max softmax probability" in r.output and "windows of 40 samples" in r.output
    r = run_cli(*args, "--json")
    d = json.loads(r.output)
    assert set(d["detection"]) >= {"auroc", "fpr95", "msp_auroc", "msp_fpr95"}
    assert [w["start"] for w in d["windows"]] == [0, 40] and d["violations"] == []
    r = run_cli(*args, "--min-auroc", "1.01", "--max-ood-fraction", "-1")
    assert r.exit_code == 1
    assert "novelty AUROC" in r.output and "first to cross a gate" in r.output
    r = run_cli("audit", model, "--data", tmp_path / "held.npy", "--ood-data",
                tmp_path / "ood.npy", "--attach-to", "Linear")  # fmt: skip
    assert r.exit_code == 2 and "needs a reference" in r.output


def test_hamming_distances_by_predicted_or_given_class_equal_brute_force(bundled):
    from onnx_state.capture import Instrumented

    model, x, y = bundled
    ref = onnx_state.analyze(model, x[:400], labels=y[:400], attach_to="Linear", parity=False)
    (r,) = ref.layers
    bits = np.unpackbits(r.state_ids(), axis=1, bitorder="little")[:, :10]
    table = r.class_counts
    data, labels = x[1500:1560], y[1500:1560]
    inst = Instrumented(model, attach_to=["Linear"])
    run = inst.run({"x": data})
    states = np.unpackbits(reference_states(run.captured[inst.captures[0].tensor], 1), axis=1,
                           bitorder="little")[:, :10]  # fmt: skip
    predicted = run.outputs[0].argmax(axis=1)

    def nearest(state, c):
        rows = table[table[:, 1] == c, 0]
        return (bits[rows] != state).sum(axis=1).min()

    by_pred = audit(model, data, reference=ref, attach_to="Linear")
    by_label = audit(model, data, reference=ref, labels=labels, class_from="labels",
                     attach_to="Linear")  # fmt: skip
    anyclass = audit(model, data, reference=ref, by_class=False, attach_to="Linear")
    name = r.name
    assert np.array_equal(by_pred.sample_distance[name],
                          [nearest(s, c) for s, c in zip(states, predicted)])  # fmt: skip
    assert np.array_equal(by_label.sample_distance[name],
                          [nearest(s, c) for s, c in zip(states, labels)])  # fmt: skip
    assert np.array_equal(anyclass.sample_distance[name],
                          [(bits != s).sum(axis=1).min() for s in states])  # fmt: skip
    from onnx_state.errors import InputError

    with pytest.raises(InputError, match="needs labels"):
        audit(model, data, reference=ref, class_from="labels", attach_to="Linear")


def test_gates_and_options_that_could_never_act_are_refused(bundled):
    """A gate whose figure was not computed, a window without a reference, votes out of range
    and calibration in exact mode: one-line errors, never a silent pass."""
    from onnx_state.errors import InputError

    model, x, y = bundled
    ref = onnx_state.analyze(model, x[:200], labels=y[:200], attach_to="Linear", parity=False)
    plain = audit(model, x[200:260], attach_to="Linear")
    with pytest.raises(InputError, match="--max-js needs --reference"):
        plain.violations(max_js=0.1)
    with_ref = audit(model, x[200:260], reference=ref, attach_to="Linear")
    with pytest.raises(InputError, match="--min-auroc needs --ood-data"):
        with_ref.violations(min_auroc=0.9)
    exact = audit(model, x[200:260], reference=ref, novelty="exact", attach_to="Linear")
    with pytest.raises(InputError, match="--max-ood-fraction needs Hamming novelty"):
        exact.violations(max_ood_fraction=0.0)
    with pytest.raises(InputError, match=r"window .* needs a reference"):
        audit(model, x[:40], window=20, attach_to="Linear")
    with pytest.raises(InputError, match="min_votes must be between 1 and the 1"):
        audit(model, x[:40], reference=ref, min_votes=3, attach_to="Linear")
    with pytest.raises(InputError, match="exact novelty has none"):
        audit(model, x[:40], reference=ref, novelty="exact", calibration=x[:20],
              attach_to="Linear")  # fmt: skip


def _conv_of_width(width: int):
    w = np.random.default_rng(width).standard_normal((width, 2, 1, 1)).astype(np.float32)
    vi = helper.make_tensor_value_info
    return make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")],
        [vi("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [vi("y", TensorProto.FLOAT, ["N", width, 3, 3])],
        [("W", w)],
    )


@pytest.mark.parametrize("novelty", ["hamming", "exact"])
def test_a_reference_of_another_width_is_refused_naming_both_widths(novelty):
    x = np.random.default_rng(2).standard_normal((10, 2, 3, 3)).astype(np.float32)
    ref = onnx_state.analyze(_conv_of_width(12), x, attach_to=["Conv"])
    with pytest.raises(StoreError, match=r"conv_post_states has 4 neurons here but 12 in the"):
        audit(_conv_of_width(4), x, reference=ref, attach_to=["Conv"], novelty=novelty)
