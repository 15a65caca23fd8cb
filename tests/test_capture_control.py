"""Tensors inside If branches and Loop/Scan bodies: listing, exposing, running, counting.

Every exposed tensor is checked against a numpy computation of the intended tensor (small
integers keep every float32 sum exact), for both branches of each If; the original outputs
must stay bit for bit what the original model gives.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_state.capture.control import NestedTensor, expose, nested_nodes, subgraph_model
from onnx_state.capture.select import select_captures
from onnx_state.count.counter import StateCounter
from onnx_state.errors import LayerNotFoundError, ModelError
from tests.models import make_model, numpy_conv
from tests.reference import assert_states, reference_counts

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
RNG = np.random.default_rng(0)


def ints(*shape: int, lo: int = -2, hi: int = 3) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(np.float32)


def vi(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def check_rewrite(model, tensors, feeds):
    """Expose *tensors*, check the new model and its original outputs; the new outputs."""
    new, exposed = expose(model, tensors)
    onnx.checker.check_model(new, full_check=True)
    before, after = run(model, feeds), run(new, feeds)
    assert list(after)[: len(before)] == list(before)
    for name, value in before.items():
        assert after[name].dtype == value.dtype
        np.testing.assert_array_equal(after[name], value, strict=True)
    assert model.graph.output[-1].name == list(before)[-1]  # the original is not changed
    return exposed, after


def assert_counts(value, axis, reference):
    counter = StateCounter(reference.shape[axis]).update(value, axis)
    assert_states(counter, *reference_counts(reference, axis))


# -- a silero-like nest: four Ifs deep, Conv + Relu in the innermost branches -------------------
W_IN, W_OUT, W_ELSE = ints(4, 3, 3, 3), ints(4, 3, 3, 3), ints(4, 3, 3, 3)


def conv_branch(name, x, weight, out, own=False):
    """A branch: Relu(Conv(x, weight)) -> out, x from an outer scope, the weight outer or
    the branch's own initializer; the Conv output is called c in every branch."""
    nodes = [
        helper.make_node("Conv", [x, weight], ["c"], name=f"{name}_conv"),
        helper.make_node("Relu", ["c"], [out], name=f"{name}_relu"),
    ]
    inits = [numpy_helper.from_array(W_ELSE, weight)] if own else []
    return helper.make_graph(nodes, name, [], [vi(out)], inits)


def if_node(cond, out, then, other, name=""):
    return helper.make_node("If", [cond], [out], name=name, then_branch=then, else_branch=other)


def nested_if_model():
    """Four Ifs deep (if0 > if1 > if2 > an unnamed If, conditions c0..c3): the innermost
    gives Relu(Conv(x, W_in)) or Relu(Conv(x, W_out)); if1 and if2's else branches give
    Relu(Conv(Relu(x), W_out)), if0's Relu(Conv(x, W_own)) with its own weight."""
    inner = if_node(
        "c3", "y3", conv_branch("t3", "x", "W_in", "t3_r"), conv_branch("e3", "x", "W_out", "e3_r")
    )
    then = helper.make_graph([inner], "t2", [], [vi("y3")])
    for depth in (2, 1):
        other = helper.make_graph(
            [
                helper.make_node("Relu", ["x"], [f"x{depth}"], name=f"e{depth}_relu_x"),
                helper.make_node("Conv", [f"x{depth}", "W_out"], [f"g{depth}"]),
                helper.make_node("Relu", [f"g{depth}"], [f"r{depth}"], name=f"e{depth}_relu"),
            ],
            f"e{depth}",
            [],
            [vi(f"r{depth}")],
        )
        node = if_node(f"c{depth}", f"y{depth}", then, other, name=f"if{depth}")
        then = helper.make_graph([node], f"t{depth - 1}", [], [vi(f"y{depth}")])
    outer = if_node("c0", "y", then, conv_branch("e0", "x", "W_own", "e0_r", own=True), "if0")
    return make_model(
        [outer],
        [vi("x", F, ["N", 3, 8, 8]), *(vi(f"c{k}", B, []) for k in range(4))],
        [vi("y", F, ["N", 4, 6, 6])],
        [("W_in", W_IN), ("W_out", W_OUT)],
    )


INNER = ("if0", "then_branch", "if1", "then_branch", "if2", "then_branch", "If_0")


def test_nested_nodes_lists_every_node_with_its_owners_and_shapes():
    nodes = nested_nodes(nested_if_model())
    by = {(n.path, n.name): n for n in nodes}
    conv = by[((*INNER, "then_branch"), "t3_conv")]
    assert (conv.op_type, conv.inputs, conv.outputs) == ("Conv", ("x", "W_in"), ("c",))
    assert conv.info["c"] == (F, ("N", 4, 6, 6))
    assert conv.info["x"] == (F, ("N", 3, 8, 8))  # from the main graph's scope
    assert (conv.stacked, conv.conditional) == (0, True)
    assert by[(("if0", "else_branch"), "e0_conv")].info["W_own"] == (F, (4, 3, 3, 3))
    assert by[(("if0", "then_branch", "if1", "else_branch"), "Conv_1")].op_type == "Conv"
    assert ((*INNER[:-1],), "If_0") in by
    assert sum(n.op_type == "Conv" for n in nodes) == 5
    assert len(nodes) == 3 * 2 + 2 * 3 + 3  # the branches' nodes and the three nested Ifs


