"""Integer layers: int32 accumulators fire iff > 0, 8-bit quantized tensors iff > their zero
point; QDQ models read at their quantized tensors keep onnxruntime's QLinear kernels.

Every value here is small and integral, so the numpy references are exact by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_state import analyze
from onnx_state.capture import Instrumented, select_captures
from onnx_state.errors import InputError
from tests.models import make_model
from tests.reference import assert_states, unique_rows

U8, I8, I32, F = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def packed_counts(fires: np.ndarray, axis: int):
    bits = np.moveaxis(fires, axis, -1).reshape(-1, fires.shape[axis])
    return unique_rows(np.packbits(bits, axis=1, bitorder="little"))


def conv_integer_model():
    """x uint8 (zero point 3) → ConvInteger(w int8, zero point 0) → int32 → Cast → y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-3, 4, (5, 2, 2, 2)).astype(np.int8)
    nodes = [
        helper.make_node("ConvInteger", ["x", "W", "xz"], ["acc"], name="convint"),
        helper.make_node("Cast", ["acc"], ["y"], name="cast", to=F),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 2, 4, 4], U8)],
        [vi("y", ["N", 5, 3, 3])],
        [("W", w), ("xz", np.array(3, np.uint8))],
        opset=[helper.make_opsetid("", 13)],
    )
    return model, w


def test_conv_integer_accumulators_fire_iff_positive():
    model, w = conv_integer_model()
    x = np.random.default_rng(1).integers(0, 7, (20, 2, 4, 4)).astype(np.uint8)
    xs = x.astype(np.int64) - 3
    win = np.lib.stride_tricks.sliding_window_view(xs, (2, 2), axis=(2, 3))
    acc = np.einsum("nchwij,ocij->nohw", win, w.astype(np.int64))
    (cap,) = select_captures(model, ["ConvInteger"])
    assert cap.arithmetic == "integer" and cap.zero_point == 0
    (layer,) = analyze(model, x, attach_to=["ConvInteger"], parity=False).layers
    assert layer.neurons == 5
    assert_states(layer, *packed_counts(acc > 0, 1))


def test_the_default_selection_finds_integer_layers():
    model, _ = conv_integer_model()
    caps = select_captures(model)
    assert [c.op_type for c in caps] == ["ConvInteger"]


def test_matmul_integer_of_a_dynamically_quantized_model():
    rng = np.random.default_rng(2)
    w = rng.integers(-4, 5, (6, 3)).astype(np.int8)
    nodes = [helper.make_node("MatMulInteger", ["x", "W", "xz"], ["acc"], name="mmi")]
    model = make_model(
        nodes,
        [vi("x", ["N", 7, 6], U8)],
        [vi("acc", ["N", 7, 3], I32)],
        [("W", w), ("xz", np.array(2, np.uint8))],
        opset=[helper.make_opsetid("", 13)],
    )
    x = rng.integers(0, 5, (9, 7, 6)).astype(np.uint8)
    acc = (x.astype(np.int64) - 2) @ w.astype(np.int64)
    (layer,) = analyze(model, x, parity=False).layers
    assert layer.axis == 2
    assert_states(layer, *packed_counts(acc > 0, 2))


