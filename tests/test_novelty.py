"""novelty: per-class distances, leave-one-out calibration and the layer vote, by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_state import metrics
from onnx_state.novelty import ReferenceLayer, combine, weighted_quantile
from onnx_state.results import LayerResult, States


def layer(ids, counts, neurons, table=None, name="l"):
    return LayerResult(name, name, name, "T", "Op", "post", neurons, 1, int(np.sum(counts)), 0,
                       States(np.asarray(ids, np.uint8), np.asarray(counts)),
                       class_counts=table)  # fmt: skip


def hamming(a, b):
    return int(np.sum(np.unpackbits(np.bitwise_xor(a, b))))


def test_weighted_quantile_is_the_lower_quantile():
    assert weighted_quantile(np.array([3.0, 1, 2]), np.array([1.0, 1, 1]), 0.5) == 2
    assert weighted_quantile(np.array([0.0, 5]), np.array([19.0, 1]), 0.95) == 0
    assert weighted_quantile(np.array([0.0, 5]), np.array([18.0, 2]), 0.95) == 5


def test_leave_one_out_and_per_class_distances_match_brute_force():
    rng = np.random.default_rng(2)
    ids = np.unique(rng.integers(0, 256, (60, 2), dtype=np.uint8), axis=0)
    ids[:, 1] &= 0x0F  # 12 neurons
    ids = np.unique(ids, axis=0)
    counts = rng.integers(1, 4, len(ids))
    classes = rng.integers(0, 3, len(ids))
    table = np.column_stack([np.arange(len(ids)), classes, counts])
    ref = ReferenceLayer(layer(ids, counts, 12, table), quantile=0.9)
    # held-out distances: 0 for a state seen twice in its class, else nearest other one
    expected, weights = [], []
    for c in range(3):
        rows = np.flatnonzero(classes == c)
        for r in rows:
            if counts[r] >= 2:
                d = 0
            else:
                d = min([hamming(ids[r], ids[o]) for o in rows if o != r], default=12)
            expected.append(d)
            weights.append(counts[r])
    assert np.array_equal(ref.held_out, np.sort(np.array(expected, float)))
    assert ref.threshold == weighted_quantile(np.array(expected, float), np.array(weights), 0.9)
    query = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    query[:, 1] &= 0x0F
    query[:5] = ids[:5]
    pred = rng.integers(0, 4, 40)  # class 3 is not in the reference: every state counts
    got = ref.distances(query, pred)
    for i, q in enumerate(query):
        rows = np.flatnonzero(classes == pred[i]) if pred[i] < 3 else np.arange(len(ids))
        assert got[i] == min(hamming(q, ids[r]) for r in rows)
    anyclass = ReferenceLayer(layer(ids, counts, 12, table), by_class=False)
    assert np.array_equal(
        anyclass.distances(query), [min(hamming(q, r) for r in ids) for q in query]
    )


def test_votes_and_ranks_after_calibration():
    ids = np.array([[0], [3], [15]], dtype=np.uint8)
    a = ReferenceLayer(layer(ids, [1, 1, 1], 4, name="a"), by_class=False, quantile=0.5)
    b = ReferenceLayer(layer(ids, [1, 1, 1], 4, name="b"), by_class=False, quantile=0.5)
    a.calibrate(np.array([0.0, 1, 2, 3]))
    b.calibrate(np.array([0.0, 0, 0, 4]))
    assert a.threshold == 1 and b.threshold == 0
    assert np.allclose(a.rank(np.array([0.0, 1.5, 9])), [0.125, 0.5, 1.0])
    d = {"a": np.array([0.0, 2.0, 5.0]), "b": np.array([0.0, 0.0, 1.0])}
    score, votes = combine(d, [a, b])
    assert votes.tolist() == [0, 1, 2]
    ranks = (a.rank(d["a"]) + b.rank(d["b"])) / 2
    assert np.allclose(score, votes + ranks)
    assert np.all(np.diff(score) > 0)
    with pytest.raises(Exception, match="no samples"):
        a.calibrate(np.array([]))
    assert metrics.auroc(score[:1], score[1:]) == 1.0
