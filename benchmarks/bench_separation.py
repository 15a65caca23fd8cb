"""Henze–Penrose MST: onnx_state (BLAS distances + Prim) vs scipy, side by side in one run.

    python benchmarks/bench_separation.py [--points 1000]

Two classes of --points each: LeNet-5 conv_1 outputs (dimension 20·24·24 = 11,520) of the
bundled digits (noised copies), digits 0-4 vs 5-9. The baseline builds the dense distance
matrix with scipy.spatial.distance.cdist and runs scipy.sparse.csgraph.minimum_spanning_tree
on it. Prints both times, their ratio, and both S (they must be equal).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist

from onnx_state.capture import Instrumented, load_array
from onnx_state.data import example_paths
from onnx_state.mst import cross_edges


def conv1_points(n: int) -> tuple[np.ndarray, np.ndarray]:
    model, data, labels = example_paths()
    x, y = np.asarray(load_array(data)), np.asarray(load_array(labels))
    rng = np.random.default_rng(0)
    groups = []
    for classes in ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)):
        idx = rng.choice(np.flatnonzero(np.isin(y, classes)), n, replace=True)
        groups.append(x[idx] + rng.normal(0, 0.05, x[idx].shape).astype(np.float32))
    inst = Instrumented(model, attach_to=["conv_1"])
    tensor = inst.captures[0].tensor
    out = []
    for g in groups:
        feats = [inst.run({"x": g[i : i + 200]}).captured[tensor] for i in range(0, n, 200)]
        out.append(np.concatenate(feats).reshape(n, -1))
    return out[0], out[1]


def scipy_cross_edges(a: np.ndarray, b: np.ndarray) -> int:
    x = np.concatenate([a, b]).astype(np.float64)
    tree = minimum_spanning_tree(cdist(x, x)).tocoo()
    side = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    return int(np.sum(side[tree.row] != side[tree.col]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--points", type=int, default=1000)
    args = p.parse_args()
    a, b = conv1_points(args.points)
    print(f"2 x {args.points} points of dimension {a.shape[1]}")
    t = time.perf_counter()
    s_ours = cross_edges(a, b)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    s_scipy = scipy_cross_edges(a, b)
    t_scipy = time.perf_counter() - t
    print(f"onnx_state: {t_ours:7.2f} s   S = {s_ours}")
    print(f"scipy:      {t_scipy:7.2f} s   S = {s_scipy}")
    print(f"speed-up:   {t_scipy / t_ours:7.1f}x   identical S: {s_ours == s_scipy}")


if __name__ == "__main__":
    main()