def test_tensors_four_ifs_deep_come_out_from_the_branch_that_ran_and_empty_elsewhere():
    model = nested_if_model()
    x = ints(5, 3, 8, 8)
    relu = np.maximum
    inner_then, inner_else = (*INNER, "then_branch"), (*INNER, "else_branch")
    # tensor -> (numpy reference, whether it runs for flags c0..c3)
    want = {
        NestedTensor(inner_then, "c"): (numpy_conv(x, W_IN), lambda c: all(c)),
        NestedTensor(inner_then, "t3_r"): (relu(numpy_conv(x, W_IN), 0), lambda c: all(c)),
        NestedTensor(inner_else, "c"): (numpy_conv(x, W_OUT), lambda c: all(c[:3]) and not c[3]),
        NestedTensor(("if0", "then_branch", "if1", "else_branch"), "g1"): (
            numpy_conv(relu(x, 0), W_OUT),
            lambda c: c[0] and not c[1],
        ),
        NestedTensor(("if0", "else_branch"), "c"): (numpy_conv(x, W_ELSE), lambda c: not c[0]),
    }
    for flags in [(1, 1, 1, 1), (1, 1, 1, 0), (1, 0, 1, 1), (1, 0, 0, 0), (0, 1, 1, 1)]:
        feeds = {"x": x, **{f"c{k}": np.array(bool(f)) for k, f in enumerate(flags)}}
        exposed, out = check_rewrite(model, list(want), feeds)
        assert len({e.output for e in exposed.values()}) == len(want)
        ran = 0
        for tensor, (ref, runs) in want.items():
            e = exposed[tensor]
            assert (e.stacked, e.conditional, e.elem_type) == (0, True, F)
            assert (e.shape, e.inner_shape) == ((None, 4, 6, 6), ("N", 4, 6, 6))
            value = out[e.output]
            if runs(flags):
                ran += 1
                np.testing.assert_array_equal(value, ref.astype(np.float32), strict=True)
                assert_counts(value, 1, ref)
            else:  # empty, with the neuron count kept
                assert value.shape == (0, 4, 6, 6) and value.dtype == np.float32
                counter = StateCounter().update(value, 1)
                assert (counter.neurons, counter.state_count, counter.n_unique) == (4, 0, 0)
        assert ran == (2 if all(flags) else 1)


# -- a Loop as an RNN: h <- Relu(x_t Wx + h Wh), one iteration per time step -------------------
WX, WH = ints(3, 4, lo=-1, hi=2), ints(4, 4, lo=-1, hi=2)


def rnn_body(name="rnn_body"):
    """Body (i, cond, h) -> (cond, h_new, scan output -s): x_t from the outer xs."""
    nodes = [
        helper.make_node("Gather", ["xs", "i"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "Wx"], ["a"], name="in_proj"),
        helper.make_node("MatMul", ["h", "Wh"], ["b"], name="rec_proj"),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["h_new"], name="act"),
        helper.make_node("Neg", ["s"], ["s_neg"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    return helper.make_graph(
        nodes,
        name,
        [vi("i", I64, []), vi("cond_in", B, []), vi("h", F, ["N", 4])],
        [vi("cond_out", B, []), vi("h_new", F, ["N", 4]), vi("s_neg", F, ["N", 4])],
    )


def rnn_loop(name="rnn"):
    return helper.make_node("Loop", ["M", "", "h0"], ["h_T", "neg_s"], name=name, body=rnn_body())


def rnn_reference(xs, h0, steps):
    """Per step: a = x_t Wx, s = a + h Wh, h_new = Relu(s), stacked (steps, N, 4)."""
    h, got = h0.astype(np.float64), {"a": [], "s": [], "h_new": []}
    for t in range(steps):
        a = xs[t] @ WX.astype(np.float64)
        s = a + h @ WH.astype(np.float64)
        h = np.maximum(s, 0)
        for key, value in (("a", a), ("s", s), ("h_new", h)):
            got[key].append(value)
    return {k: np.array(v).reshape(steps, len(h0), 4) for k, v in got.items()}


RNN_INPUTS = [vi("xs", F, ["T", "N", 3]), vi("h0", F, ["N", 4]), vi("M", I64, [])]
RNN_INITS = [("Wx", WX), ("Wh", WH)]


def test_loop_body_tensors_are_stacked_per_iteration_and_counted_per_time_step():
    model = make_model(
        [rnn_loop()],
        RNN_INPUTS,
        [vi("h_T", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])],
        RNN_INITS,
    )
    xs, h0 = ints(4, 6, 3), ints(6, 4)
    body = ("rnn", "body")
    tensors = [NestedTensor(body, name) for name in ("a", "s", "h_new")]
    for steps in (4, 1):
        exposed, out = check_rewrite(model, tensors, {"xs": xs, "h0": h0, "M": np.array(steps)})
        ref = rnn_reference(xs, h0, steps)
        for tensor in tensors:
            e = exposed[tensor]
            assert (e.stacked, e.conditional, e.shape, e.inner_shape) == (
                1,
                False,
                (None, None, 4),
                ("N", 4),
            )
            value = out[e.output]
            np.testing.assert_array_equal(value, ref[tensor.tensor].astype(np.float32), strict=True)
            # one state per iteration, sample and position: the neuron axis moves by one
            assert_counts(value, 1 + e.stacked, ref[tensor.tensor])
        np.testing.assert_array_equal(out["neg_s"], -ref["s"].astype(np.float32))
    exposed, out = check_rewrite(model, tensors, {"xs": xs, "h0": h0, "M": np.array(0)})
    for e in exposed.values():  # no iteration, no state
        assert out[e.output].shape == (0, 0, 4)
        assert StateCounter().update(out[e.output], 2).state_count == 0
    assert [e.output for e in exposed.values()] == ["a.rnn", "s.rnn", "h_new.rnn"]


# -- a Scan whose body projects each step: m_t = x_t W, state s <- s + m_t ---------------------
WS = ints(3, 4, lo=-1, hi=2)


def scan_model():
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "W"], ["m"], name="proj"),
            helper.make_node("Add", ["s", "m"], ["s_new"]),
            helper.make_node("Relu", ["m"], ["y_t"]),
        ],
        "scan_body",
        [vi("s", F, ["N", 4]), vi("x_t", F, ["N", 3])],
        [vi("s_new", F, ["N", 4]), vi("y_t", F, ["N", 4])],
    )
    scan = helper.make_node(
        "Scan",
        ["s0", "xs"],
        ["s_T", "ys"],
        name="scan",
        body=body,
        num_scan_inputs=1,
        scan_input_directions=[1],  # iterate from the last step back
        scan_output_directions=[1],
        scan_output_axes=[0],
    )
    return make_model(
        [scan],
        [vi("s0", F, ["N", 4]), vi("xs", F, ["T", "N", 3])],
        [vi("s_T", F, ["N", 4]), vi("ys", F, ["T", "N", 4])],
        [("W", WS)],
    )


