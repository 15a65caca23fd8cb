"""Feeding real models: several inputs by name, constant inputs, fixed batch sizes, outputs
whose samples are not on axis 0 — each against a numpy reference built here."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_state
from onnx_state.audit import audit
from onnx_state.compare import compare
from onnx_state.errors import InputError
from tests.cli import run_cli
from tests.models import make_model
from tests.reference import assert_states, reference_counts

RNG = np.random.default_rng(7)
W = RNG.integers(-2, 3, (3, 6)).astype(np.float32)  # small integers: exact float sums
U = RNG.integers(-2, 3, (4, 6)).astype(np.float32)


def two_inputs(batch=None):
    """h = Relu(a @ W + b @ U) -> y = h; inputs a (N, 3) and b (N, 4)."""
    n = batch or "N"
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["p"], name="pa"),
        helper.make_node("MatMul", ["b", "U"], ["q"], name="pb"),
        helper.make_node("Add", ["p", "q"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    return make_model(
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 6])],
        [("W", W), ("U", U)],
    )


def ints(*shape):
    return RNG.integers(-3, 4, shape).astype(np.float32)


def test_two_inputs_by_name_from_python_and_the_cli(tmp_path):
    a, b = ints(50, 3), ints(50, 4)
    ref = reference_counts(np.maximum(a @ W + b @ U, 0), 1)
    model = two_inputs()
    r = onnx_state.analyze(model, {"a": a, "b": b}, attach_to="Relu", batch_size=16)
    assert r.n_samples == 50
    assert_states(r.layer("relu"), *ref)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    by_file = onnx_state.analyze(path, str(tmp_path / "ab.npz"), attach_to="Relu")
    by_paths = onnx_state.analyze(path, {"a": tmp_path / "a.npy", "b": tmp_path / "b.npy"},
                                  attach_to="Relu")  # fmt: skip
    for other in (by_file, by_paths):
        assert other.layers == r.layers and other.data_fingerprint == r.data_fingerprint
    out = run_cli("analyze", path, "--data", tmp_path / "ab.npz", "--attach-to", "Relu", "--json")
    assert out.exit_code == 0, out.output
    named = run_cli("analyze", path, "--data", f"a={tmp_path / 'a.npy'}", "--data",
                    f"b={tmp_path / 'ab.npz'}:b", "--attach-to", "Relu", "--json")  # fmt: skip
    assert named.exit_code == 0, named.output
    assert out.output == named.output
    assert '"n_unique": ' + str(len(ref[0])) in out.output


def test_a_recurrent_state_and_a_scalar_as_constants(tmp_path):
    # y = Relu(x @ W + state @ U) * scale: state (1, 4) and scale () are shared by all samples
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["p"], name="px"),
        helper.make_node("MatMul", ["state", "U"], ["q"], name="ps"),
        helper.make_node("Add", ["p", "q"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "scale"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    model = make_model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [("W", W), ("U", U)],
    )
    x, state = ints(30, 3), ints(1, 4)
    ref = reference_counts(np.maximum((x @ W + state @ U) * -1.5, 0), 1)
    consts = {"state": state, "scale": -1.5}  # a Python number takes the input's dtype
    r = onnx_state.analyze(model, x, attach_to="Relu", batch_size=7, constants=consts)
    assert r.n_samples == 30
    assert_states(r.layer("relu"), *ref)
    again = onnx_state.analyze(model, x, attach_to="Relu", batch_size=30, constants=consts)
    assert again.data_fingerprint == r.data_fingerprint  # constants hashed once
    other = onnx_state.analyze(model, x, attach_to="Relu", constants={**consts, "scale": 2.0})
    assert other.data_fingerprint != r.data_fingerprint
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "state.npy", state)
    out = run_cli("analyze", path, "--data", tmp_path / "x.npy", "--attach-to", "Relu",
                  "--const", f"state={tmp_path / 'state.npy'}", "--const", "scale=-1.5",
                  "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f'"n_unique": {len(ref[0])}' in out.output
    for consts, message in [
        ({"state": state}, "the model has 2 inputs (x, scale)"),
        ({"state": ints(2, 4), "scale": 1.0}, "constant 'state' has shape (2, 4)"),
        ({"state": state.astype(np.float64), "scale": 1.0}, "constant 'state' is float64"),
        ({"state": state, "scale": 1.0, "stat": state}, "Did you mean: state?"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            onnx_state.analyze(model, x, attach_to="Relu", constants=consts)
    with pytest.raises(InputError, match="0-d array"):
        onnx_state.analyze(model, {"x": x, "state": state, "scale": np.float32(2)},
                           attach_to="Relu")  # fmt: skip


def test_a_fixed_batch_of_one_runs_at_the_default_batch_size(tmp_path):
    a, b = ints(9, 3), ints(9, 4)
    model = two_inputs(batch=1)
    default = onnx_state.analyze(model, {"a": a, "b": b}, attach_to="Relu")
    explicit = onnx_state.analyze(model, {"a": a, "b": b}, attach_to="Relu", batch_size=1)
    assert default.layers == explicit.layers and default.n_samples == 9
    assert_states(default.layer("relu"), *reference_counts(np.maximum(a @ W + b @ U, 0), 1))
    with pytest.raises(InputError, match="input 'a' has a fixed batch dimension of 1"):
        onnx_state.analyze(model, {"a": a, "b": b}, attach_to="Relu", batch_size=4)
    fixed4 = two_inputs(batch=4)
    with pytest.raises(InputError, match="9 samples leave a last batch of 1"):
        onnx_state.analyze(fixed4, {"a": a, "b": b}, attach_to="Relu")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    out = run_cli("analyze", path, "--data", tmp_path / "ab.npz", "--batch-size", "3")
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "fixed batch dimension of 1" in out.output


def sequence_first():
    """x (N, T=5, 3) -> Transpose (T, N, 3) -> MatMul W (T, N, 6) -> Relu -> y."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[1, 0, 2]),
        helper.make_node("MatMul", ["t", "W"], ["p"], name="fc"),
        helper.make_node("Relu", ["p"], ["y"], name="relu"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, "N", 6])],
        [("W", W)],
    )