def qdq_model(per_channel: bool = False):
    """A QDQ Conv: x → Q/DQ → Conv(DQ(w int8)) → Q(scale 1, zero point 128 or per channel)
    → DQ → y. Scales of 1 keep every quantized value an exact integer."""
    rng = np.random.default_rng(3)
    w = rng.integers(-2, 3, (4, 2, 1, 1)).astype(np.int8)
    zp_y = np.array([128, 120, 130, 128], np.uint8) if per_channel else np.array(128, np.uint8)
    one = np.array(1.0, np.float32)
    ones = np.ones(4, np.float32) if per_channel else one
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "zx"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "one", "zx"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["Wq", "one", "zw"], ["wd"], name="dqw"),
        helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"], name="qc", axis=1),
        helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"], name="dqc", axis=1),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 2, 3, 3])],
        [vi("y", ["N", 4, 3, 3])],
        [("one", one), ("zx", np.array(128, np.uint8)), ("Wq", w), ("zw", np.array(0, np.int8)),
         ("sy", ones), ("zy", zp_y)],
        opset=[helper.make_opsetid("", 13)],
    )  # fmt: skip
    return model, w, zp_y


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_conv_read_as_its_quantized_tensor_fires_iff_above_the_zero_point(per_channel):
    model, w, zp = qdq_model(per_channel)
    x = np.random.default_rng(4).integers(-5, 6, (16, 2, 3, 3)).astype(np.float32)
    c = np.einsum("nchw,oc->nohw", x.astype(np.int64), w[:, :, 0, 0].astype(np.int64))
    zp_b = zp.astype(np.int64).reshape(1, -1, 1, 1) if per_channel else int(zp)
    q = np.clip(c + zp_b, 0, 255)
    (cap,) = select_captures(model, ["Conv"], quantized=True)
    assert cap.read == "cq" and cap.arithmetic == "quantized"
    assert cap.zero_point == (tuple(int(v) for v in zp) if per_channel else 128)
    # onnxruntime fuses QDQ into QLinearConv, which takes one output zero point only: a
    # per-channel activation quantization runs unfused.
    level = "disable" if per_channel else "all"
    (layer,) = analyze(
        model, x, attach_to=["Conv"], quantized=True, parity=False, optimization=level
    ).layers
    assert_states(layer, *packed_counts(q > zp_b, 1))
    # float capture of the same layer: the Conv's own output, firing iff > 0
    (flt,) = analyze(model, x, attach_to=["Conv"], parity=False, optimization=level).layers
    assert_states(flt, *packed_counts(c > 0, 1))


def test_quantized_capture_leaves_an_exact_qdq_models_outputs_unchanged():
    """Integral values throughout: the float path and the int8 kernels agree, parity 0."""
    model, _, _ = qdq_model()
    x = np.random.default_rng(5).integers(-5, 6, (8, 2, 3, 3)).astype(np.float32)
    result = analyze(model, x, attach_to=["Conv"], quantized=True)
    assert result.parity_max_abs_diff == 0.0


def test_an_8_bit_tensor_without_a_quantizer_warns_and_assumes_zero_point_0():
    from onnx_state.errors import AxisGuessWarning

    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2])]
    model = make_model([node for node in nodes], [vi("x", ["N", 2, 4, 4], U8)],
                       [vi("p", ["N", 2, 3, 3], U8)])  # fmt: skip
    with pytest.warns(AxisGuessWarning, match="no quantizing op.*zero point 0"):
        (cap,) = select_captures(model, ["MaxPool"])
    assert cap.zero_point == 0


def test_zero_point_follows_through_maxpool_and_reshape():
    model, _, _ = qdq_model()
    # add a MaxPool on the quantized tensor, as onnxruntime's QDQ models have
    nodes = list(model.graph.node)
    nodes.append(helper.make_node("MaxPool", ["cq"], ["pq"], name="pool", kernel_shape=[2, 2]))
    from onnx import numpy_helper

    inits = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer]
    model2 = make_model(
        nodes, list(model.graph.input), [*model.graph.output, vi("pq", ["N", 4, 2, 2], U8)],
        inits, opset=[helper.make_opsetid("", 13)],
    )  # fmt: skip
    (cap,) = select_captures(model2, ["MaxPool"])
    assert cap.zero_point == 128 and cap.arithmetic == "quantized"