def test_scan_body_tensors_are_stacked_in_iteration_order():
    xs, s0 = ints(5, 3, 3), ints(3, 4)
    tensor = NestedTensor(("scan", "body"), "m")
    exposed, out = check_rewrite(scan_model(), [tensor], {"s0": s0, "xs": xs})
    e = exposed[tensor]
    assert (e.stacked, e.conditional, e.shape) == (1, False, (None, None, 4))
    m = xs.astype(np.float64) @ WS.astype(np.float64)  # (T, N, 4), in the order of xs
    # the Scan reads xs from its end (scan_input_directions=[1]); the new output runs forward
    # in iteration order, so its first entry is the last time step's
    np.testing.assert_array_equal(out[e.output], m[::-1].astype(np.float32), strict=True)
    np.testing.assert_array_equal(out["ys"], np.maximum(m, 0).astype(np.float32))
    assert_counts(out[e.output], 2, m)
    scan = next(n for n in expose(scan_model(), [tensor])[0].graph.node if n.op_type == "Scan")
    attrs = {a.name: list(a.ints) for a in scan.attribute if a.ints}
    assert attrs == {
        "scan_input_directions": [1], "scan_output_directions": [1, 0], "scan_output_axes": [0, 0]
    }  # fmt: skip


def test_body_inputs_and_outer_tensors_are_exposed_as_the_body_sees_them():
    """A layer's input may be a body input (the loop-carried h) or an outer-scope tensor."""
    model = make_model(
        [rnn_loop()], RNN_INPUTS, [vi("h_T", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])],
        RNN_INITS,
    )  # fmt: skip
    xs, h0 = ints(3, 2, 3), ints(2, 4)
    h, outer = NestedTensor(("rnn", "body"), "h"), NestedTensor(("rnn", "body"), "h0")
    exposed, out = check_rewrite(model, [h, outer, h], {"xs": xs, "h0": h0, "M": np.array(3)})
    assert len(exposed) == 2 and len(out) == 4  # asked twice, exposed once
    ref = rnn_reference(xs, h0, 3)["h_new"]
    np.testing.assert_array_equal(
        out[exposed[h].output], np.stack([h0, *ref[:2]]).astype(np.float32), strict=True
    )
    np.testing.assert_array_equal(out[exposed[outer].output], np.stack([h0] * 3), strict=True)


# -- composition: a Loop inside an If, an If inside a Loop ------------------------------------
def test_loop_inside_an_if_is_stacked_when_its_branch_runs_and_empty_otherwise():
    then = helper.make_graph([rnn_loop()], "with_rnn", [], [vi("h_T")])
    other = helper.make_graph(
        [helper.make_node("Neg", ["h0"], ["h_neg"])], "skip", [], [vi("h_neg")]
    )
    node = helper.make_node("If", ["flag"], ["h_out"], then_branch=then, else_branch=other)
    model = make_model(
        [node], [*RNN_INPUTS, vi("flag", B, [])], [vi("h_out", F, ["N", 4])], RNN_INITS
    )
    xs, h0 = ints(4, 6, 3), ints(6, 4)
    tensor = NestedTensor(("If_0", "then_branch", "rnn", "body"), "s")
    ref = rnn_reference(xs, h0, 4)["s"]
    for flag in (True, False):
        feeds = {"xs": xs, "h0": h0, "M": np.array(4), "flag": np.array(flag)}
        exposed, out = check_rewrite(model, [tensor], feeds)
        e = exposed[tensor]
        assert (e.stacked, e.conditional, e.shape) == (1, True, (None, None, 4))
        assert not e.branch_in_loop  # the If is above the Loop
        value = out[e.output]
        if flag:
            np.testing.assert_array_equal(value, ref.astype(np.float32), strict=True)
            assert_counts(value, 2, ref)
        else:
            assert value.shape == (0, 0, 4)
            assert StateCounter().update(value, 2).neurons == 4