def test_samples_follow_the_data_when_outputs_are_sequence_first():
    x = ints(8, 5, 3)
    model = sequence_first()
    r = onnx_state.analyze(model, x, attach_to="Relu", keep_outputs=True)
    act = np.maximum(np.transpose(x, (1, 0, 2)) @ W, 0)  # (T, N, 6)
    assert r.n_samples == 8
    assert_states(r.layer("relu"), *reference_counts(act, 2))
    np.testing.assert_array_equal(r.outputs[0], np.transpose(act, (1, 0, 2)))  # samples first
    c = compare(model, model, x, attach_to="Relu")
    assert c.n_samples == 8 and c.top1_agreement == 1.0
    a = audit(model, x, attach_to="Relu", reference=r)
    assert a.n_samples == 8 and a.sample_novelty["relu_post_states"].shape == (8,)


def test_unknown_missing_and_extra_inputs_are_one_line_each(tmp_path):
    model = two_inputs()
    a, b = ints(5, 3), ints(5, 4)
    with pytest.raises(InputError, match=r"unknown input.* bb .*Did you mean: b"):
        onnx_state.analyze(model, {"a": a, "bb": b}, attach_to="Relu")
    with pytest.raises(InputError, match=r"missing input.* b"):
        onnx_state.analyze(model, {"a": a}, attach_to="Relu")
    with pytest.raises(InputError, match="the model has 2 inputs"):
        onnx_state.analyze(model, a, attach_to="Relu")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "abc.npz", a=a, b=b, labels=np.zeros(5))
    for args, message in [
        (["--data", tmp_path / "abc.npz"], "unknown input(s) labels"),
        (["--data", f"a={tmp_path / 'abc.npz'}:a"], "missing input(s) b"),
        (["--data", f"a={tmp_path / 'abc.npz'}:a", "--data", tmp_path / "abc.npz"],
         "once per model input as NAME=PATH"),
        (["--data", tmp_path / "abc.npz", "--const", "b"], "--const 'b' is not NAME="),
    ]:  # fmt: skip
        out = run_cli("analyze", path, *args)
        assert out.exit_code == 2, out.output
        assert out.output.count("\n") == 1 and message in out.output, out.output


