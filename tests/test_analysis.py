"""analyze() end to end: states equal a numpy reference; data sources; store; error paths."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_state
from onnx_state import capture, store
from onnx_state.errors import InputError, StoreError
from tests.models import conv_net, conv_net_reference, int_data, make_model
from tests.reference import reference_counts


def check_layer(result, activation, axis):
    ids, counts = reference_counts(activation, axis)
    np.testing.assert_array_equal(result.state_ids(), ids)
    np.testing.assert_array_equal(result.counts(), counts)
    assert result.state_count == counts.sum()


@pytest.fixture(scope="module")
def net():
    model, params = conv_net()
    x = int_data(53)
    return model, params, x, conv_net_reference(x, params)


def test_states_equal_the_numpy_reference_for_every_layer(net):
    model, _, x, ref = net
    a = onnx_state.analyze(
        model, x, attach_to=["Conv", "Relu", "MatMul"], method="both", batch_size=7
    )
    by_name = {r.name: r for r in a.layers}
    check_layer(by_name["conv_pre_states"], ref["x"], 1)
    check_layer(by_name["conv_post_states"], ref["c"], 1)
    check_layer(by_name["relu_post_states"], ref["r"], 1)
    check_layer(by_name["fc_pre_states"], ref["f"], 1)
    check_layer(by_name["fc_post_states"], ref["y"], 1)
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
    check_layer(layer, ref["c"], 1)  # same states as the conv output in NCHW


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
    check_layer(a.layers[0], y, 1)
    assert a.accuracy == pytest.approx(np.mean(np.argmax(y, 1) == labels), abs=1e-15)
    assert a.aiq(2) == pytest.approx((a.network_efficiency() * a.accuracy**2) ** (1 / 3), abs=1e-12)
    onehot = np.eye(4)[labels]
    assert onnx_state.analyze(model, x, attach_to="Gemm", labels=onehot).accuracy == a.accuracy


def test_every_data_source_gives_the_same_result(net, tmp_path):
    import zarr

    model, _, x, _ = net
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "d.npz", inputs=x, other=x[:3])
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(10, 3, 8, 8))
    sources = [
        x,
        {"x": x},
        tmp_path / "x.npy",
        f"{tmp_path / 'd.npz'}:inputs",
        str(tmp_path / "x.zarr"),
        zarr.open_array(str(tmp_path / "x.zarr")),
        (x[i : i + 9] for i in range(0, len(x), 9)),
        [{"x": x[:30]}, {"x": x[30:]}],
    ]
    results = [onnx_state.analyze(model, s, attach_to="Conv", batch_size=11) for s in sources]
    first = results[0]
    for r in results[1:]:
        np.testing.assert_array_equal(r.layers[0].counts(), first.layers[0].counts())
        assert r.data_fingerprint == first.data_fingerprint
        assert r.n_samples == 53


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"image": np.zeros((2, 3, 8, 8), np.float32)},
            "missing input(s) x; unknown input(s) image",
        ),
        (np.zeros((2, 3, 8), np.float32), "rank 3"),
        (
            np.zeros((2, 1, 8, 8), np.float32),
            "samples of shape (1, 8, 8) but the model expects (N, 3, 8, 8)",
        ),
        (np.zeros((2, 3, 8, 8), np.float64), "float64 but the model expects float32"),
        (np.zeros((0, 3, 8, 8), np.float32), "no samples"),
        ([], "no batches"),
        ({}, "data dict is empty"),
        ([np.zeros((0, 3, 8, 8), np.float32)], "only empty ones"),
        (42, "cannot read data of type int"),
    ],
)
def test_input_mismatches_say_exactly_what_is_wrong(net, data, message):
    model = net[0]
    with pytest.raises(InputError) as err:
        onnx_state.analyze(model, data, attach_to="Conv")
    assert message in str(err.value)


def test_pickled_npz_is_refused(tmp_path, net):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="object arrays are refused"):
        onnx_state.analyze(net[0], tmp_path / "o.npy", attach_to="Conv")


def test_label_count_mismatch(net):
    model, _, x, _ = net
    with pytest.raises(InputError, match="labels"):
        onnx_state.analyze(model, x, attach_to="Conv", labels=np.zeros(10, int))


def test_nan_activations_warn_with_their_count(net):
    model, _, x, _ = net
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"\d+ NaN activations"):
        a = onnx_state.analyze(model, bad, attach_to="Conv", method="before")
    assert a.layers[0].nan_count == 1


def test_save_and_load_round_trip(net, tmp_path):
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], labels=np.zeros(53, int))
    a.save(tmp_path / "r.zarr")
    b = onnx_state.Analysis.load(tmp_path / "r.zarr")
    assert b.to_dict() == a.to_dict()
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.state_ids(), lb.state_ids())
        np.testing.assert_array_equal(la.counts(), lb.counts())
    assert a.layers == b.layers  # equality compares the states too
    other = dataclasses.replace(a.layers[0], states=b.layers[1].states)
    assert other != a.layers[0]
    with pytest.raises(InputError, match="already exists"):
        a.save(tmp_path / "r.zarr")
    a.save(tmp_path / "r.zarr", overwrite=True)


def test_interrupted_save_leaves_nothing_that_loads(net, tmp_path, monkeypatch):
    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to="Conv")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_plain", boom)  # dies mid-write, once the group exists
    with pytest.raises(KeyboardInterrupt):
        a.save(tmp_path / "r.zarr")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_foreign_stores_are_refused(net, tmp_path):
    import zarr

    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to="Conv").save(tmp_path / "ok.zarr")
    shutil.copytree(tmp_path / "ok.zarr", tmp_path / "partial.zarr")
    g = zarr.open_group(str(tmp_path / "partial.zarr"), mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        onnx_state.Analysis.load(tmp_path / "partial.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an onnx_state results store"):
        onnx_state.Analysis.load(tmp_path / "other.zarr")
    g = zarr.open_group(str(tmp_path / "ok.zarr"), mode="r+")
    g.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99"):
        onnx_state.Analysis.load(tmp_path / "ok.zarr")
    with pytest.raises(StoreError, match="does not exist"):
        onnx_state.Analysis.load(tmp_path / "missing.zarr")


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_optimization_levels_give_the_same_states(net, level):
    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to="Relu", optimization=level)
    check_layer(a.layers[0], ref["r"], 1)


def test_unknown_provider_and_optimization_level(net):
    model, _, x, _ = net
    with pytest.raises(InputError, match="not available"):
        onnx_state.analyze(model, x, attach_to="Conv", providers=["NopeExecutionProvider"])
    with pytest.raises(InputError, match="optimization"):
        onnx_state.analyze(model, x, attach_to="Conv", optimization="max")


def test_large_model_path_with_external_data(net, tmp_path, monkeypatch):
    model, _, x, ref = net
    path = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save turns the proto's own tensors into references
    onnx.save(saved, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    monkeypatch.setattr(capture.load, "LARGE_MODEL_BYTES", 10)  # force the over-2-GB code path
    a = onnx_state.analyze(path, x, attach_to="Relu")
    check_layer(a.layers[0], ref["r"], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.bin", "ext.onnx"]


def test_bundled_torch_export_matches_plain_onnxruntime_outputs():
    """The rewriter picks the right tensors: compare with outputs chosen by hand."""
    import onnxruntime as ort

    from onnx_state.data import example_paths

    model_path, data, _labels = example_paths()
    x = capture.load_array(data)[:300]
    a = onnx_state.analyze(model_path, x, attach_to=["Conv2d", "Linear"], batch_size=64)
    model = onnx.load(model_path)
    wanted = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    for name in wanted[:-1]:  # the Gemm output is already a graph output
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    assert [r.name for r in a.layers] == [
        "conv_1_post_states", "conv_2_post_states", "conv_3_post_states", "pred_post_states",
    ]  # fmt: skip
    for result, tensor in zip(a.layers, wanted):
        check_layer(result, values[tensor], 1)


def test_keep_outputs_returns_the_final_outputs_in_order(net):
    model, _, x, ref = net
    a = onnx_state.analyze(model, x, attach_to="Conv", batch_size=10, keep_outputs=True)
    np.testing.assert_allclose(a.outputs[0], ref["y"], rtol=0, atol=1e-4)
    assert onnx_state.analyze(model, x, attach_to="Conv").outputs is None


def test_states_are_sorted_only_when_asked_and_metrics_do_not_change(net):
    import pickle

    model, _, x, _ = net
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], batch_size=9)
    r = a.layer("fc")
    assert r.states._ids is None  # nothing sorted yet

    def figures(res):
        return (res.entropy(), res.entropy(2), res.efficiency(), res.miller_madow(),
                res.chao_shen(), res.n_unique)  # fmt: skip

    before = figures(r)
    assert r.states._ids is None  # order-free metrics did not sort
    copy = pickle.loads(pickle.dumps(a))  # an unsorted result pickles (Dask, joblib)
    ids, counts = r.state_ids(), r.counts()
    assert r.states._ids is not None
    assert all(bytes(p[::-1]) < bytes(q[::-1]) for p, q in itertools.pairwise(ids))
    assert counts.sum() == r.state_count
    # bit-identical, whatever order the counts were in
    assert figures(r) == before == figures(copy.layer("fc"))
    np.testing.assert_array_equal(copy.layer("fc").state_ids(), ids)


def test_metrics_do_not_depend_on_the_order_of_the_counts():
    # Hash tables export in an order that depends on history and threads.
    from onnx_state import metrics

    rng = np.random.default_rng(3)
    counts = rng.geometric(0.2, 300)
    shuffles = [rng.permutation(counts) for _ in range(20)]
    for f in (metrics.entropy, metrics.miller_madow_entropy, metrics.chao_shen_entropy,
              lambda c: metrics.entropy(c, 2), lambda c: metrics.efficiency(c, 12)):  # fmt: skip
        assert len({f(c) for c in shuffles}) == 1
    intervals = {metrics.bootstrap_entropy(c, n_boot=50, seed=1) for c in shuffles[:3]}
    assert len(intervals) == 1


def test_declared_shapes_and_inferred_shapes_give_the_same_captures(bundled):
    from onnx_state import capture
    from onnx_state.capture.index import _fully_declared as fully_declared

    model = capture.load_model(bundled[0])
    assert fully_declared(model.graph)  # torch.onnx declares every node output
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    assert not fully_declared(bare.graph)
    a = capture.select_captures(model, None, (), "both", None)
    b = capture.select_captures(bare, None, (), "both", None)
    assert [(c.name, c.tensor, c.axis) for c in a] == [(c.name, c.tensor, c.axis) for c in b]

    def outputs(m):  # static dims only: inference names free dims unk__N, torch "batch"
        return [
            (
                o.name,
                o.type.tensor_type.elem_type,
                [d.dim_value for d in o.type.tensor_type.shape.dim],
            )
            for o in m.graph.output
        ]

    assert outputs(capture.add_outputs(model, a)) == outputs(capture.add_outputs(bare, b))


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


def test_progress_bar_only_when_asked(net, capsys):
    model, _, x, _ = net
    onnx_state.analyze(model, x, attach_to="Conv", batch_size=9, progress=True)
    assert "batch" in capsys.readouterr().err
    onnx_state.analyze(model, x, attach_to="Conv", batch_size=9, progress=False)
    assert capsys.readouterr().err == ""
