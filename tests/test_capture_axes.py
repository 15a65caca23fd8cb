"""The neuron-axis rule table, one tiny graph per op family, against numpy references.

Each test builds its graph inline, computes the intended tensor with numpy, and checks that
onnx_state counts exactly the states of that tensor over the intended axis.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_state import analyze
from onnx_state.capture import select_captures
from onnx_state.capture.axes import neuron_axis
from onnx_state.errors import AxisGuessWarning, InputError
from tests.models import make_model
from tests.reference import assert_states, reference_counts

F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def run_layers(model, data, attach_to, **kw):
    """analyze() with every warning about axes turned into an error (rules must decide)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxisGuessWarning)
        result = analyze(model, data, attach_to=attach_to, parity=False, **kw)
    return {r.tensor: r for r in result.layers}, {r.name: r for r in result.layers}


def check(layer, x, axis):
    """*layer* counted exactly the states of numpy tensor *x* over *axis*."""
    assert layer.axis == axis
    assert layer.neurons == x.shape[axis]
    assert_states(layer, *reference_counts(x, axis))


def away_from_zero(*arrays, margin=1e-3):
    """Precondition of a float reference: no value so close to 0 that rounding could flip it."""
    for a in arrays:
        assert np.min(np.abs(a)) > margin, "choose another seed: a value is near zero"