def test_compare_audit_and_separation_take_named_data_and_constants(tmp_path):
    import json

    from onnx_state.separation import separation

    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["p"], name="px"),
        helper.make_node("Mul", ["p", "scale"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    model = make_model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [("W", W)],
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = ints(40, 3)
    y = (x[:, 0] > 0).astype(int)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = ["--data", f"x={tmp_path / 'd.npz'}:x", "--const", "scale=2"]
    consts = {"scale": 2.0}
    out = run_cli("compare", path, path, *data, "--attach-to", "Relu", "--json")
    assert out.exit_code == 0, out.output
    want = compare(path, path, x, attach_to="Relu", constants=consts).to_dict()
    assert json.loads(out.output)["pairs"] == json.loads(json.dumps(want["pairs"]))
    ref = onnx_state.analyze(path, x, attach_to="Relu", constants=consts)
    ref.save(tmp_path / "ref.zarr")
    out = run_cli("audit", path, *data, "--reference", tmp_path / "ref.zarr", "--attach-to",
                  "Relu", "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["layers"][0]["novelty"] == 0.0
    out = run_cli("separation", path, *data, "--labels", f"{tmp_path / 'd.npz'}:y",
                  "--attach-to", "Relu", "--samples-per-class", "5", "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    r = separation(path, x, labels=y, attach_to="Relu", samples_per_class=5, constants=consts)
    assert json.loads(out.output)["cross_edges"] == r.to_dict()["cross_edges"]


def test_the_readme_s_two_input_example(tmp_path):
    from examples.two_inputs import build

    build(tmp_path)
    d = tmp_path
    common = ["--const", f"state={d / 'state.npy'}", "-q"]
    one = run_cli("analyze", d / "tagger.onnx", "--data", d / "batch.npz", *common, "--attach-to",
                  "Relu", "--attach-to", "embed_tokens", "--attach-to", "embed_mask",
                  "--batch-size", "100")  # fmt: skip
    assert one.exit_code == 0, one.output
    rows = {line.split()[0]: line.split()[3:5] for line in one.output.splitlines()[2:5]}
    # states and unique states: exactly what the README shows
    assert rows == {"embed_tokens_post_states": ["500", "54"],
                    "embed_mask_post_states": ["500", "11"],
                    "hidden_post_states": ["500", "28"]}  # fmt: skip
    per_input = [
        "--data",
        f"tokens={d / 'batch.npz'}:tokens",
        "--data",
        f"mask={d / 'batch.npz'}:mask",
    ]
    named = run_cli("analyze", d / "tagger.onnx", *per_input, *common, "--attach-to", "hidden")
    assert named.exit_code == 0 and "hidden_post_states" in named.output
    assert named.output.splitlines()[2] == one.output.splitlines()[4]
    # and independently of onnx_state: the hidden layer's distinct states, by numpy
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(d / "tagger.onnx").graph.initializer}
    batch, state = np.load(d / "batch.npz"), np.load(d / "state.npy")
    h = batch["tokens"] @ w["W"] + batch["mask"] @ w["U"] + state @ w["V"]
    assert len(reference_counts(np.maximum(h, 0), 1)[0]) == 28


def test_a_zarr_group_holds_one_array_per_input(tmp_path):
    import zarr

    a, b = ints(20, 3), ints(20, 4)
    g = zarr.open_group(str(tmp_path / "ab.zarr"), mode="w")
    g.create_array("a", data=a, chunks=(7, 3))
    g.create_array("b", data=b, chunks=(7, 4))
    r = onnx_state.analyze(two_inputs(), str(tmp_path / "ab.zarr"), attach_to="Relu")
    assert_states(r.layer("relu"), *reference_counts(np.maximum(a @ W + b @ U, 0), 1))


def test_onnxruntime_s_message_reaches_the_user_whole(capfd):
    # Reshape to (2, -1) fails at run time on a batch of 3; the reason comes after the status.
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs"),
         helper.make_node("Relu", ["r"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "M"])],
        [("shape", np.array([2, -1], np.int64))],
    )  # fmt: skip
    with pytest.raises(onnx_state.OnnxStateError) as err:
        onnx_state.analyze(model, np.ones((3, 3), np.float32), attach_to="Relu")
    text = str(err.value)
    assert "\n" not in text and "requested shape:{2,-1}" in text
    assert "ExecuteKernel" not in capfd.readouterr().err  # onnxruntime's own log stays quiet


def test_numbers_as_constants_take_the_input_s_dtype_when_they_fit():
    from onnx_state.capture import InputSpec, check_constants

    specs = [
        InputSpec("f", np.dtype(np.float32), ()),
        InputSpec("u", np.dtype(np.uint8), ()),
        InputSpec("i", np.dtype(np.int64), ()),
        InputSpec("b", np.dtype(np.bool_), ()),
    ]
    got = check_constants({"f": 0.1, "u": 200, "i": 16000, "b": True}, specs)
    assert got["f"].dtype == np.float32 and got["f"] == np.float32(0.1)
    assert got["u"] == 200 and got["i"].dtype == np.int64 and got["b"].dtype == np.bool_
    for value, name in [(300, "u"), (-1, "u"), (2.5, "i"), (1e30, "i"), (float("nan"), "i")]:
        with pytest.raises(InputError, match=f"constant '{name}' = .* does not fit"):
            check_constants({name: value}, specs)


def test_a_missing_zarr_key_and_an_input_given_twice_are_one_error_each(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "ab.zarr"), mode="w")
    g.create_array("a", data=ints(4, 3))
    with pytest.raises(InputError, match="has no array 'zz'; it holds a"):
        onnx_state.analyze(two_inputs(), {"a": f"{tmp_path / 'ab.zarr'}:zz", "b": ints(4, 4)})
    with pytest.raises(InputError, match="given both as data and as constant"):
        onnx_state.analyze(two_inputs(), {"a": ints(4, 3), "b": ints(4, 4)}, attach_to="Relu",
                           constants={"b": ints(1, 4)})  # fmt: skip


