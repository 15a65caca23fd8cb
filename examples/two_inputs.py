"""A two-input model with a shared recurrent state, for the README's CLI example.

    python -m examples.two_inputs OUT_DIR

Writes OUT_DIR/tagger.onnx — tokens (N, 8) and mask (N, 8) in, h = Relu(tokens @ W +
mask @ U + state @ V) out, where state (1, 6) is the same for every sample — and
OUT_DIR/batch.npz (arrays "tokens" and "mask", 500 samples) and OUT_DIR/state.npy. Random
weights, seeded; nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(out: Path) -> None:
    rng = np.random.default_rng(0)
    w, u, v = (rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (8, 6), (6, 6)))
    nodes = [
        helper.make_node("MatMul", ["tokens", "W"], ["a"], name="embed_tokens"),
        helper.make_node("MatMul", ["mask", "U"], ["b"], name="embed_mask"),
        helper.make_node("MatMul", ["state", "V"], ["c"], name="recur"),
        helper.make_node("Add", ["a", "b"], ["ab"], name="add_1"),
        helper.make_node("Add", ["ab", "c"], ["s"], name="add_2"),
        helper.make_node("Relu", ["s"], ["h"], name="hidden"),
    ]
    graph = helper.make_graph(
        nodes,
        "tagger",
        [
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 6]),
        ],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(a, n) for n, a in (("W", w), ("U", u), ("V", v))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "tagger.onnx")
    tokens = rng.standard_normal((500, 8)).astype(np.float32)
    mask = (rng.random((500, 8)) > 0.3).astype(np.float32)
    np.savez(out / "batch.npz", tokens=tokens, mask=mask)
    np.save(out / "state.npy", rng.standard_normal((1, 6)).astype(np.float32))


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "two_inputs"))