def layer_norm(x, scale, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_transformer_block_counts_the_hidden_axis_everywhere():
    """ids → Gather(embedding) → Add(positions) → LayerNorm → MatMul → Add(residual) → Relu,
    all (N, 5, 8): the hidden axis (8) is the neurons of every output, with no guess."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(11, 8)).astype(np.float32)
    pos = rng.normal(size=(5, 8)).astype(np.float32)
    w = rng.normal(size=(8, 8)).astype(np.float32)
    scale, bias = np.ones(8, np.float32), np.zeros(8, np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
        helper.make_node("Add", ["e", "P"], ["a"], name="add_pos"),
        helper.make_node("LayerNormalization", ["a", "S", "B"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "W"], ["m"], name="proj"),
        helper.make_node("Add", ["m", "n"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["y"], name="act"),
    ]
    model = make_model(
        nodes,
        [vi("ids", ["N", 5], TensorProto.INT64)],
        [vi("y", ["N", 5, 8])],
        [("E", emb), ("P", pos), ("W", w), ("S", scale), ("B", bias)],
    )
    ids = rng.integers(0, 11, (40, 5)).astype(np.int64)
    e = emb.astype(np.float64)[ids]
    a = e + pos
    n = layer_norm(a, scale, bias)
    m = n @ w
    res = m + n
    away_from_zero(e, a, n, m, res)
    by_tensor, _ = run_layers(model, ids, ["Gather", "Add", "LayerNormalization", "MatMul"])
    for name, ref in {"e": e, "a": a, "n": n, "m": m}.items():
        check(by_tensor[name], ref, 2)
    # the residual Add is read at the Relu's output (same states)
    check(by_tensor["res"], res, 2)
    index_rule = neuron_axis(model, "n").rule
    assert "LayerNormalization" in index_rule


def lstm_reference(x, w, r, b, hidden, reverse=False):
    """ONNX LSTM (gates i, o, f, c; default activations), one direction; (Y, h, c)."""

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    seq, batch, _ = x.shape
    h = np.zeros((batch, hidden))
    c = np.zeros((batch, hidden))
    ys = [None] * seq
    steps = range(seq - 1, -1, -1) if reverse else range(seq)
    for t in steps:
        g = x[t] @ w.T + h @ r.T + b[: 4 * hidden] + b[4 * hidden :]
        i, o, f, cc = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
        i, o, f, cc = sigmoid(i), sigmoid(o), sigmoid(f), np.tanh(cc)
        c = f * c + i * cc
        h = o * np.tanh(c)
        ys[t] = h
    return np.stack(ys), h, c


def test_bidirectional_lstm_outputs_join_both_directions_as_pytorch_does():
    """Y, Y_h and Y_c are all captured; each is counted over the hidden axis with the two
    directions as one neuron set, forward units first (PyTorch's nn.LSTM output layout)."""
    rng = np.random.default_rng(0)
    seq, batch, inp, hid = 6, 9, 3, 4
    w = rng.normal(size=(2, 4 * hid, inp)).astype(np.float32)
    r = rng.normal(size=(2, 4 * hid, hid)).astype(np.float32)
    b = rng.normal(size=(2, 8 * hid)).astype(np.float32)
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "B"], ["Y", "Y_h", "Y_c"], name="lstm",
        hidden_size=hid, direction="bidirectional",
    )  # fmt: skip
    model = make_model(
        [node],
        [vi("x", [seq, "N", inp])],
        [vi("Y", [seq, 2, "N", hid]), vi("Y_h", [2, "N", hid]), vi("Y_c", [2, "N", hid])],
        [("W", w), ("R", r), ("B", b)],
    )
    x = rng.normal(size=(seq, batch, inp)).astype(np.float32)
    fwd = lstm_reference(x.astype(np.float64), w[0], r[0], b[0], hid)
    bwd = lstm_reference(x.astype(np.float64), w[1], r[1], b[1], hid, reverse=True)
    away_from_zero(fwd[0], bwd[0], fwd[2], bwd[2], margin=1e-4)
    # The model's batch axis is 1: feed samples on axis 1 through a sequence-first input.
    caps = select_captures(model, ["LSTM"])
    assert [c.name for c in caps] == ["lstm_post_states", "lstm.1_post_states",
                                      "lstm.2_post_states"]  # fmt: skip
    assert all(c.merge_axis is not None for c in caps)
    from onnx_state.capture import Instrumented

    # (analyze would cut x along axis 0, its time axis: warned; run takes the batch whole)
    with pytest.warns(RuntimeWarning, match=r"input 'x' is the sequence of LSTM 'lstm', whose "
                      r"axis 0 is time"):  # fmt: skip
        inst = Instrumented(model, attach_to=["LSTM"])
    run = inst.run({"x": x}, batch)
    y_torch = np.concatenate([fwd[0], bwd[0]], axis=-1)  # (seq, batch, 2H): nn.LSTM output
    h_n = np.concatenate([fwd[1], bwd[1]], axis=-1)
    c_n = np.concatenate([fwd[2], bwd[2]], axis=-1)
    for cap, ref in zip(caps, [y_torch, h_n, c_n]):
        got = run.captured[cap.key]
        assert got.shape == ref.shape
        assert cap.axis == ref.ndim - 1
        from onnx_state.count import StateCounter

        counter = StateCounter()
        counter.update(got, axis=cap.axis)
        assert_states(counter, *reference_counts(ref, ref.ndim - 1))


def test_softmax_after_reshape_and_transpose_uses_its_axis():
    """YOLOv8's box head: (N, 64, A) → Reshape (N, 4, 16, A) → Transpose → Softmax(axis=1):
    16 neurons, not the anchors."""
    rng = np.random.default_rng(1)
    anchors = 7
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="tr", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["t"], ["s"], name="softmax", axis=1),
        helper.make_node("Sub", ["s", "half"], ["y"], name="centre"),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 64, anchors])],
        [vi("y", ["N", 16, 4, anchors])],
        [("shape", np.array([-1, 4, 16, anchors], np.int64)),
         ("half", np.array(1 / 16, np.float32))],
    )  # fmt: skip
    x = rng.normal(size=(5, 64, anchors)).astype(np.float32) * 3
    t = x.astype(np.float64).reshape(5, 4, 16, anchors).transpose(0, 2, 1, 3)
    s = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    y = s - 1 / 16
    away_from_zero(y, margin=1e-5)
    by_tensor, _ = run_layers(model, x, ["Softmax", "Sub"])
    check(by_tensor["s"], s, 1)
    check(by_tensor["y"], y, 1)  # follows the softmax axis through the broadcast Sub