def if_in_loop_model():
    """A Loop whose body holds If(flag_t): MatMul(x_t, Wx) -> Relu, or Neg(x_t Wx)."""
    mm = helper.make_node("MatMul", ["x_t", "Wx"], ["p"], name="proj")
    then = helper.make_graph(
        [helper.make_node("Relu", ["p"], ["q"], name="act")], "on", [], [vi("q")]
    )
    other = helper.make_graph([helper.make_node("Neg", ["p"], ["q_neg"])], "off", [], [vi("q_neg")])
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["xs", "i"], ["x_t"], axis=0),
            helper.make_node("Gather", ["flags", "i"], ["flag_t"], axis=0),
            mm,
            helper.make_node("If", ["flag_t"], ["y_t"], name="gate", then_branch=then,
                             else_branch=other),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("cond_in", B, [])],
        [vi("cond_out", B, []), vi("y_t", F, ["N", 4])],
    )  # fmt: skip
    loop = helper.make_node("Loop", ["M", ""], ["ys"], name="loop", body=body)
    return make_model(
        [loop],
        [vi("xs", F, ["T", "N", 3]), vi("flags", B, ["T"]), vi("M", I64, [])],
        [vi("ys", F, [None, "N", 4])],
        [("Wx", WX)],
    )


def test_an_if_inside_a_loop_stacks_when_every_iteration_takes_the_same_branch():
    model = if_in_loop_model()
    xs = ints(3, 2, 3)
    q = NestedTensor(("loop", "body", "gate", "then_branch"), "q")
    ref = np.maximum(xs.astype(np.float64) @ WX.astype(np.float64), 0)
    for flags, shape in (([True] * 3, (3, 2, 4)), ([False] * 3, (3, 0, 4))):
        feeds = {"xs": xs, "flags": np.array(flags), "M": np.array(3)}
        exposed, out = check_rewrite(model, [q], feeds)
        e = exposed[q]
        assert (e.stacked, e.conditional, e.shape) == (1, True, (None, None, 4))
        assert e.branch_in_loop
        assert out[e.output].shape == shape
        if flags[0]:
            np.testing.assert_array_equal(out[e.output], ref.astype(np.float32), strict=True)
    # the documented limit: a branch that changes between iterations cannot be stacked
    new, _ = expose(model, [q])
    feeds = {"xs": xs, "flags": np.array([True, False, True]), "M": np.array(3)}
    with pytest.raises(Exception, match=r"Inconsistent shape in loop output"):
        run(new, feeds)


# -- names and bad requests -------------------------------------------------------------------
def test_new_names_never_collide_with_the_models_own():
    model = make_model(
        [rnn_loop(), helper.make_node("Identity", ["h_T"], ["s.rnn"])],
        RNN_INPUTS,
        [vi("s.rnn", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])],
        RNN_INITS,
    )  # a tensor already called like the new output
    s = NestedTensor(("rnn", "body"), "s")
    exposed, out = check_rewrite(
        model, [s], {"xs": ints(2, 1, 3), "h0": ints(1, 4), "M": np.array(2)}
    )
    assert exposed[s].output == "s.rnn_1" and list(out) == ["s.rnn", "neg_s", "s.rnn_1"]


def test_same_names_in_sibling_branches_are_told_apart_by_path():
    model = nested_if_model()
    tensors = [NestedTensor((*INNER, b), "c") for b in ("then_branch", "else_branch")]
    before = model.SerializeToString()
    _, exposed = expose(model, tensors)
    assert len({e.output for e in exposed.values()}) == 2
    assert model.SerializeToString() == before  # the model given is not changed


def test_every_bad_request_is_reported_at_once_with_suggestions():
    model = nested_if_model()
    with pytest.raises(LayerNotFoundError) as err:
        expose(
            model,
            [
                NestedTensor(("if9", "then_branch"), "c"),
                NestedTensor(("if0", "else_branch"), "cc"),
            ],
        )
    text = str(err.value)
    assert "the main graph has no node 'if9'. Did you mean: if0?" in text
    assert "no tensor 'cc' in if0/else_branch. Did you mean: c?" in text
    with pytest.raises(ModelError, match="has no subgraph 'body'; it has else_branch, then_branch"):
        expose(model, [NestedTensor(("if0", "body"), "c")])
    with pytest.raises(ModelError, match="a path is \\(owner node, subgraph attribute\\) pairs"):
        expose(model, [NestedTensor((), "y")])
    with pytest.raises(ModelError, match="'e0_conv' is a Conv, not an If, Loop or Scan"):
        expose(model, [NestedTensor(("if0", "else_branch", "e0_conv", "body"), "c")])


def rnn_model():
    outputs = [vi("h_T", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])]
    return make_model([rnn_loop()], RNN_INPUTS, outputs, RNN_INITS)


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
def test_every_owner_at_every_opset_and_ir_version_it_can_be_exposed_at(opset):
    cases = [
        (rnn_model(), NestedTensor(("rnn", "body"), "s"), {"M": np.array(2)}),
        (scan_model(), NestedTensor(("scan", "body"), "m"), {"s0": ints(2, 4)}),
        (nested_if_model(), NestedTensor(("if0", "else_branch"), "c"), {}),
    ]
    for model, tensor, feeds in cases:
        model.opset_import[0].version = opset
        model.ir_version = {9: 4, 11: 6, 13: 7, 21: 10}[opset]  # that opset's IR version
        onnx.checker.check_model(model, full_check=True)
        feeds = {"xs": ints(2, 2, 3), "h0": ints(2, 4), "x": ints(2, 3, 8, 8), **feeds}
        feeds.update({f"c{k}": np.array(False) for k in range(4)})
        feeds = {i.name: feeds[i.name] for i in model.graph.input}
        if model.graph.node[0].op_type == "If" and opset < 11:
            with pytest.raises(ModelError, match="If 'if0' is an If of opset 9, whose branches"):
                expose(model, [tensor])
            continue
        exposed, out = check_rewrite(model, [tensor], feeds)
        assert out[exposed[tensor].output].shape[0] == 2


