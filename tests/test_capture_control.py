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

from onnx_state.capture.control import (
    NestedTensor,
    expose,
    nested_nodes,
    node_labels,
)
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
