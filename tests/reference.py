"""Plain-numpy references the tests compare onnx_state against (independent of its code)."""

from __future__ import annotations

import numpy as np


def reference_states(x: np.ndarray, axis: int, zero_point=None) -> np.ndarray:
    """Packed states of x in order: one row per non-neuron index, packbits little-endian.

    A neuron fires iff its value is > 0, or > *zero_point* (an int, or one per neuron
    along *axis*), compared by numpy in the array's own integer type.
    """
    x = np.asarray(x)
    if zero_point is None:
        fires = x > 0  # NaN > 0 is False
    else:
        z = np.asarray(zero_point)
        if z.ndim:
            z = z.reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
        fires = x > z
    bits = np.moveaxis(fires, axis, -1).reshape(-1, x.shape[axis])
    return np.packbits(bits, axis=1, bitorder="little")


def reference_counts(x: np.ndarray, axis: int, zero_point=None) -> tuple[np.ndarray, np.ndarray]:
    """(unique packed states, counts), ascending by the integer sum(bit_c * 2**c)."""
    packed = reference_states(x, axis, zero_point)
    return unique_rows(packed)


def unique_rows(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = np.unique(packed, axis=0, return_counts=True)
    # np.unique sorts rows lexicographically from byte 0; the integer order needs the
    # most significant byte (the last) first.
    order = np.lexsort(ids.T) if len(ids) else np.arange(0)
    return ids[order], counts[order]


def reference_renyi(counts: np.ndarray, alpha: float) -> float:
    """Rényi entropy in bits by the textbook formula, written out separately."""
    p = np.asarray(counts, dtype=float)
    p = p[p > 0] / p.sum()
    if alpha == 1:
        return float(sum(-q * np.log(q) for q in p) / np.log(2))
    if alpha == 0:
        return float(np.log(len(p)) / np.log(2))
    if np.isinf(alpha):
        return float(-np.log(max(p)) / np.log(2))
    return float(np.log(sum(q**alpha for q in p)) / np.log(2) / (1 - alpha))


def kruskal_cross_edges(x: np.ndarray, side: np.ndarray) -> tuple[int, float]:
    """(S, total squared weight) of the MST under the order (d², min end, max end).

    Plain Kruskal with union-find over all pairs, distances from the difference vectors.
    """
    n = len(x)
    edges = sorted(
        (float(np.sum((x[i].astype(float) - x[j]) ** 2)), i, j)
        for i in range(n)
        for j in range(i + 1, n)
    )
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    s, total, used = 0, 0.0, 0
    for w, i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            s += bool(side[i] != side[j])
            total += w
            used += 1
            if used == n - 1:
                break
    return s, total


def assert_states(counter, ids: np.ndarray, counts: np.ndarray) -> None:
    """*counter* (a StateCounter or a result) holds exactly these states and counts."""
    np.testing.assert_array_equal(counter.state_ids(), ids)
    np.testing.assert_array_equal(counter.counts(), counts)
    assert counter.state_count == int(np.sum(counts))