def test_every_output_of_a_split_is_captured_and_named_apart():
    """YOLOv8's head Split: the 64 box channels and the 18 class channels are both counted."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(82, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["img", "W"], ["x"], name="conv"),
        helper.make_node("Split", ["x", "sizes"], ["box", "cls"], name="head", axis=1),
        helper.make_node("Neg", ["box"], ["yb"], name="nb"),
        helper.make_node("Neg", ["cls"], ["yc"], name="nc"),
    ]
    model = make_model(
        nodes,
        [vi("img", ["N", 2, 3, 3])],
        [vi("yb", ["N", 64, 3, 3]), vi("yc", ["N", 18, 3, 3])],
        [("sizes", np.array([64, 18], np.int64)), ("W", w)],
    )
    img = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)
    x = np.einsum("nchw,oc->nohw", img.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    away_from_zero(x, margin=1e-5)
    by_tensor, by_name = run_layers(model, img, ["Split"])
    assert set(by_name) == {"head_post_states", "head.1_post_states"}
    check(by_tensor["box"], x[:, :64], 1)
    check(by_tensor["cls"], x[:, 64:], 1)
    # naming one output captures that one; excluding one leaves the other
    assert [c.tensor for c in select_captures(model, ["cls"])] == ["cls"]
    assert [c.tensor for c in select_captures(model, ["Split"], exclude=["box"])] == ["cls"]
    assert [c.tensor for c in select_captures(model, ["Split", "Conv"], exclude=["box", "cls"])
            ] == ["x"]  # fmt: skip


def test_by_type_a_rank_1_output_beside_the_states_is_left_out():
    # (onnxruntime's EmbedLayerNormalization also gives its rank-1 mask_index: selecting the
    # type refused the whole layer; here BatchNormalization's training outputs)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                              ["y", "mean", "var"], name="bn", training_mode=1)]  # fmt: skip
    one = np.ones(3, np.float32)
    model = make_model(
        nodes, [vi("x", ["N", 3, 4])],
        [vi("y", ["N", 3, 4]), vi("mean", [3]), vi("var", [3])],
        [("s", one), ("b", one), ("m", one), ("v", one)],
    )  # fmt: skip
    assert [c.tensor for c in select_captures(model, ["BatchNormalization"])] == ["y"]
    with pytest.raises(InputError, match="tensor 'mean' has rank 1"):
        select_captures(model, ["mean"])  # named, it is refused in one line


def test_broadcast_follows_the_data_input_not_the_parameter():
    """Add(bias (8,), x (N, 5, 8)): the parameter comes first, the data decides the axis;
    Mul(scale (1, C, 1, 1), conv map) keeps the channel axis; reductions keep what survives."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(4, 2, 1, 1)).astype(np.float32)
    ws = rng.normal(size=(8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["img", "W"], ["c"], name="conv"),
        helper.make_node("Mul", ["scale", "c"], ["m"], name="scale"),
        helper.make_node("ReduceMean", ["m"], ["g"], name="gap", axes=[2, 3], keepdims=1),
        helper.make_node("ReduceSum", ["m", "ax"], ["s"], name="rsum", keepdims=0),
        helper.make_node("MatMul", ["seq", "Ws"], ["ms"], name="fc"),
        helper.make_node("Add", ["bias", "ms"], ["a"], name="bias_add"),
    ]
    model = make_model(
        nodes,
        [vi("img", ["N", 2, 3, 3]), vi("seq", ["N", 5, 8])],
        [vi("g", ["N", 4, 1, 1]), vi("s", ["N", 4]), vi("a", ["N", 5, 8])],
        [("W", w), ("scale", np.array([1, -1, 2, -2], np.float32).reshape(1, 4, 1, 1)),
         ("bias", rng.normal(size=8).astype(np.float32)), ("ax", np.array([2, 3], np.int64)),
         ("Ws", ws)],
        opset=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    img = rng.normal(size=(10, 2, 3, 3)).astype(np.float32)
    seq = rng.normal(size=(10, 5, 8)).astype(np.float32)
    c = np.einsum("nchw,oc->nohw", img.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    m = c * np.array([1, -1, 2, -2]).reshape(1, 4, 1, 1)
    g, s = m.mean((2, 3), keepdims=True), m.sum((2, 3))
    a = seq.astype(np.float64) @ ws + numpy_helper.to_array(model.graph.initializer[2])
    away_from_zero(m, g, s, a, margin=1e-4)
    by_tensor, _ = run_layers(
        model, {"img": img, "seq": seq}, ["Mul", "ReduceMean", "ReduceSum", "Add"]
    )
    check(by_tensor["m"], m, 1)
    check(by_tensor["g"], g, 1)
    check(by_tensor["s"], s, 1)
    check(by_tensor["a"], a, 2)


def test_nhwc_model_is_followed_through_its_transposes_and_reshapes():
    """A channels-last model: Transpose in, Conv, Transpose out, Reshape (N, H*W, C): the
    channels stay the neurons through every op."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xc"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xc", "W"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["cl"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["cl", "shape"], ["flat"], name="tokens"),
        helper.make_node("Unsqueeze", ["flat", "one"], ["u"], name="unsq"),
        helper.make_node("Sigmoid", ["u"], ["y"], name="sig"),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 4, 4, 2])],
        [vi("y", ["N", 1, 16, 3])],
        [("W", w), ("shape", np.array([-1, 16, 3], np.int64)), ("one", np.array([1], np.int64))],
    )
    x = rng.normal(size=(7, 4, 4, 2)).astype(np.float32)
    cl = np.einsum("nhwc,oc->nhwo", x.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    away_from_zero(cl, margin=1e-4)
    by_tensor, _ = run_layers(model, x, ["Transpose", "Reshape", "Unsqueeze"])
    check(by_tensor["cl"], cl, 3)
    check(by_tensor["flat"], cl.reshape(7, 16, 3), 2)
    check(by_tensor["u"], cl.reshape(7, 1, 16, 3), 3)
    check(by_tensor["xc"], x.transpose(0, 3, 1, 2), 1)


def test_decomposed_attention_scores_softmax_and_values():
    """Q·Kᵀ scores over the keys, Softmax over its axis, ·V over the head dimension."""
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["p"], name="attn", axis=-1),
        helper.make_node("Sub", ["p", "mean"], ["pc"], name="centre"),
        helper.make_node("MatMul", ["pc", "v"], ["o"], name="pv"),
    ]
    h, s, d = 2, 4, 3
    model = make_model(
        nodes,
        [vi("q", ["N", h, s, d]), vi("k", ["N", h, s, d]), vi("v", ["N", h, s, d])],
        [vi("o", ["N", h, s, d])],
        [("mean", np.array(1 / s, np.float32))],
    )
    q, k, v = (rng.normal(size=(8, h, s, d)).astype(np.float32) for _ in range(3))
    sc = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    p = np.exp(sc) / np.exp(sc).sum(-1, keepdims=True)
    pc = p - 1 / s
    o = pc @ v.astype(np.float64)
    away_from_zero(sc, pc, o, margin=1e-5)
    by_tensor, _ = run_layers(model, {"q": q, "k": k, "v": v}, ["MatMul", "Sub"])
    check(by_tensor["scores"], sc, 3)
    check(by_tensor["pc"], pc, 3)
    check(by_tensor["o"], o, 3)


def test_group_and_instance_norm_use_the_channel_axis():
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("GroupNormalization", ["x", "S", "B"], ["g"], name="gn", num_groups=2),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 4, 3, 3])],
        [vi("g", ["N", 4, 3, 3])],
        [("S", np.ones(4, np.float32)), ("B", np.zeros(4, np.float32))],
        opset=[helper.make_opsetid("", 21)],
    )
    x = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    grouped = x.astype(np.float64).reshape(6, 2, -1)
    ref = (grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(
        grouped.var(-1, keepdims=True) + 1e-5
    )
    ref = ref.reshape(x.shape)
    away_from_zero(ref, margin=1e-4)
    by_tensor, _ = run_layers(model, x, ["GroupNormalization"])
    check(by_tensor["g"], ref, 1)


def test_a_lost_axis_is_guessed_with_one_warning_per_layer_and_the_override_named():
    """Reshape (N, 4, 6) → (N, 8, 3) splits the neuron dimension: no rule can follow it."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="fc"),
        helper.make_node("Reshape", ["m", "shape"], ["r"], name="regroup"),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 4, 2])],
        [vi("r", ["N", 8, 3])],
        [("W", np.ones((2, 6), np.float32)), ("shape", np.array([-1, 8, 3], np.int64))],
    )
    with pytest.warns(AxisGuessWarning, match=r"layer 'regroup'.*assuming axis 2.*--neuron-axis "
                      r"regroup=AXIS") as record:  # fmt: skip
        caps = select_captures(model, ["MatMul", "Reshape"])
    assert len([w for w in record if "regroup" in str(w.message)]) == 1
    assert [c.axis for c in caps] == [2, 2]
    assert caps[0].axis_rule == "last axis of MatMul"
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxisGuessWarning)
        caps = select_captures(model, ["Reshape"], neuron_axes={"regroup": 1})
    assert caps[0].axis == 1 and caps[0].axis_rule == "given (neuron_axes)"


