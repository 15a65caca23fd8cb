"""Packed captures: the graph's packed bytes equal np.packbits(x > 0) of the literal tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_state.capture.pack import PackRequest, add_packed_outputs, pack_request
from onnx_state.capture.rewrite import add_outputs
from onnx_state.capture.select import Capture
from onnx_state.capture.session import make_session
from onnx_state.errors import InputError, LayerNotFoundError

F32 = np.float32
# Every kind of float32 that matters at the threshold: ±0, the smallest and largest
# subnormals, the smallest normal, ±max, ±inf and ordinary values.
SPECIALS = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1.17549435e-38, 3.4028235e38,
     -3.4028235e38, np.inf, -np.inf, 1.0, -1.0, 0.5, -2.5],
    F32,
)  # fmt: skip
ONNX_OF = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
           np.float64: TensorProto.DOUBLE}  # fmt: skip


def identity_net(rank: int, channels: int, dtype=F32, producer: str = "conv", opset: int = 17):
    """x -> t = identity of x (a depthwise Conv of weight 1, or Mul by 1) -> Relu -> y.

    The depthwise Conv keeps t a real conv map that onnxruntime runs in its NCHWc layout;
    it passes every value through exactly (x * 1, -0 becoming +0), so t's literal values are
    x's and numpy can state the expected bits independently.
    """
    et = ONNX_OF[dtype]
    shape = ["N", channels, 3, 5, 2][:rank] if rank > 1 else ["N"]
    one = np.ones((channels,) + (1,) * (rank - 1), dtype)
    if producer == "conv":
        t = helper.make_node(
            "Conv", ["x", "w"], ["t"], group=channels, kernel_shape=[1] * (rank - 2)
        )
    else:
        one = np.array(1, dtype)
        t = helper.make_node("Mul", ["x", "w"], ["t"])
    nodes = [t, helper.make_node("Relu", ["t"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "identity",
        [helper.make_tensor_value_info("x", et, shape)],
        [helper.make_tensor_value_info("y", et, shape)],
        [numpy_helper.from_array(one, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def special_data(shape, dtype=F32, nan=False, seed=0):
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # ±max become ±inf in float16
        pool = SPECIALS.astype(dtype)
    if dtype == np.float16:
        pool = np.concatenate([pool, np.array([6e-8, -6e-8, 6.1e-5], np.float16)])
    if dtype == np.float64:
        pool = np.concatenate([pool, np.array([5e-324, -5e-324, 1e-300])])
    if nan:
        pool = np.concatenate([pool, np.array([np.nan, -np.nan], dtype)])
    return rng.choice(pool, shape).astype(dtype)


def literal_tensor(model, x, optimization="all"):
    """t as the unpacked instrumented model returns it."""
    cap = Capture(
        "t",
        "t",
        "t",
        "Conv",
        "Conv",
        "after",
        1,
        elem_type=model.graph.input[0].type.tensor_type.elem_type,
    )
    session = make_session(add_outputs(model, [cap]), optimization=optimization)
    return session.run(["y", "t"], {"x": x})


def run_packed(model, requests, x, method="auto", optimization="all"):
    packed_model, outs = add_packed_outputs(model, requests, method=method)
    onnx.checker.check_model(packed_model, full_check=True)
    session = make_session(packed_model, optimization=optimization)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {"x": x})))
    return values, outs


def expected(t, axis):
    return np.packbits(np.asarray(t) > 0, axis=axis, bitorder="little")


@pytest.mark.parametrize("channels", [1, 7, 8, 9, 16, 64])
@pytest.mark.parametrize("rank", [3, 4, 5])
def test_conv_maps_pack_exactly(rank, channels):
    model = identity_net(rank, channels)
    x = special_data((4, channels, 3, 5, 2)[:rank])
    y_lit, t = literal_tensor(model, x)
    values, (out,) = run_packed(model, [PackRequest("t", 1, rank, channels)], x)
    assert out.route == ("scale" if rank == 4 else "compare")
    assert out.axis == 1 and out.bytes == -(-channels // 8)
    got = values[out.output]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected(t, 1))  # the literal tensor, as captured
    np.testing.assert_array_equal(got, expected(x, 1))  # numpy's statement of t
    # The original output is unchanged: bitwise equal to the unpacked and the original model's.
    assert values["y"].tobytes() == y_lit.tobytes()
    (y_orig,) = make_session(model).run(["y"], {"x": x})
    assert values["y"].tobytes() == y_orig.tobytes()
    if out.route == "scale":
        assert np.isfinite(values[out.nan_check_output])
    else:
        assert values[out.nan_output] == 0


@pytest.mark.parametrize("optimization", ["disable", "basic", "extended", "all"])
@pytest.mark.parametrize("channels", [8, 128])
def test_scale_route_is_exact_at_every_optimization_level(channels, optimization):
    model = identity_net(4, channels)
    x = special_data((2, channels, 3, 5), seed=1)
    values, (out,) = run_packed(
        model, [PackRequest("t", 1, 4, channels)], x, optimization=optimization
    )
    np.testing.assert_array_equal(values[out.output], expected(x, 1))
    assert np.isfinite(values[out.nan_check_output])


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_neurons_on_axis_1_of_every_rank_match_numpy(rank):
    channels = 9
    model = identity_net(rank, channels, producer="mul")
    x = special_data((3, channels, 3, 5, 2)[:rank], seed=rank)
    _, t = literal_tensor(model, x)
    values, (out,) = run_packed(model, [PackRequest("t", 1, rank, channels)], x)
    assert out.axis == 1
    np.testing.assert_array_equal(values[out.output], expected(t, 1))


@pytest.mark.parametrize(("axis", "byte_axis"), [(-1, 3), (2, 3), (3, 3)])
def test_other_neuron_axes_pack_along_the_last_axis(axis, byte_axis):
    model = identity_net(4, 6, producer="mul")
    x = special_data((2, 6, 3, 5), seed=3)
    values, (out,) = run_packed(model, [PackRequest("t", axis, 4, x.shape[axis])], x)
    assert (out.route, out.axis) == ("compare", byte_axis)
    want = expected(np.moveaxis(x, axis, -1), -1)  # the neuron axis moved last, others in order
    np.testing.assert_array_equal(values[out.output], want)


@pytest.mark.parametrize("channels", [7, 16])
def test_nan_is_counted_on_the_scale_route_and_exact_on_compare(channels):
    model = identity_net(4, channels)
    x = special_data((3, channels, 3, 5), nan=True, seed=4)
    assert np.isnan(x).any()
    request = [PackRequest("t", 1, 4, channels)]
    values, (out,) = run_packed(model, request, x)
    assert out.route == "scale" and np.isnan(values[out.nan_check_output])  # never silently wrong
    clean = ~np.isnan(x).any(axis=1, keepdims=True)  # positions no NaN reached
    got, want = values[out.output], expected(x, 1)
    np.testing.assert_array_equal(np.where(clean, got, 0), np.where(clean, want, 0))
    values, (out,) = run_packed(model, request, x, method="compare")
    assert out.route == "compare" and out.nan_check_output is None
    np.testing.assert_array_equal(values[out.output], want)  # NaN does not fire, as in numpy
    assert values[out.nan_output] == np.isnan(x).sum()


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_double_pack_exactly(dtype):
    model = identity_net(4, 9, dtype=dtype, producer="mul")
    x = special_data((3, 9, 3, 5), dtype=dtype, nan=True, seed=5)
    _, t = literal_tensor(model, x)
    values, (out,) = run_packed(model, [PackRequest("t", 1, 4, 9, ONNX_OF[dtype])], x)
    assert out.route == "compare"
    np.testing.assert_array_equal(values[out.output], expected(t, 1))
    np.testing.assert_array_equal(values[out.output], expected(x, 1))
    assert values[out.nan_output] == np.isnan(x).sum() > 0


def test_original_outputs_stay_first_and_repeats_share_one_output():
    model = identity_net(4, 16)
    req = PackRequest("t", 1, 4, 16)
    packed, outs = add_packed_outputs(model, [req, req])
    assert outs[0] is outs[1]
    assert [o.name for o in packed.graph.output] == ["y", outs[0].output, outs[0].nan_check_output]
    assert len(model.graph.output) == 1  # the input model is not modified


def test_bad_requests_are_reported_together():
    model = identity_net(4, 16)
    with pytest.raises(LayerNotFoundError, match="Did you mean: t"):
        add_packed_outputs(model, [PackRequest("tt", 1, 4, 16)])
    bad = [
        PackRequest("t", 4, 4, 16),
        PackRequest("x", 1, 4, 0),
        PackRequest("y", 1, 4, 16, TensorProto.INT32),
        PackRequest("x", 1, 3, 16),
        PackRequest("y", 1, 4, 15),
    ]
    with pytest.raises(InputError) as err:
        add_packed_outputs(model, bad)
    text = str(err.value)
    assert "axis 4 is out of range" in text and "at least 1" in text
    assert "element type INT32 cannot be packed" in text and "model declares FLOAT" in text
    assert "x: requested twice" in text and "rank 3, the model 4" in text
    assert "says 15 neurons, the model's axis 1 has 16" in text
    with pytest.raises(InputError, match="method must be one of"):
        add_packed_outputs(model, [PackRequest("t", 1, 4, 16)], method="fast")  # type: ignore[arg-type]


def test_pack_request_from_a_capture_needs_a_known_neuron_count():
    fixed = Capture("c", "t", "l", "Conv", "Conv", "after", 1, 4, TensorProto.FLOAT, (2, 9, 3, 5))
    assert pack_request(fixed) == PackRequest("t", 1, 4, 9, TensorProto.FLOAT)
    symbolic = Capture("c", "t", "l", "Conv", "Conv", "after", 1, 4, shape=("N", "C", 3, 5))
    with pytest.raises(InputError, match="cannot pack c: the size of its neuron axis 1"):
        pack_request(symbolic)


def test_old_opsets_take_the_compare_route_or_are_refused():
    model = identity_net(4, 16, opset=10)  # Clip takes its bounds as inputs from opset 11
    x = special_data((2, 16, 3, 5), nan=True, seed=6)
    values, (out,) = run_packed(model, [PackRequest("t", 1, 4, 16)], x)
    assert out.route == "compare"
    np.testing.assert_array_equal(values[out.output], expected(x, 1))
    with pytest.raises(InputError, match="opset 8 is below 9"):
        add_packed_outputs(identity_net(4, 16, opset=8), [PackRequest("t", 1, 4, 16)])


def test_scale_route_keeps_onnxruntimes_nchwc_layout(tmp_path):
    """Only the packed map (16 channels) is converted out of NCHWc, not the 32-channel map."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(7)
    w = rng.normal(size=(32, 16, 3, 3)).astype(F32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    def reorders(m):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(m.SerializeToString(), options, ["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
        if not any(n.domain == "com.microsoft.nchwc" for n in nodes):
            pytest.skip("this onnxruntime build has no NCHWc kernels")
        return sorted(
            next(a.i for a in n.attribute if a.name == "channels")
            for n in nodes
            if n.op_type == "ReorderOutput"
        )

    literal = add_outputs(model, [Capture("t", "t", "t", "Conv", "Conv", "after", 1)])
    assert reorders(literal) == [32, 32]  # the captured map and the Relu output
    packed, _ = add_packed_outputs(model, [PackRequest("t", 1, 4, 32)])
    assert reorders(packed) == [16, 32]  # the packed map instead of the captured one