def test_opset_8_scan_is_refused():
    model = scan_model()
    model.opset_import[0].version = 8
    with pytest.raises(ModelError, match="Scan 'scan' is opset-8 Scan"):
        expose(model, [NestedTensor(("scan", "body"), "m")])


def test_an_owner_that_leaves_trailing_outputs_out_still_gets_its_new_output_lined_up():
    """onnx requires every output of a Loop; a model that leaves its scan output out (which
    onnxruntime refuses) still gets the new output in the place its body gives it."""
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h_T"], name="rnn", body=rnn_body())
    inits = [numpy_helper.from_array(a, n) for n, a in RNN_INITS]
    graph = helper.make_graph([loop], "g", RNN_INPUTS, [vi("h_T", F, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = NestedTensor(("rnn", "body"), "s")
    new, exposed = expose(model, [s])
    onnx.checker.check_model(new, full_check=True)
    xs, h0 = ints(3, 2, 3), ints(2, 4)
    out = run(new, {"xs": xs, "h0": h0, "M": np.array(3)})
    ref = rnn_reference(xs, h0, 3)
    np.testing.assert_array_equal(out[exposed[s].output], ref["s"].astype(np.float32))
    np.testing.assert_array_equal(out["h_T"], ref["h_new"][-1].astype(np.float32))


def test_tensors_without_a_type_or_with_no_empty_form_are_refused():
    with pytest.raises(ModelError, match="a scalar inside an If branch cannot be exposed"):
        expose(nested_if_model(), [NestedTensor(("if0", "else_branch"), "c0")])
    body = rnn_body()
    body.node.append(helper.make_node("Mystery", ["s"], ["z"], domain="custom.ops"))
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h_T", "neg_s"], name="rnn", body=body)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)]
    outputs = [vi("h_T", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])]
    model = make_model([loop], RNN_INPUTS, outputs, RNN_INITS, opset=opsets)
    with pytest.raises(ModelError, match="'z' is not a tensor of a known numeric elem type"):
        expose(model, [NestedTensor(("rnn", "body"), "z")])
    exposed = expose(model, [NestedTensor(("rnn", "body"), "s")])[1]  # the rest still works
    assert exposed[NestedTensor(("rnn", "body"), "s")].stacked == 1


@pytest.mark.parametrize(
    "elem", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.UINT8, B]
)
def test_the_empty_tensor_has_the_elem_type_of_the_tensor(elem):
    then = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["t"]), helper.make_node("Cast", ["t"], ["v"], to=elem)],
        "then", [], [vi("t", F, None)],
    )  # fmt: skip
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "else", [], [vi("n")])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)
    model = make_model([node], [vi("x", F, ["N", 3]), vi("flag", B, [])], [vi("y", F, ["N", 3])])
    v = NestedTensor(("If_0", "then_branch"), "v")
    x = ints(4, 3)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    for flag in (True, False):
        exposed, out = check_rewrite(model, [v], {"x": x, "flag": np.array(flag)})
        value = out[exposed[v].output]
        assert value.dtype == dtype and exposed[v].elem_type == elem
        expected = np.abs(x).astype(dtype) if flag else np.zeros((0, 3), dtype)
        np.testing.assert_array_equal(value, expected, strict=True)


# -- a subgraph as a model of its own: the main-graph tools list its layers and axes ---------
def test_subgraph_models_let_the_main_graph_tools_select_layers_and_axes_inside():
    model = nested_if_model()
    path = (*INNER, "then_branch")
    sub = subgraph_model(model, path)
    assert {t.name for t in sub.graph.initializer} == {"W_in"}  # an outer constant
    assert [i.name for i in sub.graph.input] == ["x"]  # an outer value
    caps = select_captures(sub, ["Conv", "Relu"])
    assert [(c.tensor, c.axis) for c in caps] == [("c", 1), ("t3_r", 1)]
    x = ints(3, 3, 8, 8)
    exposed, out = check_rewrite(
        model,
        [NestedTensor(path, c.tensor) for c in caps],
        {"x": x, **{f"c{k}": np.array(True) for k in range(4)}},
    )
    conv = numpy_conv(x, W_IN)
    for cap, ref in zip(caps, (conv, np.maximum(conv, 0)), strict=True):
        e = exposed[NestedTensor(path, cap.tensor)]
        assert_counts(out[e.output], cap.axis + e.stacked, ref)

    body = ("rnn", "body")
    sub = subgraph_model(rnn_model(), body)
    assert {t.name for t in sub.graph.initializer} == {"Wx", "Wh"}
    assert [i.name for i in sub.graph.input] == ["i", "cond_in", "h", "xs"]
    caps = select_captures(sub, ["MatMul"])
    assert [(c.tensor, c.axis) for c in caps] == [("a", 1), ("b", 1)]
    xs, h0 = ints(4, 2, 3), ints(2, 4)
    exposed, out = check_rewrite(
        rnn_model(), [NestedTensor(body, "a")], {"xs": xs, "h0": h0, "M": np.array(4)}
    )
    e = exposed[NestedTensor(body, "a")]
    assert_counts(out[e.output], caps[0].axis + e.stacked, rnn_reference(xs, h0, 4)["a"])
    with pytest.raises(LayerNotFoundError, match="the main graph has no node 'rn'"):
        subgraph_model(rnn_model(), ("rn", "body"))