def test_long_chains_are_followed_without_a_depth_cap():
    """600 element-wise ops after a Conv: the channel axis is still found (no silent cap)."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["t0"], name="conv")]
    for i in range(600):
        nodes.append(helper.make_node("Neg", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}"))
    model = make_model(
        nodes,
        [vi("x", ["N", 2, 3, 3])],
        [vi("t600", ["N", 3, 3, 3])],
        [("W", np.ones((3, 2, 1, 1), np.float32))],
    )
    choice = neuron_axis(model, "t600")
    assert choice.axis == 1 and not choice.guessed
    assert choice.rule.startswith("channel axis of Conv → …")


def test_before_captures_take_the_axis_their_consumer_defines():
    """The input of a MatMul has its features last; of a Conv, channels on axis 1 — even
    when what produced it has no rule (a graph input without metadata)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")]
    model = make_model(
        nodes, [vi("x", ["N", 5, 4])], [vi("y", ["N", 5, 3])], [("W", np.ones((4, 3), np.float32))]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxisGuessWarning)
        (cap,) = select_captures(model, ["MatMul"], method="before")
    assert cap.axis == 2 and cap.axis_rule == "feature axis of MatMul's input"


@pytest.mark.parametrize(
    ("op", "attrs", "inputs"),
    [
        ("Relu", {}, []),
        ("LeakyRelu", {"alpha": 0.1}, []),
        ("Clip", {}, ["zero", "six"]),
        ("Clip", {}, ["zero"]),
    ],
)
def test_a_relu_like_consumer_is_read_instead_with_identical_states(op, attrs, inputs):
    """x > 0 ⇔ f(x) > 0 in floating point, subnormals, ±0, ±inf and NaN included: reading
    the activation's output gives the literal tensor's states exactly."""
    tiny = np.float32(1.4e-45)  # the smallest subnormal
    special = np.array([tiny, -tiny, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-38, -1e-38, 3e38],
                       np.float32)  # fmt: skip
    rng = np.random.default_rng(8)
    x = rng.normal(size=(50, 10)).astype(np.float32)
    x[:, :] = np.where(rng.random((50, 10)) < 0.5, special[rng.integers(0, 10, (50, 10))], x)
    nodes = [
        helper.make_node("Add", ["x", "zero"], ["a"], name="add"),
        helper.make_node(op, ["a", *inputs], ["y"], name="act", **attrs),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 10])],
        [vi("y", ["N", 10])],
        [("zero", np.array(0, np.float32)), ("six", np.array(6, np.float32))],
    )
    (cap,) = select_captures(model, ["Add"])
    assert cap.source == "y" and cap.tensor == "a"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the NaN count, checked below
        read = analyze(model, x, attach_to=["Add"], parity=False).layers[0]
        literal = analyze(model, x, attach_to=["Add"], parity=False, literal=True).layers[0]
    np.testing.assert_array_equal(read.state_ids(), literal.state_ids())
    np.testing.assert_array_equal(read.counts(), literal.counts())
    assert read.nan_count == literal.nan_count == int(np.isnan(x).sum())
    assert_states(read, *reference_counts(x + np.float32(0), 1))


