"""Exact Euclidean MSTs and their cross edges against Kruskal, networkx and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_state.errors import InputError
from onnx_state.mst import cross_edges, mst_edges
from tests.reference import kruskal_cross_edges


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 25), st.integers(1, 25), st.integers(1, 5), st.integers(0, 2**31))
def test_cross_edges_equal_kruskal_with_duplicates_and_ties(na, nb, dim, seed):
    # Small integers: many exact ties and duplicate points, all distances exact in float64.
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, (na, dim)).astype(np.float32)
    b = rng.integers(0, 3, (nb, dim)).astype(np.float32)
    side = np.r_[np.zeros(na, bool), np.ones(nb, bool)]
    s_ref, _ = kruskal_cross_edges(np.concatenate([a, b]), side)
    assert cross_edges(a, b) == s_ref
    assert cross_edges(a, b, max_matrix_bytes=0) == s_ref  # the row-by-row path


def test_mst_is_a_spanning_tree_of_minimum_weight_like_networkx():
    import networkx as nx

    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 7))
    x[5] = x[9]  # a duplicate: distance 0 must stay an edge
    edges = mst_edges(x)
    g = nx.Graph()
    for i in range(60):
        for j in range(i + 1, 60):
            g.add_edge(i, j, weight=float(np.linalg.norm(x[i] - x[j])))
    t = nx.minimum_spanning_tree(g)
    ours = sum(np.linalg.norm(x[i] - x[j]) for i, j in edges)
    assert len(edges) == 59 and nx.is_tree(nx.Graph([tuple(e) for e in edges]))
    assert ours == pytest.approx(t.size(weight="weight"), rel=1e-12)
    # with continuous data the MST is unique: same edges as networkx
    assert {frozenset(e) for e in edges.tolist()} == {frozenset(e) for e in t.edges()}


def test_scipy_agrees_on_s_without_duplicates():
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((80, 30)), rng.standard_normal((70, 30)) + 0.3
    x = np.concatenate([a, b])
    t = minimum_spanning_tree(cdist(x, x)).tocoo()
    side = np.r_[np.zeros(80, bool), np.ones(70, bool)]
    assert cross_edges(a, b) == int(np.sum(side[t.row] != side[t.col]))


def test_non_finite_points_are_refused():
    a = np.zeros((3, 2))
    a[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        cross_edges(a, np.ones((3, 2)))