def test_a_loop_inside_a_loop_stacks_two_iteration_axes():
    inner = helper.make_node(
        "Loop", ["M", "", "h0"], ["h_in", "neg_in"], name="rnn", body=rnn_body()
    )
    outer_body = helper.make_graph(
        [inner, helper.make_node("Identity", ["c_j"], ["c_j_out"])],
        "outer_body",
        [vi("j", I64, []), vi("c_j", B, [])],
        [vi("c_j_out", B, []), vi("h_in", F, ["N", 4])],
    )
    outer = helper.make_node("Loop", ["K", ""], ["hs"], name="outer", body=outer_body)
    model = make_model(
        [outer], [*RNN_INPUTS, vi("K", I64, [])], [vi("hs", F, [None, "N", 4])], RNN_INITS
    )
    xs, h0 = ints(3, 2, 3), ints(2, 4)
    s = NestedTensor(("outer", "body", "rnn", "body"), "s")
    feeds = {"xs": xs, "h0": h0, "M": np.array(3), "K": np.array(2)}
    exposed, out = check_rewrite(model, [s], feeds)
    e = exposed[s]
    assert (e.stacked, e.conditional, e.branch_in_loop, e.shape) == (
        2,
        False,
        False,
        (None,) * 3 + (4,),
    )
    ref = np.stack([rnn_reference(xs, h0, 3)["s"]] * 2)  # (outer, inner, N, 4)
    np.testing.assert_array_equal(out[e.output], ref.astype(np.float32), strict=True)
    assert_counts(out[e.output], 1 + e.stacked, ref)


# -- end to end: selection, analysis and inspect see the layers inside --------------------------
def test_analyze_counts_convs_four_ifs_deep_by_default_selection():
    """silero-like: every Conv sits inside nested Ifs. The default selection finds them all,
    each counts exactly the batches whose branch ran, and the outputs keep parity 0."""
    from onnx_state import analyze

    model = nested_if_model()
    x = ints(10, 3, 8, 8)
    flags = {f"c{k}": np.array(True) for k in range(4)}
    result = analyze(model, {"x": x}, constants=flags, batch_size=5)
    by_name = {r.name: r for r in result.layers}
    inner = "_".join(INNER)
    ran = by_name[f"{inner}_then_branch_t3_conv_post_states"]
    assert ran.tensor == "c" and ran.axis == 1
    assert_counts_result(ran, numpy_conv(x, W_IN))
    idle = by_name[f"{inner}_else_branch_e3_conv_post_states"]
    assert (idle.neurons, idle.state_count) == (4, 0)
    assert len(by_name) == 5  # the five Convs of the nest
    assert result.parity_max_abs_diff == 0.0


def assert_counts_result(layer, reference):
    from tests.reference import assert_states, reference_counts

    assert_states(layer, *reference_counts(reference, 1))


def test_analyze_counts_a_loop_body_per_time_step():
    from onnx_state import analyze

    model = make_model(
        [rnn_loop()],
        RNN_INPUTS,
        [vi("h_T", F, ["N", 4]), vi("neg_s", F, [None, "N", 4])],
        RNN_INITS,
    )
    xs, h0 = ints(4, 6, 3), ints(6, 4)
    batch = {"xs": xs, "h0": h0, "M": np.array(4)}
    result = analyze(model, [batch], attach_to=["MatMul"], parity=False)
    ref = rnn_reference(xs, h0, 4)
    (a,) = [r for r in result.layers if r.tensor == "a"]
    assert a.axis == 2 and a.neurons == 4
    from tests.reference import assert_states, reference_counts

    assert_states(a, *reference_counts(ref["a"], 2))  # one state per step and sample


def test_inspect_lists_nested_layers_with_their_path():
    from onnx_state.capture.describe import describe

    info = describe(nested_if_model())
    nested = [la for la in info["layers"] if la["inside"]]
    assert {la["inside"] for la in nested} >= {"/".join((*INNER, "then_branch"))}
    conv = next(la for la in nested if la["name"].endswith("t3_conv"))
    assert conv["outputs"][0]["neuron_axis"] == 1


def test_a_body_input_hides_an_outer_constant_of_its_name():
    # The main graph's initializer lo = 0 is not what the Loop body's carried input lo holds:
    # the Clip(c, lo, 6) inside the If is not Relu-like, and must not be read for the Conv.
    clip = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
         helper.make_node("Clip", ["c", "lo", "hi"], ["out"], name="clip")],
        "then", [], [vi("out", F, ["N", 4, 3, 3])],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Neg", ["c_else"], ["out_else"])], "else", [], [vi("out_else")]
    )
    body = helper.make_graph(
        [helper.make_node("If", ["flag"], ["o"], name="gate", then_branch=clip,
                          else_branch=other),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["lo"], ["lo_out"])],
        "body", [vi("i", I64, []), vi("cond_in", B, []), vi("lo", F, [])],
        [vi("cond_out", B, []), vi("lo_out", F, []), vi("o", F, ["N", 4, 3, 3])],
    )  # fmt: skip
    model = make_model(
        [helper.make_node("Neg", ["x"], ["c_else"]),
         helper.make_node("Loop", ["M", "", "lo_in"], ["lo_end", "ys"], name="loop", body=body)],
        [vi("x", F, ["N", 4, 3, 3]), vi("flag", B, []), vi("lo_in", F, [])],
        [vi("ys", F, [None, "N", 4, 3, 3]), vi("lo_end", F, [])],
        [("W", ints(4, 4, 1, 1).astype(np.float32)), ("lo", np.array(0, np.float32)),
         ("hi", np.array(6, np.float32)), ("M", np.array(1, np.int64))],
    )  # fmt: skip
    sub = subgraph_model(model, ("loop", "body", "gate", "then_branch"))
    assert {t.name for t in sub.graph.initializer} == {"W", "hi"}
    assert "lo" in [i.name for i in sub.graph.input]
    (cap,) = select_captures(sub, ["Conv"])
    assert cap.read == "c"  # the Conv's own output: the Clip's could differ (lo = 0.25)