def test_int8_counts_are_exact_at_the_extremes():
    """int8 values -128..127 around a zero point of -1: fires iff q > -1, i.e. q >= 0."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "z"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "one", "z"], ["y"], name="deq"),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 3])],
        [vi("y", ["N", 3])],
        [("one", np.array(1.0, np.float32)), ("z", np.array(-1, np.int8))],
        opset=[helper.make_opsetid("", 13)],
    )
    x = np.array([[-200, -128, -1], [0, 1, 126], [127, 300, -2]], np.float32)
    q = np.clip(np.round(x) - 1, -128, 127).astype(np.int64)
    inst = Instrumented(model, attach_to=["QuantizeLinear"])
    (cap,) = inst.captures
    # (on x86 read as uint8, as onnxruntime runs it: see the int8 chain tests below)
    assert (cap.zero_point, cap.as_uint8) in {(-1, False), (127, True)}
    (layer,) = analyze(model, x, attach_to=["QuantizeLinear"], parity=False).layers
    assert_states(layer, *packed_counts(q > -1, 1))


def test_an_int8_tensor_under_a_relu_keeps_its_zero_point():
    """Relu(q) > 0 is not q > zp: a quantized tensor is read itself, against its zero point."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "z"], ["q"], name="quant"),
        helper.make_node("Relu", ["q"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["y"], name="cast", to=F),
    ]
    model = make_model(
        nodes, [vi("x", ["N", 4])], [vi("y", ["N", 4])],
        [("one", np.array(1.0, np.float32)), ("z", np.array(-20, np.int8))],
        opset=[helper.make_opsetid("", 14)],
    )  # fmt: skip
    x = np.random.default_rng(0).integers(-30, 30, (64, 4)).astype(np.float32)
    q = np.clip(x - 20, -128, 127)
    (cap,) = select_captures(model, ["quant"])
    assert (cap.read, cap.zero_point) == ("q", -20)
    (layer,) = analyze(model, x, attach_to=["quant"], parity=False).layers
    assert_states(layer, *packed_counts(q > -20, 1))


def test_a_per_channel_zero_point_is_not_carried_through_ops_that_move_channels():
    from onnx_state.errors import ModelError

    model, _, _ = qdq_model(per_channel=True)
    nodes = list(model.graph.node)
    nodes.append(helper.make_node("Slice", ["cq", "st", "en", "ax"], ["sq"], name="cut"))
    from onnx import numpy_helper

    inits = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer]
    inits += [("st", np.array([2], np.int64)), ("en", np.array([4], np.int64)),
              ("ax", np.array([1], np.int64))]  # fmt: skip
    model2 = make_model(
        nodes, list(model.graph.input), [*model.graph.output, vi("sq", ["N", 2, 3, 3], U8)],
        inits, opset=[helper.make_opsetid("", 13)],
    )  # fmt: skip
    with pytest.raises(ModelError, match="Slice between it and its quantizer moves or cuts"):
        select_captures(model2, ["cut"])