def test_no_substitution_when_another_consumer_or_a_sign_changing_activation_follows():
    nodes = [
        helper.make_node("Add", ["x", "zero"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
        helper.make_node("Add", ["x", "one"], ["b"], name="add2"),
        helper.make_node("LeakyRelu", ["b"], ["lb"], name="neg_leak", alpha=-0.5),
        # alpha 0: 0 * -inf is NaN, where the input held -inf (the NaN counts would differ)
        helper.make_node("Add", ["x", "one"], ["c"], name="add3"),
        helper.make_node("LeakyRelu", ["c"], ["lc"], name="flat_leak", alpha=0.0),
    ]
    model = make_model(
        nodes,
        [vi("x", ["N", 3])],
        [vi("r", ["N", 3]), vi("s", ["N", 3]), vi("lb", ["N", 3]), vi("lc", ["N", 3])],
        [("zero", np.array(0, np.float32)), ("one", np.array(1, np.float32))],
    )
    caps = select_captures(model, ["Add"])
    assert [c.read for c in caps] == ["a", "b", "c"]


def test_model_input_metadata_and_exporter_metadata_decide_first():
    from tests.models import tag

    node = tag(helper.make_node("Neg", ["x"], ["y"], name="neg"), "neg", "Custom", axis=2)
    model = make_model([node], [vi("x", ["N", 3, 4])], [vi("y", ["N", 3, 4])])
    assert neuron_axis(model, "y").rule == "exporter metadata"
    assert neuron_axis(model, "y").axis == 2
    meta = model.metadata_props.add()
    meta.key, meta.value = "onnx_state.input_axes", '{"x": 1}'
    assert neuron_axis(model, "x").axis == 1
    assert neuron_axis(model, "x").rule == "model input metadata"


def test_results_record_the_rule_and_the_tensor_read():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    model = make_model(
        nodes, [vi("x", ["N", 2, 3, 3])], [vi("y", ["N", 2, 3, 3])],
        [("W", np.ones((2, 2, 1, 1), np.float32))],
    )  # fmt: skip
    (cap,) = select_captures(model, ["Conv"])
    assert cap.axis_rule == "channel axis of Conv" and cap.read == "y"
    onnx.checker.check_model(model)


def test_squeeze_with_axes_computed_at_run_time_is_guessed_and_warned():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="fc"),
        helper.make_node("Shape", ["k"], ["ks"], name="shape_of_k"),
        helper.make_node("Squeeze", ["m", "ks"], ["y"], name="sq"),
    ]
    model = make_model(
        nodes,
        [vi("x", [2, 1, 1, 3]), vi("k", ["A"])],
        [vi("y", ["a", "b", "c"])],
        [("W", np.ones((3, 4), np.float32))],
    )
    with pytest.warns(AxisGuessWarning, match="layer 'sq'"):
        select_captures(model, ["Squeeze"])


