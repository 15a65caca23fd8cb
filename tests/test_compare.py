"""compare(): agreement figures equal numpy references; layer matching; layouts; errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_state.compare import compare
from onnx_state.errors import InputError, LayerNotFoundError
from tests.models import conv_net, int_data, make_model, numpy_conv


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


def test_compare_takes_a_string_and_maps_layers_on_both_sides():
    model, _ = conv_net()
    c = compare(model, model, int_data(6), attach_to="Conv", mapping={"relu": "relu"})
    assert [(p.a, p.rule) for p in c.pairs] == [
        ("conv_post_states", "name"), ("relu_post_states", "mapping"),
    ]  # fmt: skip
    with pytest.raises(InputError, match="labels"):
        compare(model, model, int_data(6), labels=np.zeros(3, int))


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


def test_the_two_models_run_one_after_the_other(monkeypatch):
    import threading

    from onnx_state.capture import Instrumented
    from onnx_state.count import engine

    # A spare core would let counting overlap the next run; B must not overlap A.
    monkeypatch.setattr(engine, "available_cpus", lambda: 3)
    threads = set()
    original = Instrumented.run

    def run(self, batch, samples=None):
        threads.add(threading.current_thread() is threading.main_thread())
        return original(self, batch, samples)

    monkeypatch.setattr(Instrumented, "run", run)
    model, _ = conv_net()
    c = compare(model, model, int_data(20), attach_to=["Conv"], batch_size=6, threads=1)
    assert threads == {True} and c.pairs[0].state_agreement == 1.0


def test_a_comparison_reads_back_from_its_json_and_refuses_a_corrupt_one():
    import json

    from onnx_state.compare import Comparison
    from onnx_state.errors import StoreError

    model, _ = conv_net()
    c = compare(model, model, int_data(12), attach_to=["Conv", "Relu"], labels=np.arange(12) % 5)
    d = json.loads(json.dumps(c.to_dict()))
    back = Comparison.from_dict(d)
    assert back.to_dict() == c.to_dict()
    d["pairs"][0]["state_agreement"] = 1.5
    with pytest.raises(StoreError, match=r"pairs\[0\] .*state_agreement"):
        Comparison.from_dict(d)
    with pytest.raises(StoreError, match="schema version"):
        Comparison.from_dict({**c.to_dict(), "schema_version": 9})


def sequence_twins():
    """One dense layer over a sequence: A keeps samples first (N, 5, 4), B runs time-first
    (5, N, 4), as a Keras LSTM export does, and transposes back for its output."""
    w = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    vi = helper.make_tensor_value_info
    a = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="dense")],
        [vi("x", TensorProto.FLOAT, ["N", 5, 3])],
        [vi("y", TensorProto.FLOAT, ["N", 5, 4])],
        [("W", w)],
    )
    b = make_model(
        [
            helper.make_node("Transpose", ["x"], ["xt"], name="time_first", perm=[1, 0, 2]),
            helper.make_node("MatMul", ["xt", "W"], ["yt"], name="dense"),
            helper.make_node("Transpose", ["yt"], ["y"], name="samples_first", perm=[1, 0, 2]),
        ],
        [vi("x", TensorProto.FLOAT, ["N", 5, 3])],
        [vi("y", TensorProto.FLOAT, ["N", 5, 4])],
        [("W", w)],
    )
    return a, b, w


def test_states_pair_by_sample_when_one_model_keeps_its_samples_elsewhere():
    """B's (5, N, 4) rows come out step by step, A's sample by sample: paired as they came,
    the same model agreed 12.5 % on a real torch/Keras LSTM pair."""
    a, b, w = sequence_twins()
    x = np.random.default_rng(8).standard_normal((12, 5, 3)).astype(np.float32)
    c = compare(a, b, x, attach_to=["MatMul"], batch_size=4)
    (p,) = c.pairs
    assert p.state_agreement == 1.0 and p.mean_hamming == 0 and p.max_abs_diff == 0
    # and against a perturbed B: the numpy reference, samples aligned
    b.graph.initializer[0].CopyFrom(numpy_helper.from_array(-w, "W"))
    (p,) = compare(a, b, x, attach_to=["MatMul"], batch_size=4).pairs
    fa = (x @ w > 0).reshape(-1, 4)
    fb = (x @ -w > 0).reshape(-1, 4)
    assert p.state_agreement == pytest.approx(np.mean(np.all(fa == fb, axis=1)), abs=1e-15)
    assert p.mean_hamming == pytest.approx(np.mean(np.sum(fa != fb, axis=1)), abs=1e-12)


def test_a_channels_last_twin_with_the_same_input_name_is_transposed_too():
    """PyTorch and Keras exports both name their input x: the names matched, so B got A's
    NCHW batches unchanged and was refused."""
    a, b = nhwc_twin()
    b.graph.input[0].name = "x"
    b.graph.node[0].input[0] = "x"
    b.graph.node[0].output[0] = "x_nchw"
    for node in b.graph.node[1:]:
        node.input[:] = ["x_nchw" if i == "x" else i for i in node.input]
    c = compare(a, b, int_data(20), attach_to=["Conv", "MatMul"])
    assert [p.state_agreement for p in c.pairs] == [1.0, 1.0]
