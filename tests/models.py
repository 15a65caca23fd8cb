"""Tiny ONNX graphs built inline, and numpy references of what they compute."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_state.capture.metadata import META_LAYER_NAME, META_LAYER_TYPE, META_NEURON_AXIS

OPSET = [helper.make_opsetid("", 17)]


def make_model(nodes, inputs, outputs, inits=(), opset=OPSET) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "test", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits]
    )
    model = helper.make_model(g, opset_imports=opset)
    onnx.checker.check_model(model)
    return model


def tag(node: onnx.NodeProto, layer: str, layer_type: str, axis: int | None = None):
    """Add exporter-style metadata to a node."""
    items = {META_LAYER_NAME: layer, META_LAYER_TYPE: layer_type}
    if axis is not None:
        items[META_NEURON_AXIS] = str(axis)
    for k, v in items.items():
        p = node.metadata_props.add()
        p.key, p.value = k, v
    return node


def conv_net(seed: int = 0):
    """x(N,3,8,8) -> Conv(4,3x3) -> Relu -> Flatten -> MatMul(144x5) -> y; (model, params)."""
    # Small integers keep every float32 sum exact, so numpy's float64 reference agrees bit
    # for bit, ties at exactly zero included.
    rng = np.random.default_rng(seed)
    w = rng.integers(-2, 3, (4, 3, 3, 3)).astype(np.float32)
    g = rng.integers(-2, 3, (4 * 6 * 6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "G"], ["y"], name="fc"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [("W", w), ("G", g)],
    )
    return model, {"W": w, "G": g}


def numpy_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid 2-D cross-correlation, NCHW, stride 1, in float64."""
    _n, _c, _h, _wd = x.shape
    k = w.shape[2]
    patches = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", patches, w.astype(np.float64))


def conv_net_reference(x: np.ndarray, params) -> dict[str, np.ndarray]:
    c = numpy_conv(x, params["W"])
    r = np.maximum(c, 0)
    f = r.reshape(len(x), -1)
    return {"x": x, "c": c, "r": r, "f": f, "y": f @ params["G"].astype(np.float64)}


def int_data(n: int, shape=(3, 8, 8), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2, 3, (n, *shape)).astype(np.float32)