def test_a_bidirectional_lstm_reshaped_as_pytorch_does_keeps_its_hidden_units():
    """LSTM Y (seq, 2, batch, H) → Transpose (seq, batch, 2, H) → Reshape (seq, batch, 2H),
    an exporter's way to PyTorch's output: the neurons are the last axis, both directions."""
    hid = 3
    nodes = [
        helper.make_node(
            "LSTM", ["x", "W", "R"], ["Y"], name="lstm", hidden_size=hid, direction="bidirectional"
        ),
        helper.make_node("Transpose", ["Y"], ["t"], name="tr", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "shape"], ["out"], name="merge"),
    ]
    rng = np.random.default_rng(0)
    model = make_model(
        nodes,
        [vi("x", ["S", "N", 2])],
        [vi("out", ["S", "N", 2 * hid])],
        [("W", rng.normal(size=(2, 4 * hid, 2)).astype(np.float32)),
         ("R", rng.normal(size=(2, 4 * hid, hid)).astype(np.float32)),
         ("shape", np.array([0, 0, -1], np.int64))],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", AxisGuessWarning)
        choice = neuron_axis(model, "out")
    assert choice.axis == 2 and "hidden axis of LSTM" in choice.rule


def _squeezed_batch_model():
    """A batch-1 model that squeezes its batch away and brings it back: Conv (1, 6, 4, 4)
    → Reshape (1, 6, 16) → Squeeze (6, 16) → Unsqueeze (1, 6, 16)."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat_hw"),
        helper.make_node("Squeeze", ["r", "ax0"], ["sq"], name="drop_batch"),
        helper.make_node("Unsqueeze", ["sq", "ax0"], ["us"], name="re_batch"),
    ]
    rng = np.random.default_rng(5)
    inits = [
        ("W", rng.normal(size=(6, 3, 1, 1)).astype(np.float32)),
        ("shape", np.array([1, 6, 16], np.int64)),
        ("ax0", np.array([0], np.int64)),
    ]
    return make_model(nodes, [vi("x", [1, 3, 4, 4])], [vi("us", [1, 6, 16])], inits)


@pytest.mark.parametrize("attach_to", [["re_batch"], ["drop_batch", "re_batch"], ["Squeeze",
                                       "Unsqueeze"], ["Unsqueeze", "Squeeze"]])  # fmt: skip
def test_an_axis_0_guess_does_not_change_the_axes_found_downstream(attach_to):
    # The guess for the squeezed tensor once went into the shared memo, and the Unsqueeze
    # after it followed the guess: its axis depended on what else was selected.
    model = _squeezed_batch_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AxisGuessWarning)
        caps = {c.tensor: c for c in select_captures(model, attach_to)}
    assert caps["us"].axis == 1
    assert caps["us"].axis_rule.startswith("channel axis of Conv")  # followed, not guessed


def test_a_rank_2_tensor_whose_rule_lands_on_axis_0_is_warned():
    # (6, 16): the channels sit on axis 0, where counting cannot put them; the fallback
    # (axis 1) is a guess and says so, with the override.
    model = _squeezed_batch_model()
    with pytest.warns(AxisGuessWarning, match=r"layer 'drop_batch'.*assuming axis 1.*"
                      r"--neuron-axis drop_batch=AXIS"):  # fmt: skip
        (cap,) = select_captures(model, ["drop_batch"])
    assert cap.axis == 1 and cap.axis_rule.endswith("(guessed)")


def test_a_time_major_recurrent_input_is_warned_and_a_batch_first_one_is_not():
    # (a sequence-first LSTM cut into batches along axis 0 would count time chunks, its
    # state reset at each cut, with no word of it)
    from onnx_state.capture import Instrumented

    def lstm_model(layout):
        shape = ["T", "N", 3] if layout == 0 else ["N", "T", 3]
        node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], name="lstm", hidden_size=2,
                                layout=layout)  # fmt: skip
        inits = [("W", np.ones((1, 8, 3), np.float32)), ("R", np.ones((1, 8, 2), np.float32))]
        y = ["T", 1, "N", 2] if layout == 0 else ["N", "T", 1, 2]
        return make_model([node], [vi("x", shape)], [vi("Y", y)], inits)

    with pytest.warns(RuntimeWarning, match=r"input 'x' is the sequence of LSTM 'lstm'.*"
                      r"export the model batch-first"):  # fmt: skip
        Instrumented(lstm_model(0), attach_to=["LSTM"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Instrumented(lstm_model(1), attach_to=["LSTM"])


def test_neurons_on_axis_0_are_refused_at_selection_naming_the_layer():
    # Gemm(transA=1) reads its input (features, N): before it, the neurons are on axis 0
    # (this once failed mid-run with a message that named no layer)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="flip"),
        helper.make_node("Gemm", ["xt", "W"], ["y"], name="fc", transA=1),
    ]
    model = make_model(
        nodes, [vi("x", ["N", 6])], [vi("y", ["N", 3])], [("W", np.ones((6, 3), np.float32))]
    )
    with pytest.raises(InputError, match=r"fc_pre_states: the neurons of tensor 'xt' are on its "
                       r"axis 0 .*--neuron-axis fc=AXIS"):  # fmt: skip
        select_captures(model, ["fc"], method="before")
    with pytest.raises(InputError, match=r"fc_post_states: the neurons .* axis 0"):
        select_captures(model, ["fc"], neuron_axes={"fc": 0})


def test_a_matmul_with_a_constant_first_operand_is_warned_as_a_guess():
    # W (6, 4) · x (N, 4, 5): W's rows (axis 1) if it is a weight, or the last axis if it
    # is a graph conv's adjacency A · X; the shapes cannot tell
    model = make_model(
        [helper.make_node("MatMul", ["W", "x"], ["y"], name="wx")],
        [vi("x", ["N", 4, 5])], [vi("y", ["N", 6, 5])],
        [("W", np.ones((6, 4), np.float32))],
    )  # fmt: skip
    with pytest.warns(AxisGuessWarning, match=r"layer 'wx'.*constant first operand.*assuming "
                      r"axis 2.*--neuron-axis wx=AXIS"):  # fmt: skip
        (cap,) = select_captures(model, ["MatMul"])
    assert cap.axis == 2


def test_a_layer_named_like_its_first_output_is_still_selected_and_excluded_whole():
    nodes = [
        helper.make_node("Split", ["x", "sp"], ["a", "b"], name="a", axis=1),
        helper.make_node("Relu", ["a"], ["ra"], name="r1"),
        helper.make_node("Relu", ["b"], ["rb"], name="r2"),
    ]
    model = make_model(
        nodes, [vi("x", ["N", 8])], [vi("ra", ["N", 4]), vi("rb", ["N", 4])],
        [("sp", np.array([4, 4], np.int64))],
    )  # fmt: skip
    assert [c.tensor for c in select_captures(model, ["a"])] == ["a", "b"]
    caps = select_captures(model, ["Split", "Relu"], exclude=["a"])
    assert [c.layer for c in caps] == ["r1", "r2"]


def test_a_capture_that_mixes_samples_into_rows_is_refused_for_per_sample_figures():
    # Reshape (N, 6) -> (2N, 3) -> MatMul: no axis of the captured (2N, 4) holds the samples
    nodes = [
        helper.make_node("Reshape", ["x", "rows"], ["xr"]),
        helper.make_node("MatMul", ["xr", "W"], ["h"], name="proj"),
        helper.make_node("Reshape", ["h", "back"], ["scores"]),
    ]
    model = make_model(
        nodes, [vi("x", ["N", 6])], [vi("scores", ["N", 8])],
        [("W", np.ones((3, 4), np.float32)), ("rows", np.array([-1, 3], np.int64)),
         ("back", np.array([-1, 8], np.int64))],
    )  # fmt: skip
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    assert analyze(model, x, attach_to=["MatMul"], batch_size=5, parity=False).layers
    with pytest.raises(InputError, match=r"no axis of captured tensor 'h' \(shape \(10, 4\)\) "
                       r"holds the batch's 5 samples.*exclude layer 'proj'"):  # fmt: skip
        analyze(model, x, labels=np.arange(10) % 3, attach_to=["MatMul"], batch_size=5,
                parity=False)  # fmt: skip