def conv_q_model(elem: int, zero_point: float | int):
    """Conv (integer weights) → QuantizeLinear(scale 1, *zero_point* of type *elem*) →
    DequantizeLinear: opset 21, which quantizes to 16-bit, float8 and 4-bit types."""
    w = np.random.default_rng(6).integers(-2, 3, (4, 2, 1, 1)).astype(np.float32)
    zp = helper.make_tensor("zy", elem, [], [zero_point])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "one", "zy"], ["cq"], name="qc"),
        helper.make_node("DequantizeLinear", ["cq", "one", "zy"], ["y"], name="dqc"),
    ]
    graph = helper.make_graph(
        nodes, "q", [vi("x", ["N", 2, 3, 3])], [vi("y", ["N", 4, 3, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(1.0, np.float32),
                                                                    "one"), zp],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model, w[:, :, 0, 0]


@pytest.mark.parametrize(
    ("elem", "zero_point", "low", "high"),
    [(TensorProto.UINT16, 32774, 0, 65535), (TensorProto.INT16, -3, -32768, 32767)],
)
def test_16_bit_quantized_tensors_fire_iff_above_their_zero_point(elem, zero_point, low, high):
    # (they were compared with 0: only 8-bit types looked their zero point up)
    model, w = conv_q_model(elem, zero_point)
    x = np.random.default_rng(7).integers(-5, 6, (16, 2, 3, 3)).astype(np.float32)
    c = np.einsum("nchw,oc->nohw", x.astype(np.int64), w.astype(np.int64))
    q = np.clip(c + zero_point, low, high)
    (cap,) = select_captures(model, ["Conv"], quantized=True)
    assert (cap.read, cap.zero_point, cap.arithmetic) == ("cq", zero_point, "quantized")
    (layer,) = analyze(model, x, attach_to=["Conv"], quantized=True, parity=False).layers
    assert_states(layer, *packed_counts(q > zero_point, 1))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_float8_and_4_bit_quantized_tensors_are_not_read_as_numbers(elem):
    # onnxruntime hands float8 out as raw bytes (a negative one "fired": its sign bit) and
    # 4-bit types not at all: quantized=True keeps the float tensor, and naming one refuses
    model, w = conv_q_model(elem, 0)
    (cap,) = select_captures(model, ["Conv"], quantized=True)
    assert (cap.read, cap.arithmetic) == ("c", "float")
    x = np.random.default_rng(8).integers(-5, 6, (16, 2, 3, 3)).astype(np.float32)
    c = np.einsum("nchw,oc->nohw", x.astype(np.int64), w.astype(np.int64))
    (layer,) = analyze(model, x, attach_to=["Conv"], quantized=True, parity=False).layers
    assert_states(layer, *packed_counts(c > 0, 1))
    name = TensorProto.DataType.Name(elem)
    with pytest.raises(InputError, match=rf"tensor 'cq' is {name}.*capture the float tensor"):
        select_captures(model, ["QuantizeLinear"])


def int8_chain_model(shared: bool = False):
    """An int8-activation QDQ chain, scales 1 so every value is an exact integer:
    x → Q/DQ (zero point -2) → conv1 → Q/DQ (3) → conv2 → Q/DQ (-1) → y. With *shared*,
    conv1's quantized output also feeds a second DequantizeLinear (an extra output)."""
    rng = np.random.default_rng(11)
    w1 = rng.integers(-2, 3, (4, 2, 1, 1)).astype(np.int8)
    w2 = rng.integers(-2, 3, (3, 4, 1, 1)).astype(np.int8)
    q = lambda x, s, z, y, name: helper.make_node("QuantizeLinear", [x, s, z], [y], name=name)  # noqa: E731
    dq = lambda x, s, z, y, name: helper.make_node("DequantizeLinear", [x, s, z], [y], name=name)  # noqa: E731
    nodes = [
        q("x", "one", "zx", "xq", "qx"), dq("xq", "one", "zx", "xd", "dqx"),
        dq("W1", "one", "zw", "w1d", "dqw1"), dq("W2", "one", "zw", "w2d", "dqw2"),
        helper.make_node("Conv", ["xd", "w1d"], ["c1"], name="conv1"),
        q("c1", "one", "z1", "c1q", "qc1"), dq("c1q", "one", "z1", "c1d", "dqc1"),
        helper.make_node("Conv", ["c1d", "w2d"], ["c2"], name="conv2"),
        q("c2", "one", "z2", "c2q", "qc2"), dq("c2q", "one", "z2", "y", "dqc2"),
    ]  # fmt: skip
    outputs = [vi("y", ["N", 3, 3, 3])]
    if shared:
        nodes.append(dq("c1q", "one", "z1", "side", "dqside"))
        outputs.append(vi("side", ["N", 4, 3, 3]))
    model = make_model(
        nodes, [vi("x", ["N", 2, 3, 3])], outputs,
        [("one", np.array(1.0, np.float32)), ("zx", np.array(-2, np.int8)), ("W1", w1),
         ("W2", w2), ("zw", np.array(0, np.int8)), ("z1", np.array(3, np.int8)),
         ("z2", np.array(-1, np.int8))],
        opset=[helper.make_opsetid("", 13)],
    )  # fmt: skip
    return model, w1, w2


def fused_convs(model, tmp_path) -> int:
    """QLinearConv nodes in onnxruntime's optimized graph of *model* (CPU, all levels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    return sum(n.op_type == "QLinearConv" for n in optimized.graph.node)


def test_captured_int8_activations_keep_onnxruntimes_int8_kernels(tmp_path):
    """On x86 onnxruntime runs int8 QDQ activations as uint8 (zero point + 128), which a
    captured quantized tensor used to prevent: both convs ran in float (0 QLinearConv
    against 2). The captured pairs are converted as onnxruntime converts them."""
    model, w1, w2 = int8_chain_model()
    x = np.random.default_rng(12).integers(-6, 7, (24, 2, 3, 3)).astype(np.float32)
    xi = np.clip(x.astype(np.int64) - 2, -128, 127) + 2  # quantized and dequantized
    q1 = np.clip(np.einsum("nchw,oc->nohw", xi, w1[:, :, 0, 0].astype(np.int64)) + 3, -128, 127)
    c2 = np.einsum("nchw,oc->nohw", q1 - 3, w2[:, :, 0, 0].astype(np.int64))
    q2 = np.clip(c2 - 1, -128, 127)
    inst = Instrumented(model, attach_to=["Conv"], quantized=True)
    assert fused_convs(inst.model, tmp_path) == fused_convs(model, tmp_path) > 0
    result = analyze(model, x, attach_to=["Conv"], quantized=True)
    assert result.parity_max_abs_diff == 0.0
    first, second = result.layers
    assert_states(first, *packed_counts(q1 > 3, 1))
    assert_states(second, *packed_counts(q2 > -1, 1))
    run = inst.run({"x": x[:8]})
    for c, zp, ref in zip(inst.captures, (3, -1), (q1, q2)):
        if c.as_uint8:  # x86: read as uint8, both zero points + 128
            assert (c.elem_type, c.zero_point) == (U8, zp + 128)
            np.testing.assert_array_equal(run.captured[c.key].astype(np.int64) - 128, ref[:8])
        else:
            np.testing.assert_array_equal(run.captured[c.key], ref[:8])


def test_an_int8_tensor_that_feeds_two_layers_stays_int8():
    """onnxruntime converts a pair only while its DequantizeLinear is the one consumer."""
    model, _, _ = int8_chain_model(shared=True)
    inst = Instrumented(model, attach_to=["Conv"], quantized=True)
    first, _ = inst.captures
    assert not first.as_uint8 and first.elem_type == I8 and first.zero_point == 3
    x = np.random.default_rng(13).integers(-6, 7, (8, 2, 3, 3)).astype(np.float32)
    ref = analyze(model, x, attach_to=["Conv"], quantized=True, optimization="disable")
    got = analyze(model, x, attach_to=["Conv"], quantized=True)
    for a, b in zip(ref.layers, got.layers):
        assert a.state_counts.tolist() == b.state_counts.tolist()


def test_a_float_capture_of_a_qdq_layer_warns_that_it_stops_the_int8_kernels():
    model, _, _ = int8_chain_model()
    with pytest.warns(
        RuntimeWarning, match=r"2 captured float tensor\(s\).*'conv1'.*quantized=True"
    ):
        Instrumented(model, attach_to=["Conv"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Instrumented(model, attach_to=["Conv"], quantized=True)  # the int8 tensors: no warning
        Instrumented(make_float_conv_model(), attach_to=["Conv"])  # no QDQ: no warning
    # a layer's input, the DequantizeLinear output, is inside the group too
    with pytest.warns(RuntimeWarning, match=r"2 captured float tensor\(s\)"):
        Instrumented(model, attach_to=["Conv"], quantized=True, method="before")


def test_an_int8_tensor_that_a_subgraph_also_reads_stays_int8():
    """A second reader inside an If branch: onnxruntime leaves the pair int8; converting it
    made the session fail (DequantizeLinear bound to uint8 and int8)."""
    model, _, _ = int8_chain_model()
    branch = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["c1q", "one", "z1"], ["t"], name="inner_dq")],
        "branch", [], [vi("t", ["N", 4, 3, 3])],
    )  # fmt: skip
    model.graph.input.append(vi("flag", [], TensorProto.BOOL))
    model.graph.node.append(
        helper.make_node("If", ["flag"], ["side"], name="gate", then_branch=branch,
                         else_branch=branch)
    )  # fmt: skip
    model.graph.output.append(vi("side", ["N", 4, 3, 3]))
    inst = Instrumented(model, attach_to=["Conv"], quantized=True)
    assert [c.as_uint8 for c in inst.captures] == [False, inst.captures[1].as_uint8]
    x = np.random.default_rng(14).integers(-6, 7, (8, 2, 3, 3)).astype(np.float32)
    data = {"x": x}
    got = analyze(model, data, attach_to=["Conv"], quantized=True, constants={"flag": True})
    ref = analyze(model, data, attach_to=["Conv"], quantized=True, constants={"flag": True},
                  optimization="disable")  # fmt: skip
    for a, b in zip(ref.layers, got.layers):
        assert a.state_counts.tolist() == b.state_counts.tolist()


def test_packed_and_quantized_captures_of_both_sides_together():
    """capture.pack's nodes read the same tensors: the pairs are looked up, not re-judged
    (this raised 'no longer convertible')."""
    model, _, _ = int8_chain_model()
    x = np.random.default_rng(15).integers(-6, 7, (16, 2, 3, 3)).astype(np.float32)
    kw = dict(attach_to=["Conv"], quantized=True, method="both")
    got = analyze(model, x, pack=True, **kw)
    ref = analyze(model, x, optimization="disable", **kw)
    assert [la.state_counts.tolist() for la in got.layers] == [
        la.state_counts.tolist() for la in ref.layers
    ]


def make_float_conv_model():
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    return make_model(nodes, [vi("x", ["N", 2, 3, 3])], [vi("y", ["N", 2, 3, 3])], [("W", w)])


def test_compare_reads_int8_values_back_whatever_onnxruntime_runs_them_as():
    """A's qc1 pair runs as uint8, B's (read twice) stays int8: the values are the same,
    but the uint8 reading made max |diff| 128 and cosine 0.38."""
    from onnx_state.compare import compare

    x = np.random.default_rng(16).integers(-6, 7, (12, 2, 3, 3)).astype(np.float32)
    a, b = int8_chain_model()[0], int8_chain_model(shared=True)[0]
    for p in compare(a, b, x, attach_to=["QuantizeLinear"]).pairs:
        assert (p.state_agreement, p.max_abs_diff, p.cosine) == (1.0, 0.0, pytest.approx(1.0))


def test_the_tensorstate_api_counts_quantized_tensors_against_their_zero_point():
    """EfficiencyLayer counted x > 0: wrong for any nonzero zero point, and for uint8
    readings (zero point 128) nearly every value fired."""
    from onnx_state.compat import build_efficiency_model

    model, _, _ = int8_chain_model()
    x = np.random.default_rng(17).integers(-6, 7, (16, 2, 3, 3)).astype(np.float32)
    eff = build_efficiency_model(model, attach_to=["Conv"], quantized=True)
    eff.predict(x, 8)
    ref = analyze(model, x, attach_to=["Conv"], quantized=True)
    for mine, theirs in zip(eff.efficiency_layers, ref.layers):
        assert sorted(mine.counts().tolist()) == sorted(theirs.state_counts.tolist())