def expected_class_counts(layer, states, labels, axis):
    """[state row, class, count] of numpy *states* (samples first, neurons on *axis*) per
    class of *labels*: what a result's class_counts holds."""
    ids = [row.tobytes() for row in layer.state_ids()]
    rows = []
    for c in np.unique(labels):
        cids, counts = reference_counts(states[labels == c], axis)
        rows += [[ids.index(i.tobytes()), int(c), int(n)] for i, n in zip(cids, counts)]
    return sorted(rows)


def test_labels_count_each_class_of_the_branch_that_ran_and_none_of_the_other():
    # The branch that did not run gives an empty tensor: it once failed the class split with
    # "axis 0 ... does not hold the batch's 5 samples; give output_batch_axis".
    from onnx_state import analyze

    model = nested_if_model()
    model.graph.node.append(helper.make_node("ReduceMean", ["y"], ["scores"], axes=[2, 3],
                                             keepdims=0))  # fmt: skip
    model.graph.output.insert(0, vi("scores", F, ["N", 4]))
    x, labels = ints(10, 3, 8, 8), np.arange(10) % 3
    flags = {f"c{k}": np.array(True) for k in range(4)}
    result = analyze(model, {"x": x}, labels=labels, constants=flags, batch_size=5, parity=False)
    by_name = {r.name: r for r in result.layers}
    inner = "_".join(INNER)
    ran = by_name[f"{inner}_then_branch_t3_conv_post_states"]
    conv = numpy_conv(x, W_IN)
    assert ran.class_counts.tolist() == expected_class_counts(ran, conv, labels, 1)
    idle = by_name[f"{inner}_else_branch_e3_conv_post_states"]
    assert idle.state_count == 0 and len(idle.class_counts) == 0


