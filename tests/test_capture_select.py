"""The capture stage up to the session: loading, layers, selection, neuron axes, rewriting,
and every error path."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_state
from onnx_state import capture
from onnx_state.errors import InputError, LayerNotFoundError, ModelError
from tests.models import conv_net, make_model, tag
from tests.reference import assert_states, reference_counts


def names(captures):
    return [c.name for c in captures]


# -- loading ----------------------------------------------------------------------------------
def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model, _ = conv_net()
    big = model.graph.initializer[1]
    big.data_location = TensorProto.EXTERNAL
    big.ClearField("raw_data")
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        e = big.external_data.add()
        e.key, e.value = key, value
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="outside the model's folder"):
        capture.load_model(path)


def test_missing_and_unreadable_model_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        capture.load_model(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        capture.load_model(bad)


# -- layers and selection ---------------------------------------------------------------------
def test_select_by_op_type_is_case_insensitive_and_names_follow_tensorstate():
    model, _ = conv_net()
    caps = capture.select_captures(model, ["conv", "MATMUL"])
    assert names(caps) == ["conv_post_states", "fc_post_states"]
    assert [c.tensor for c in caps] == ["c", "y"]


def test_select_by_node_and_tensor_name_with_before_and_both():
    model, _ = conv_net()
    assert [c.tensor for c in capture.select_captures(model, ["relu"], method="before")] == ["c"]
    both = capture.select_captures(model, ["r"], method="both")  # tensor name of relu's output
    assert names(both) == ["relu_pre_states", "relu_post_states"]


def test_exclude_overrides_type_match():
    model, _ = conv_net()
    caps = capture.select_captures(model, ["Conv", "MatMul"], exclude=["fc"])
    assert names(caps) == ["conv_post_states"]


def test_layer_spanning_nodes_from_metadata():
    # tf2onnx style: Conv, then bias Add, then Elu, all one Keras layer conv_1
    w = np.ones((2, 1, 1, 1), np.float32)
    b = np.zeros((1, 2, 1, 1), np.float32)
    nodes = [
        tag(helper.make_node("Conv", ["x", "W"], ["c"], name="m/conv_1/Conv"), "conv_1", "Conv2D"),
        tag(
            helper.make_node("Add", ["c", "B"], ["a"], name="m/conv_1/BiasAdd"), "conv_1", "Conv2D"
        ),
        tag(helper.make_node("Elu", ["a"], ["e"], name="m/conv_1/Elu"), "conv_1", "Conv2D"),
        helper.make_node("Relu", ["e"], ["y"], name="after"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [("W", w), ("B", b)],
    )
    caps = capture.select_captures(model, ["Conv2D"], method="both")
    assert [(c.name, c.tensor, c.layer_type) for c in caps] == [
        ("conv_1_pre_states", "x", "Conv2D"),
        ("conv_1_post_states", "e", "Conv2D"),
    ]
    # an ONNX op type inside the layer selects the layer too
    assert [c.tensor for c in capture.select_captures(model, ["Elu"])] == ["e"]


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


def test_list_layers_names_unnamed_nodes_and_skips_constants():
    nodes = [
        helper.make_node(
            "Constant", [], ["k"], value=numpy_helper.from_array(np.ones(3, np.float32))
        ),
        helper.make_node("Mul", ["x", "k"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    layers = capture.list_layers(model)
    assert [(la.name, la.input, la.output) for la in layers] == [("Mul_1", "x", "y")]


def test_unknown_names_are_all_reported_with_suggestions():
    model, _ = conv_net()
    with pytest.raises(LayerNotFoundError) as err:
        capture.select_captures(model, ["Conv2", "fcc"], exclude=["relux"])
    text = str(err.value)
    assert "'Conv2'" in text and "Did you mean: Conv" in text
    assert "'fcc'" in text and "fc" in text
    assert "exclude 'relux'" in text and "relu" in text
    assert "Layer types in this model: Conv, Flatten, MatMul, Relu" in text


def test_exclude_removing_everything_and_bad_method():
    model, _ = conv_net()
    with pytest.raises(LayerNotFoundError, match="removed them all"):
        capture.select_captures(model, ["Conv"], exclude=["conv"])
    with pytest.raises(InputError, match="method"):
        capture.select_captures(model, ["Conv"], method="around")


def test_layers_inside_an_if_are_counted_whenever_their_branch_runs():
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["inner"], name="inner_relu")],
        "then",
        [],
        [helper.make_tensor_value_info("inner", TensorProto.FLOAT, ["N", 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["inner2"], name="inner_neg")],
        "else",
        [],
        [helper.make_tensor_value_info("inner2", TensorProto.FLOAT, ["N", 3])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g
        ),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [("zero", np.zeros((), np.float32))],
    )
    (cap,) = capture.select_captures(model, ["inner_relu"])
    assert cap.name == "branch_then_branch_inner_relu_post_states"
    assert cap.path == ("branch", "then_branch") and cap.axis == 1
    rng = np.random.default_rng(0)
    up = rng.normal(size=(6, 3)).astype(np.float32) + 2  # sum > 0: the then branch runs
    down = rng.normal(size=(6, 3)).astype(np.float32) - 2  # the else branch runs
    from onnx_state import analyze

    result = analyze(model, np.concatenate([up, down, up]), attach_to=["Relu", "Neg"],
                     batch_size=6)  # fmt: skip
    by_name = {r.name: r for r in result.layers}
    relu = by_name["branch_then_branch_inner_relu_post_states"]
    neg = by_name["branch_else_branch_inner_neg_post_states"]
    assert_states(relu, *reference_counts(np.maximum(np.concatenate([up, up]), 0), 1))
    assert_states(neg, *reference_counts(-down, 1))
    assert result.parity_max_abs_diff == 0.0


def test_shape_unknown_tensor_type_is_reported():
    # A custom-domain op that shape inference knows nothing about.
    nodes = [helper.make_node("Mystery", ["x"], ["m"], name="myst", domain="custom")]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "t",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
    )
    model.graph.ClearField("output")
    model.graph.output.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, None))
    model.graph.node.append(helper.make_node("Identity", ["m"], ["x2"], name="id"))
    with pytest.raises(ModelError, match="cannot infer the type of tensor 'm'"):
        capture.select_captures(model, ["myst"])


def test_declared_shapes_and_inferred_shapes_give_the_same_captures(bundled, monkeypatch):
    from onnx_state import capture

    inferred = []  # models that went through shape inference
    infer = onnx.shape_inference.infer_shapes

    def spy(model, *args, **kwargs):
        inferred.append(model)
        return infer(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    model = capture.load_model(bundled[0])
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    a = capture.select_captures(model, None, (), "both", None)
    assert inferred == []  # torch.onnx declares every node output: no inference needed
    b = capture.select_captures(bare, None, (), "both", None)
    assert len(inferred) == 1  # once, on a copy without the weights
    assert inferred[0].ByteSize() < bare.ByteSize() // 10
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


# -- neuron axes ------------------------------------------------------------------------------
def transpose_model(perm, axis_meta=None):
    w = np.ones((4, 2, 1, 1), np.float32)
    conv = helper.make_node("Conv", ["x", "W"], ["c"], name="conv")
    if axis_meta is not None:
        tag(conv, "conv", "Conv2D", axis_meta)
    nodes = [conv, helper.make_node("Transpose", ["c"], ["t"], name="tr", perm=perm)]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 5])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["a", "b", "c", "d"])],
        [("W", w)],
    )


@pytest.mark.parametrize(
    ("perm", "axis"), [([0, 2, 3, 1], 3), ([0, 1, 2, 3], 1), ([0, 3, 1, 2], 2)]
)
def test_neuron_axis_follows_transpose(perm, axis):
    model = transpose_model(perm)
    (cap,) = capture.select_captures(model, ["tr"])
    assert cap.axis == axis


def test_neuron_axis_rules_for_flatten_matmul_and_overrides():
    model, _ = conv_net()
    caps = {c.name: c for c in capture.select_captures(model, ["Conv", "Flatten", "MatMul"])}
    assert caps["conv_post_states"].axis == 1
    assert caps["flat_post_states"].axis == 1
    assert caps["fc_post_states"].axis == 1  # last axis of a rank-2 output
    over = capture.select_captures(model, ["Conv"], neuron_axes={"conv": 3})
    assert over[0].axis == 3
    with pytest.raises(LayerNotFoundError, match="not captured"):
        capture.select_captures(model, ["Conv"], neuron_axes={"nope": 1})


def test_metadata_axis_wins_over_the_op_rule_and_user_wins_over_metadata():
    model = transpose_model([0, 1, 2, 3], axis_meta=2)
    assert capture.select_captures(model, ["conv"])[0].axis == 2
    assert capture.select_captures(model, ["conv"], neuron_axes={"conv": 1})[0].axis == 1


# -- rewriting --------------------------------------------------------------------------------
def test_add_outputs_keeps_original_outputs_dedups_and_passes_checker():
    model, _ = conv_net()
    caps = capture.select_captures(model, ["Conv", "Relu"], method="both", literal=True)
    out = capture.add_outputs(model, caps)
    assert [o.name for o in out.graph.output] == ["y", "x", "c", "r"]  # c is added once
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in model.graph.output] == ["y"]  # the input model is untouched


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
        assert_states(result, *reference_counts(values[tensor], 1))