def test_a_fixed_dimension_is_never_the_free_batch_axis():
    # class-first (3, M): the output's batch dimension has another name than the input's,
    # and a batch of 3 samples matches both axes by size; the fixed 3 is the classes.
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Transpose", ["r"], ["y"], name="t", perm=[1, 0])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "M"])],
    )  # fmt: skip
    x = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)
    a = onnx_state.analyze(model, x, attach_to="Relu", labels=[0, 2, 1, 0], batch_size=3)
    assert a.accuracy == 1.0


def test_compare_takes_a_fixed_batch_from_either_model_and_copes_without_a_sample_axis():
    a, b = ints(9, 3), ints(9, 4)
    c = compare(two_inputs(), two_inputs(batch=1), {"a": a, "b": b}, attach_to="Relu")
    assert c.n_samples == 9 and c.pairs[0].state_agreement == 1.0 and c.top1_agreement == 1.0
    # a batch-1 model whose output squeezes the batch axis away: (6,)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="fc"),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("Squeeze", ["r", "axes"], ["y"], name="sq")]  # fmt: skip
    squeezed = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [("W", W), ("axes", np.array([0], np.int64))],
    )
    x = ints(5, 3)
    c = compare(squeezed, squeezed, x, attach_to="Relu")
    assert c.top1_agreement is None and c.output_max_abs_diff == 0.0 and c.n_samples == 5
    assert c.pairs[0].state_agreement == 1.0
    assert "top-1 agreement -" in c.table()
    assert c.violations(min_top1_agreement=0.9) == [
        "outputs: top-1 agreement unknown (the first output has no sample axis)"
    ]


def test_compare_gives_b_its_own_constants_from_the_cli(tmp_path):
    import json

    def scaled(k):  # y = Relu(x * k), k a scalar input named *k*
        return make_model(
            [helper.make_node("Mul", ["x", k], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
             helper.make_tensor_value_info(k, TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        )  # fmt: skip

    onnx_a, onnx_b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx_a.write_bytes(scaled("k").SerializeToString())
    onnx_b.write_bytes(scaled("scale:0").SerializeToString())
    np.save(tmp_path / "x.npy", ints(12, 3))
    out = run_cli("compare", onnx_a, onnx_b, "--data", tmp_path / "x.npy", "--const", "k=-1",
                  "--const-b", "scale:0=-1", "--attach-to", "Relu", "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["pairs"][0]["state_agreement"] == 1.0