def test_labels_split_a_loop_body_by_sample_not_by_iteration():
    # Stacked (iterations, N, ...): with as many iterations as samples a batch, axis 0 (the
    # iterations) once passed for the samples, with a warning.
    import warnings

    from onnx_state import analyze

    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "Wh"], ["b"], name="rec_proj"),
         helper.make_node("Relu", ["b"], ["h_new"], name="act"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [vi("i", I64, []), vi("cond_in", B, []), vi("h", F, ["N", 4])],
        [vi("cond_out", B, []), vi("h_new", F, ["N", 4]), vi("b", F, ["N", 4])],
    )  # fmt: skip
    model = make_model(
        [helper.make_node("Loop", ["M", "", "h0"], ["h_T", "bs"], name="rnn", body=body)],
        [vi("h0", F, ["N", 4])],
        [vi("h_T", F, ["N", 4]), vi("bs", F, [None, "N", 4])],
        [("Wh", WH), ("M", np.array(3, np.int64))],
    )
    h0, labels = ints(6, 4), np.array([0, 1, 1, 0, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = analyze(model, h0, labels=labels, attach_to=["MatMul"], batch_size=3,
                         parity=False)  # fmt: skip
    (layer,) = result.layers
    h, steps = h0.astype(np.float64), []
    for _ in range(3):
        steps.append(h @ WH)
        h = np.maximum(steps[-1], 0)
    per_sample = np.stack(steps, axis=1)  # (N, iterations, 4): samples first
    assert layer.class_counts.tolist() == expected_class_counts(layer, per_sample, labels, 2)


def test_audit_and_separation_of_a_layer_whose_branch_did_not_run():
    # exact novelty: no states, so no novelty for those samples (NaN); Hamming novelty and
    # separation need every sample's activations: one line naming the layer to exclude
    from onnx_state import analyze
    from onnx_state.audit import audit
    from onnx_state.errors import InputError
    from onnx_state.separation import separation

    model = nested_if_model()
    x = ints(10, 3, 8, 8)
    flags = {f"c{k}": np.array(True) for k in range(4)}
    inner = "_".join(INNER)
    ran, idle = f"{inner}_then_branch_t3_conv", f"{inner}_else_branch_e3_conv"
    layers = ["/".join((*INNER, "then_branch", "t3_conv")), "/".join((*INNER, "else_branch",
                                                                         "e3_conv"))]  # fmt: skip
    kw = {"constants": flags, "batch_size": 5, "attach_to": layers}
    reference = analyze(model, {"x": x}, parity=False, **kw)
    result = audit(model, {"x": x}, reference=reference, novelty="exact", **kw)
    assert np.isnan(result.sample_novelty[f"{idle}_post_states"]).all()
    assert (result.sample_novelty[f"{ran}_post_states"] == 0).all()  # the reference's data
    with pytest.raises(InputError, match=rf"{idle}_post_states observed no states .* exclude "
                       rf"layer '{layers[1]}'"):  # fmt: skip
        audit(model, {"x": x}, reference=reference, **kw)  # (the reference's layer did not run)
    # a reference in which both branches ran (flags fed with each batch)
    halves = [{"x": x[:5], **flags}, {"x": x[5:], **flags, "c3": np.array(False)}]
    both = analyze(model, halves, parity=False, attach_to=layers)
    with pytest.raises(InputError, match=rf"{idle}_post_states did not run on samples 0..5 .*"
                       rf"exclude layer '{layers[1]}'"):  # fmt: skip
        audit(model, {"x": x}, reference=both, **kw)
    with pytest.raises(InputError, match=rf"did not run .* exclude layer '{layers[1]}'"):
        separation(model, {"x": x}, labels=np.arange(10) % 2, samples_per_class=5, **kw)


def test_a_branch_that_never_ran_and_has_no_fixed_width_saves_and_loads(tmp_path):
    # 0 neurons (its weight is an input of K filters): the store refused to load it, and
    # network efficiency failed on it; it now covers the layers that ran
    from onnx_state import Analysis, analyze

    then = helper.make_graph([helper.make_node("Conv", ["x", "W_in"], ["t"], name="fixed")],
                             "then", [], [vi("t", F, ["N", 4, 6, 6])])  # fmt: skip
    other = helper.make_graph([helper.make_node("Conv", ["x", "W_any"], ["e"], name="open")],
                              "else", [], [vi("e", F, [None] * 4)])  # fmt: skip
    model = make_model(
        [if_node("c", "y", then, other, name="if0")],
        [vi("x", F, ["N", 3, 8, 8]), vi("c", B, []), vi("W_any", F, ["K", 3, 3, 3])],
        [vi("y", F, [None] * 4)],
        [("W_in", W_IN)],
    )
    x = ints(6, 3, 8, 8)
    fixed = {"c": np.array(True), "W_any": W_OUT}
    result = analyze(model, {"x": x}, constants=fixed, batch_size=3, parity=False)
    by_name = {r.name: r for r in result.layers}
    idle = by_name["if0_else_branch_open_post_states"]
    assert (idle.neurons, idle.state_count) == (0, 0)
    ran = by_name["if0_then_branch_fixed_post_states"]
    assert result.network_efficiency() == ran.efficiency()
    result.save(tmp_path / "r.zarr")
    back = Analysis.load(tmp_path / "r.zarr")
    assert [(r.neurons, r.state_count) for r in back.layers] == [
        (r.neurons, r.state_count) for r in result.layers
    ]
    assert back.to_dict()["network_efficiency"] == ran.efficiency()
    import onnx_state

    assert onnx_state.network_efficiency(result) == ran.efficiency()  # the TensorState form
    # audit: with no reference, an exact-novelty reference, and windows (the last of which
    # the layer never ran in); its width comes from the batches where it ran
    from onnx_state.audit import audit

    kw = {"batch_size": 3, "attach_to": ["if0/then_branch/fixed", "if0/else_branch/open"]}
    plain = audit(model, {"x": x}, constants=fixed, **kw)
    assert [la.state_count for la in plain.layers] == [r.state_count for r in result.layers]
    halves = [{"x": x[:3], **fixed}, {"x": x[3:], **fixed, "c": np.array(False)}]
    both = analyze(model, halves, parity=False, **kw)
    later = [{"x": x[:3], **fixed, "c": np.array(False)}, {"x": x[3:], **fixed}]
    got = audit(model, later, reference=both, novelty="exact", window=3, **kw)
    assert {la.name: la.neurons for la in got.layers} == {r.name: 4 for r in result.layers}
    assert [sorted(w.novelty) for w in got.windows] == [
        ["if0_else_branch_open_post_states"],
        ["if0_then_branch_fixed_post_states"],
    ]
    assert not np.isnan(got.sample_scores).any()  # the mean over the layers that ran


def test_a_loop_body_tensor_may_have_its_neurons_on_the_bodys_axis_0():
    # (stacked per iteration, the body's axis 0 is the exposed tensor's axis 1: not refused)
    from onnx_state import analyze

    w = RNG.normal(size=(6, 4, 3)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["xi"], axis=0),  # one sample: (4, 5)
         helper.make_node("Unsqueeze", ["xi", "ax0"], ["xu"]),
         helper.make_node("Conv", ["xu", "W"], ["c"], name="conv"),  # (1, 6, 3)
         helper.make_node("Squeeze", ["c", "ax0"], ["s"], name="sq"),  # (6, 3)
         helper.make_node("Relu", ["s"], ["r"], name="act"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [vi("i", I64, []), vi("cond_in", B, [])],
        [vi("cond_out", B, []), vi("r", F, [6, 3])],
    )  # fmt: skip
    model = make_model(
        [helper.make_node("Shape", ["x"], ["shp"]),
         helper.make_node("Gather", ["shp", "zero"], ["M"], axis=0),
         helper.make_node("Loop", ["M", ""], ["rs"], name="loop", body=body)],
        [vi("x", F, ["N", 4, 5])], [vi("rs", F, ["N", 6, 3])],
        [("W", w), ("ax0", np.array([0], np.int64)), ("zero", np.array(0, np.int64))],
    )  # fmt: skip
    x = RNG.normal(size=(8, 4, 5)).astype(np.float32)
    (layer,) = analyze(model, {"x": x}, attach_to=["loop/body/act"], parity=False,
                       neuron_axes={"loop/body/act": 0}).layers  # fmt: skip
    ref = run(model, {"x": x})["rs"]  # the model's own output: the stacked Relu, (N, 6, 3)
    assert layer.axis == 1
    assert_states(layer, *reference_counts(ref, 1))
