"""Metrics against hand-computed values and the textbook formulas in tests/reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_state import metrics
from onnx_state.errors import InputError
from tests.reference import reference_renyi


@pytest.mark.parametrize("alpha", [0, 0.5, 1, 2, 3, math.inf])
def test_uniform_distribution_has_log2_k_bits_for_every_order(alpha):
    assert metrics.entropy([5, 5, 5, 5, 5, 5, 5, 5], alpha) == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0, 1, 2, math.inf])
def test_single_state_has_zero_entropy(alpha):
    assert metrics.entropy([42], alpha) == 0.0


def test_known_values_by_hand():
    # p = (1/2, 1/4, 1/4): H1 = 1.5 bits; H2 = -log2(1/4+1/16+1/16) = log2(8/3); Hinf = 1
    counts = [2, 1, 1, 0]  # zero counts are ignored
    assert metrics.entropy(counts, 1) == pytest.approx(1.5, abs=1e-12)
    assert metrics.entropy(counts, 2) == pytest.approx(math.log2(8 / 3), abs=1e-12)
    assert metrics.entropy(counts, math.inf) == pytest.approx(1.0, abs=1e-12)
    assert metrics.entropy(counts, 0) == pytest.approx(math.log2(3), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 10_000), min_size=1, max_size=60),
    st.sampled_from([0, 0.3, 1, 1.7, 2, 5, math.inf]),
)
def test_renyi_equals_textbook_formula(counts, alpha):
    assert metrics.entropy(counts, alpha) == pytest.approx(
        reference_renyi(counts, alpha), abs=1e-12
    )


@pytest.mark.parametrize("alpha", [1 + 1e-12, 1 - 1e-12, 50.0, 2000.0])
def test_renyi_is_stable_near_one_and_for_large_orders(alpha):
    counts = [5, 3, 1, 1]
    h = metrics.entropy(counts, alpha)
    if abs(alpha - 1) < 1e-6:
        assert h == pytest.approx(reference_renyi(counts, 1), abs=1e-9)
    else:
        assert math.isfinite(h) and metrics.entropy(counts, math.inf) <= h
        assert h == pytest.approx(reference_renyi(counts, math.inf), abs=0.05)


def test_efficiency_uses_neurons_as_max_entropy():
    assert metrics.efficiency([1, 1, 1, 1], neurons=4) == pytest.approx(0.5, abs=1e-12)
    assert metrics.efficiency([1, 1, 1, 1], neurons=4, alpha2=0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.efficiency([1, 1, 2], neurons=1, alpha1=2, alpha2=1) == pytest.approx(
        reference_renyi([1, 1, 2], 2) / reference_renyi([1, 1, 2], 1), abs=1e-12
    )


def test_network_efficiency_is_the_geometric_mean():
    assert metrics.network_efficiency([0.25, 1.0]) == pytest.approx(0.5, abs=1e-12)
    assert metrics.network_efficiency([0.3, 0.0]) == 0.0


def test_aiq_formula_and_weight_check():
    assert metrics.aIQ(0.5, 0.8, 2) == pytest.approx((0.5 * 0.64) ** (1 / 3), abs=1e-12)
    with pytest.raises(InputError, match="weight"):
        metrics.aIQ(0.5, 0.8, 0.5)
    with pytest.raises(InputError, match="accuracy"):
        metrics.aIQ(0.5, 80, 2)


def test_unseen_layer_and_bad_counts_are_clear_errors():
    with pytest.raises(InputError, match="no states were observed"):
        metrics.efficiency([], neurons=3)
    with pytest.raises(InputError, match="non-negative"):
        metrics.entropy([1, -1])
    with pytest.raises(InputError, match="alpha"):
        metrics.entropy([1, 2], alpha=-1)
    with pytest.raises(InputError):
        metrics.network_efficiency([])


def test_miller_madow_by_hand():
    counts = [3, 1]  # N=4, K=2: plug-in + (K-1)/(2N ln 2)
    expected = reference_renyi(counts, 1) + 1 / (8 * math.log(2))
    assert metrics.miller_madow_entropy(counts) == pytest.approx(expected, abs=1e-12)


def test_chao_shen_by_hand():
    counts = np.array([2, 1, 1])  # N=4, f1=2, coverage C=1/2
    n, pa = 4, 0.5 * counts / 4
    expected = -np.sum(pa * np.log2(pa) / (1 - (1 - pa) ** n))
    assert metrics.chao_shen_entropy(counts) == pytest.approx(expected, abs=1e-12)
    assert np.isfinite(metrics.chao_shen_entropy([1, 1, 1]))  # all singletons


def test_corrections_reduce_undersampling_bias():
    # 2**12 equiprobable states seen 3000 times: the plug-in estimate sits well below 12 bits.
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 4096, 3000), minlength=4096)
    plug, mm, cs = (
        metrics.entropy(counts),
        metrics.miller_madow_entropy(counts),
        metrics.chao_shen_entropy(counts),
    )
    assert plug < mm < 12.5 and abs(cs - 12) < abs(plug - 12)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    counts = [50, 30, 15, 5]
    a = metrics.bootstrap_entropy(counts, n_boot=300, seed=1)
    b = metrics.bootstrap_entropy(counts, n_boot=300, seed=1)
    assert a == b
    assert a.low <= a.estimate <= a.high
    assert a.estimate == pytest.approx(reference_renyi(counts, 1), abs=1e-12)
    with pytest.raises(InputError, match="estimator"):
        metrics.bootstrap_entropy(counts, estimator="nope")


def test_metrics_do_not_depend_on_the_order_of_the_counts():
    # Hash tables export in an order that depends on history and threads.
    from onnx_state import metrics

    rng = np.random.default_rng(3)
    counts = rng.geometric(0.2, 300)
    shuffles = [rng.permutation(counts) for _ in range(20)]
    for f in (metrics.entropy, metrics.miller_madow_entropy, metrics.chao_shen_entropy,
              lambda c: metrics.entropy(c, 2), lambda c: metrics.efficiency(c, 12)):  # fmt: skip
        assert len({f(c) for c in shuffles}) == 1
    intervals = {metrics.bootstrap_entropy(c, n_boot=50, seed=1) for c in shuffles[:3]}
    assert len(intervals) == 1


def test_firing_counts_equal_a_numpy_reference():
    rng = np.random.default_rng(3)
    bits = rng.random((300, 77)) > 0.6
    counts = rng.integers(1, 9, 300)
    ids = np.packbits(bits, axis=1, bitorder="little")
    np.testing.assert_array_equal(
        metrics.firing_counts(ids, counts, 77), (bits * counts[:, None]).sum(axis=0)
    )


# -- detection, class information, redundant neurons -------------------------------------------
def test_auroc_and_fpr95_equal_scikit_learn_on_the_same_scores():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for ties in (False, True):
        a = rng.normal(0, 1, 300)
        b = rng.normal(0.8, 1.3, 200)
        if ties:  # votes-like scores: many ties
            a, b = np.round(a), np.round(b)
        y = np.r_[np.zeros(len(a)), np.ones(len(b))]
        s = np.r_[a, b]
        assert metrics.auroc(a, b) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        # in-distribution positive, lower score = more in-distribution (ODIN's convention)
        fpr, tpr, _ = skm.roc_curve(1 - y, -s, drop_intermediate=False)
        expected = fpr[np.searchsorted(tpr, 0.95 - 1e-12)]
        assert metrics.fpr_at_tpr(a, b, 0.95) == pytest.approx(expected, abs=1e-12)
    assert metrics.auroc([0, 1], [2, 3]) == 1.0 and metrics.auroc([2, 3], [0, 1]) == 0.0
    with pytest.raises(InputError):
        metrics.auroc([], [1])


def test_mutual_information_by_hand():
    # states s0..s2, classes c0, c1: joint counts
    joint = np.array([[4, 0], [2, 2], [0, 4]])
    # H(S) = H(4/12, 4/12, 4/12) = log2 3; H(S|c) = H(4/6, 2/6) for both classes
    h_given = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    plug = math.log2(3) - h_given
    assert metrics.mutual_information(joint) == pytest.approx(plug, abs=1e-12)
    # Miller–Madow on each term: (K - 1) / (2N ln2) with K = 3, N = 12; (2 - 1) / (2·6 ln2) x2
    mm = (math.log2(3) + 2 / (24 * math.log(2))) - 2 * 0.5 * (h_given + 1 / (12 * math.log(2)))
    assert metrics.miller_madow_mutual_information(joint) == pytest.approx(mm, abs=1e-12)
    # a state that names its class carries H(C); one state for all classes carries nothing
    assert metrics.mutual_information(np.eye(4) * 5) == pytest.approx(2.0, abs=1e-12)
    assert metrics.mutual_information([[3, 5, 2]]) == 0.0


def test_redundant_neurons_planted_are_found_exactly():
    rng = np.random.default_rng(4)
    base = rng.random((500, 6)) > 0.5
    bits = np.zeros((500, 12), dtype=bool)
    bits[:, :6] = base
    bits[:, 6] = base[:, 1]  # copy of 1
    bits[:, 7] = ~base[:, 1]  # complement of 1
    bits[:, 8] = ~base[:, 4]  # complement of 4
    bits[:, 9] = True  # always on
    bits[:, 10] = False  # dead
    bits[:, 11] = base[:, 4]  # copy of 4
    ids = np.unique(np.packbits(bits, axis=1, bitorder="little"), axis=0)
    g = metrics.redundant_neurons(ids, 12)
    assert g.groups == [[1, 6, 7], [4, 8, 11]]
    assert g.complementary == [7, 8]
    assert g.dead == [10] and g.always_on == [9]
    assert g.effective == 6  # 0, 1, 2, 3, 4, 5 stay


def test_class_table_rows_follow_the_layer_states():
    ids = np.array([[1], [2], [4]], dtype=np.uint8)
    table = metrics.class_table(
        ids, {1: (np.array([[4], [1]], np.uint8), np.array([2, 3])), 0: (ids[1:2], [5])}
    )
    assert table.tolist() == [[0, 1, 3], [1, 0, 5], [2, 1, 2]]
    with pytest.raises(InputError, match="not among"):
        metrics.class_table(ids, {0: (np.array([[8]], np.uint8), [1])})


def test_max_softmax_of_logits_and_of_probabilities():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    e = np.exp(logits)
    assert np.allclose(metrics.max_softmax(logits), (e / e.sum(1, keepdims=True)).max(1))
    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert np.allclose(metrics.max_softmax(p), [0.8, 0.5])
