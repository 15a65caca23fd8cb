"""Exact Euclidean minimum spanning trees for the Henze–Penrose statistic, in numpy + BLAS.

Squared distances come from ‖a‖² + ‖b‖² − 2ab in float64 blocks (one BLAS product instead of
N² difference vectors); the MST depends only on the order of the weights, so squared distances
serve. Edges are ordered by (weight, smaller end, larger end), a strict total order, so the
MST is unique even with ties and equals Kruskal's on the same order. Identical points get
distance exactly 0 and stay edges of the tree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx_state.errors import InputError

__all__ = ["cross_edges", "mst_edges", "squared_distances"]

# Rows per BLAS block when filling a distance matrix (bounds the temporary product).
_BLOCK_ROWS = 1024


def _duplicate_groups(x: np.ndarray) -> np.ndarray:
    """An id per row, equal for identical rows."""
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[1] * x.itemsize))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def squared_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances between the rows of x and y (x with itself by default)."""
    # Move the origin to the first point: the expansion loses precision for points far
    # from the origin relative to their spread, distances do not change, and (unlike the
    # mean) a data point keeps integer-valued data integer, so exact ties stay exact.
    origin = np.asarray(x[0], dtype=np.float64)
    x = np.asarray(x, dtype=np.float64) - origin
    y = x if y is None else np.asarray(y, dtype=np.float64) - origin
    nx, ny = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    out = np.empty((len(x), len(y)))
    for start in range(0, len(x), _BLOCK_ROWS):
        block = x[start : start + _BLOCK_ROWS]
        np.matmul(block, y.T, out=out[start : start + len(block)])
        out[start : start + len(block)] *= -2
        out[start : start + len(block)] += nx[start : start + len(block), None]
        out[start : start + len(block)] += ny[None, :]
    np.maximum(out, 0, out=out)  # rounding can make near-duplicates slightly negative
    return out


def _prim(n: int, row_of: Callable[[int], np.ndarray], groups: np.ndarray) -> np.ndarray:
    """Prim's algorithm; row_of(v) gives squared distances from v to all points.

    Returns the parent of each vertex (parent[0] = -1) of the unique MST under the order
    (weight, min end, max end).
    """
    idx = np.arange(n)
    in_tree = np.zeros(n, dtype=bool)
    best = np.full(n, np.inf)
    parent = np.full(n, -1)
    v = 0
    for _ in range(n - 1):
        in_tree[v] = True
        row = np.array(row_of(v), dtype=np.float64)
        row[groups == groups[v]] = 0.0  # identical points: distance exactly 0
        # A new candidate edge (v, w) wins on a smaller weight, or on an equal weight with a
        # smaller (min end, max end) key than the current best edge (parent[w], w).
        lo_new, hi_new = np.minimum(v, idx), np.maximum(v, idx)
        lo_old, hi_old = np.minimum(parent, idx), np.maximum(parent, idx)
        tie = (row == best) & ((lo_new < lo_old) | ((lo_new == lo_old) & (hi_new < hi_old)))
        better = ((row < best) | tie) & ~in_tree
        best[better] = row[better]
        parent[better] = v
        best[v] = np.inf
        masked = np.where(in_tree, np.inf, best)
        m = masked.min()
        cands = np.flatnonzero(masked == m)
        if len(cands) > 1:  # equal weights: the smallest edge key goes first
            lo = np.minimum(parent[cands], cands)
            hi = np.maximum(parent[cands], cands)
            cands = cands[np.lexsort((hi, lo))]
        v = int(cands[0])
    parent[0] = -1
    return parent


def mst_edges(
    x: np.ndarray, max_matrix_bytes: int = 1 << 30, d2: np.ndarray | None = None
) -> np.ndarray:
    """Edges (parent[v], v) of the exact Euclidean MST of the rows of *x*.

    With *d2* (squared distances) given, it is used; otherwise the matrix is built when it
    fits in *max_matrix_bytes*, and rows are computed on demand (one BLAS matrix-vector
    product each, O(N·d) memory) when it does not.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"need at least 2 points as rows of a 2-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("points hold NaN or infinite values; distances are undefined")
    n = len(x)
    groups = _duplicate_groups(x)
    if d2 is None and n * n * 8 <= max_matrix_bytes:
        d2 = squared_distances(x)
    if d2 is not None:
        parent = _prim(n, lambda v: d2[v], groups)
    else:
        xf = np.asarray(x, dtype=np.float64)
        xf = xf - xf[0]  # origin at the first point, as in squared_distances
        norms = np.einsum("ij,ij->i", xf, xf)

        def row_of(v: int) -> np.ndarray:
            return np.asarray(np.maximum(norms + norms[v] - 2 * (xf @ xf[v]), 0))

        parent = _prim(n, row_of, groups)
    v = np.arange(1, n)
    return np.stack([parent[1:], v], axis=1) if n > 1 else np.zeros((0, 2), int)


def cross_edges(
    a: np.ndarray,
    b: np.ndarray,
    max_matrix_bytes: int = 1 << 30,
    d2: np.ndarray | None = None,
) -> int:
    """S: the number of MST edges joining a point of *a* to a point of *b* (rows)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"point sets must be 2-D with equal widths: {a.shape} and {b.shape}")
    x = np.concatenate([a, b])
    side = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    edges = mst_edges(x, max_matrix_bytes, d2)
    return int(np.sum(side[edges[:, 0]] != side[edges[:, 1]]))
