"""State-space metrics over state counts: Rényi entropy (bits), efficiency, aIQ, estimators.

All functions take the counts of the observed states (any order, zeros ignored) and are
pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from onnx_state.errors import InputError

__all__ = [
    "EntropyInterval",
    "NeuronGroups",
    "aIQ",
    "auroc",
    "bootstrap_entropy",
    "chao_shen_entropy",
    "class_information",
    "class_table",
    "efficiency",
    "entropy",
    "firing_counts",
    "fpr_at_tpr",
    "js_divergence",
    "max_softmax",
    "miller_madow_entropy",
    "miller_madow_mutual_information",
    "mutual_information",
    "network_efficiency",
    "redundant_neurons",
    "seen_in",
    "state_keys",
]

_LN2 = math.log(2.0)


def _observed(counts: Iterable[float] | np.ndarray) -> np.ndarray:
    """Validate counts and return the positive ones as float64, ascending.

    Sorting makes every sum below independent of the order the states were stored in (hash
    tables export in an order that depends on history and threads), so the same counts give
    bit-identical metrics.
    """
    c = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    if c.size and (not np.all(np.isfinite(c)) or c[0] < 0):
        raise InputError("state counts must be finite and non-negative")
    c = c[c > 0]
    if c.size == 0:
        raise InputError("no states were observed: run data through the layer first")
    return c


def entropy(counts: Iterable[float] | np.ndarray, alpha: float = 1) -> float:
    """Rényi entropy of order *alpha*, in bits, of the distribution counts / sum(counts).

    alpha=1 is Shannon's entropy, alpha=0 log2 of the number of observed states,
    alpha=inf the min-entropy -log2(max p).
    """
    if alpha is None or not (alpha >= 0):
        raise InputError(f"alpha must be a number >= 0 (or inf), got {alpha!r}")
    p = _observed(counts)
    p = p / p.sum()
    if abs(alpha - 1) < 1e-9:  # the limit; the general formula divides by ~0 here
        return float(-np.sum(p * np.log2(p))) + 0.0  # + 0.0: one state gives 0, not -0
    if alpha == 0:
        return math.log2(p.size)
    if math.isinf(alpha):
        return float(-np.log2(p.max())) + 0.0
    # log(sum p^alpha) by log-sum-exp around the largest term: no overflow or underflow
    # for large alpha (which tends to the min-entropy).
    logp = np.log(p)
    top = logp.max()
    log_sum = alpha * top + np.log(np.sum(np.exp(alpha * (logp - top))))
    return float(log_sum / ((1 - alpha) * _LN2))


def efficiency(
    counts: Iterable[float] | np.ndarray,
    neurons: int,
    alpha1: float = 1,
    alpha2: float | None = None,
) -> float:
    """entropy(alpha1) / (neurons if alpha2 is None else entropy(alpha2)).

    The maximum entropy of a layer is its number of neurons (one bit each).
    """
    if neurons < 1:
        raise InputError(f"a layer needs at least one neuron, got {neurons}")
    numerator = entropy(counts, alpha1)
    denominator = float(neurons) if alpha2 is None else entropy(counts, alpha2)
    if denominator == 0:
        # A single observed state: entropy 0 over entropy 0; no information either way.
        return 0.0
    return numerator / denominator


def network_efficiency(efficiencies: Iterable[float]) -> float:
    """Geometric mean of layer efficiencies (0 if any layer has efficiency 0)."""
    e = np.asarray(list(efficiencies), dtype=np.float64)
    if e.size == 0:
        raise InputError("network efficiency needs at least one layer efficiency")
    if not np.all(np.isfinite(e)) or e.min() < 0:
        raise InputError(f"layer efficiencies must be finite and >= 0, got {e.tolist()}")
    if e.min() == 0:
        return 0.0
    return float(np.exp(np.mean(np.log(e))))


def aIQ(network_efficiency: float, accuracy: float, weight: float = 2) -> float:
    """Artificial intelligence quotient: (efficiency * accuracy**weight) ** (1 / (weight + 1))."""
    if not weight >= 1:
        raise InputError(f"aIQ weight (beta) must be >= 1, got {weight!r}")
    if not 0 <= accuracy <= 1:
        raise InputError(f"accuracy must lie in [0, 1], got {accuracy!r}; pass a fraction")
    if not 0 <= network_efficiency <= 1:
        raise InputError(f"network efficiency must lie in [0, 1], got {network_efficiency!r}")
    return float((network_efficiency * accuracy**weight) ** (1.0 / (weight + 1)))


# -- bias-corrected Shannon estimates for undersampled layers ---------------------------------
def miller_madow_entropy(counts: Iterable[float] | np.ndarray) -> float:
    """Plug-in Shannon entropy plus the Miller–Madow correction (K - 1) / (2N), in bits."""
    c = _observed(counts)
    return float(entropy(c, 1) + (c.size - 1) / (2.0 * c.sum() * _LN2))


def chao_shen_entropy(counts: Iterable[float] | np.ndarray) -> float:
    """Chao–Shen coverage-adjusted Horvitz–Thompson Shannon entropy, in bits.

    Needs integer counts. Coverage is 1 - f1/N with f1 the singletons; when every state is
    a singleton, f1 is taken as N - 1 so coverage stays positive (Chao & Shen, 2003).
    """
    c = _observed(counts)
    if not np.all(c == np.round(c)):
        raise InputError("the Chao–Shen estimate needs integer state counts")
    n = c.sum()
    f1 = float(np.sum(c == 1))
    if f1 == n:
        f1 = n - 1
    pa = (1.0 - f1 / n) * c / n
    inclusion = 1.0 - (1.0 - pa) ** n
    return float(-np.sum(pa * np.log2(pa) / inclusion))


_ESTIMATORS = {
    "plugin": lambda c: entropy(c, 1),
    "miller_madow": miller_madow_entropy,
    "chao_shen": chao_shen_entropy,
}


@dataclass(frozen=True)
class EntropyInterval:
    """A point estimate of Shannon entropy (bits) and a bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    estimator: str

    def to_dict(self) -> dict[str, float | str]:
        """JSON-ready fields."""
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "estimator": self.estimator,
        }


def bootstrap_entropy(
    counts: Iterable[float] | np.ndarray,
    estimator: str = "plugin",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
) -> EntropyInterval:
    """Percentile bootstrap interval of a Shannon entropy estimate (multinomial resampling)."""
    if estimator not in _ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; use one of {sorted(_ESTIMATORS)}")
    if n_boot < 1 or not 0 < level < 1:
        raise InputError("n_boot must be >= 1 and level must lie in (0, 1)")
    c = _observed(counts)
    n = round(c.sum())
    p = c / c.sum()
    est = _ESTIMATORS[estimator]
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    # Resample in slabs so memory stays near 8 MB whatever the number of unique states.
    slab = max(1, (1 << 20) // p.size)
    for start in range(0, n_boot, slab):
        draws = rng.multinomial(n, p, size=min(slab, n_boot - start))
        for i, row in enumerate(draws):
            values[start + i] = est(row)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return EntropyInterval(est(c), float(low), float(high), level, estimator)


# -- comparing two state distributions ----------------------------------------------------------
def _rows(ids: np.ndarray) -> np.ndarray:
    """Packed state rows as one opaque (void) value each, for set operations."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    width = max(1, ids.shape[1] if ids.ndim == 2 else 1)
    if ids.size == 0:
        return np.empty(len(ids), dtype=np.dtype((np.void, width)))
    return ids.view(np.dtype((np.void, width))).ravel()


def js_divergence(
    ids_a: np.ndarray, counts_a: np.ndarray, ids_b: np.ndarray, counts_b: np.ndarray
) -> float:
    """Jensen–Shannon divergence (bits, in [0, 1]) of two state distributions.

    States are uint8 rows of one width; counts are their occurrences.
    """
    if ids_a.shape[1:] != ids_b.shape[1:]:
        raise InputError(f"state widths differ: {ids_a.shape[1:]} vs {ids_b.shape[1:]}")
    both = np.concatenate([_rows(ids_a), _rows(ids_b)])
    _, inverse = np.unique(both, return_inverse=True)
    k = inverse.max() + 1 if inverse.size else 0
    p = np.bincount(inverse[: len(ids_a)], weights=np.asarray(counts_a, float), minlength=k)
    q = np.bincount(inverse[len(ids_a) :], weights=np.asarray(counts_b, float), minlength=k)
    if p.sum() == 0 or q.sum() == 0:
        raise InputError("no states were observed on one side")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def seen_in(ids: np.ndarray, reference_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which rows of *ids* occur among *reference_ids*."""
    if ids.shape[1:] != reference_ids.shape[1:]:
        raise InputError(
            f"state widths differ: {ids.shape[1:]} vs reference {reference_ids.shape[1:]}"
        )
    return np.isin(_rows(ids), _rows(reference_ids))


def firing_counts(ids: np.ndarray, counts: np.ndarray, neurons: int) -> np.ndarray:
    """How often each neuron fired: sum over states of count × bit (int64 [neurons]).

    Works on the packed bytes, bit plane by bit plane, in slabs of about 8 MB, so memory
    stays bounded for wide layers and millions of states.
    """
    ids = np.asarray(ids, dtype=np.uint8)
    counts = np.asarray(counts, dtype=np.int64)
    n_bytes = ids.shape[1] if ids.ndim == 2 else 0
    per_byte = np.zeros((8, n_bytes), dtype=np.int64)  # [bit i, byte j] -> neuron 8j + i
    rows = max(1, (8 << 20) // max(1, 8 * n_bytes))
    for start in range(0, len(ids), rows):
        slab, weight = ids[start : start + rows], counts[start : start + rows]
        for bit in range(8):
            per_byte[bit] += weight @ ((slab >> bit) & 1).astype(np.int64)
    return per_byte.T.reshape(-1)[:neurons]


# -- detection: in-distribution vs out-of-distribution scores -----------------------------------
def _scores(values: Iterable[float] | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise InputError(f"{what} must be a non-empty array of finite numbers")
    return v


def auroc(
    scores_in: Iterable[float] | np.ndarray, scores_out: Iterable[float] | np.ndarray
) -> float:
    """Area under the ROC curve of a score that is higher out of distribution.

    The Mann–Whitney statistic: the probability that a random out-of-distribution sample
    scores above a random in-distribution one, ties counting one half (mid-ranks).
    """
    a, b = _scores(scores_in, "in-distribution scores"), _scores(scores_out, "OOD scores")
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size)
    sorted_v = both[order]
    # mid-ranks (1-based) of tied runs
    edges = np.flatnonzero(np.diff(sorted_v)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [both.size]])
    ranks[order] = np.repeat((starts + stops + 1) / 2, stops - starts)
    u = ranks[a.size :].sum() - b.size * (b.size + 1) / 2
    return float(u / (a.size * b.size))


def fpr_at_tpr(
    scores_in: Iterable[float] | np.ndarray,
    scores_out: Iterable[float] | np.ndarray,
    tpr: float = 0.95,
) -> float:
    """The fraction of out-of-distribution samples accepted as in-distribution when the
    threshold accepts (score <= threshold) at least *tpr* of the in-distribution samples:
    in-distribution is the positive class, as in ODIN and NAP. The threshold is the
    smallest observed score that reaches *tpr*, so tied scores are accepted together."""
    if not 0 < tpr <= 1:
        raise InputError(f"tpr must lie in (0, 1], got {tpr!r}")
    a, b = _scores(scores_in, "in-distribution scores"), _scores(scores_out, "OOD scores")
    a = np.sort(a)
    # smallest k with k / n >= tpr, computed in integers-safe form
    k = max(1, math.ceil(tpr * a.size - 1e-9))
    threshold = a[k - 1]
    return float(np.mean(b <= threshold))


# -- class information ---------------------------------------------------------------------------
def class_information(counts: np.ndarray, per_class: Iterable[np.ndarray]) -> tuple[float, float]:
    """(plug-in, Miller–Madow-corrected) mutual information I(S; C) in bits.

    *counts* are the layer's state counts, *per_class* each class's state counts (which sum
    to *counts* state by state). Plug-in: H(S) - sum_c p(c) H(S | c). Miller–Madow on each
    term: H + (K - 1) / (2N ln 2) for H(S) (K observed states, N samples) and for each
    H(S | c) (K_c states, N_c samples, weight N_c / N), so the plug-in value moves by
    ((K - 1) - sum_c (K_c - 1)) / (2N ln 2) — the same as correcting H(S) + H(C) - H(S, C).
    The corrected value is not clipped at 0: below 0 it says the layer shows no class
    information beyond the estimator's bias.
    """
    c = _observed(counts)
    n = c.sum()
    h_given = 0.0
    spread = 0.0
    for column in per_class:
        col = np.asarray(column, dtype=np.float64)
        col = col[col > 0]
        if col.size == 0:
            continue
        h_given += col.sum() / n * entropy(col, 1)
        spread += col.size - 1
    plug = max(0.0, entropy(c, 1) - h_given)
    return plug, float(entropy(c, 1) - h_given + ((c.size - 1) - spread) / (2.0 * n * _LN2))


def _joint(joint: np.ndarray) -> np.ndarray:
    j = np.asarray(joint, dtype=np.float64)
    if j.ndim != 2 or not np.all(np.isfinite(j)) or (j.size and j.min() < 0):
        raise InputError("a joint table must be a 2-D array [states, classes] of counts >= 0")
    return np.asarray(j[j.sum(axis=1) > 0])


def mutual_information(joint: np.ndarray) -> float:
    """Plug-in mutual information I(S; C) in bits of a joint count table [states, classes]."""
    j = _joint(joint)
    return class_information(j.sum(axis=1), j.T)[0]


def miller_madow_mutual_information(joint: np.ndarray) -> float:
    """I(S; C) in bits of a joint count table, Miller–Madow-corrected on each entropy term
    (see ``class_information``)."""
    j = _joint(joint)
    return class_information(j.sum(axis=1), j.T)[1]


def max_softmax(scores: np.ndarray) -> np.ndarray:
    """The maximum class probability per row of (N, K) scores: the rows themselves when
    they are already probabilities (non-negative, summing to 1), else their softmax."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if s.size and s.min() >= 0 and np.allclose(s.sum(axis=1), 1, atol=1e-4):
        return np.asarray(s.max(axis=1))
    z = np.exp(s - s.max(axis=1, keepdims=True))
    return np.asarray(1.0 / z.sum(axis=1))  # the largest term is exp(0) = 1


# -- redundant neurons ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NeuronGroups:
    """Neurons that carry no information of their own, from a layer's distinct states.

    ``groups``: neurons (ascending, two or more) whose firing is identical or exactly
    complementary on every observed state; ``complementary``: the members that fire
    exactly when their group's first member does not; ``dead`` / ``always_on``: constant
    neurons; ``effective``: the neurons left when each group keeps one member and the
    constant ones go (the states stay distinct, so the entropy is unchanged).
    """

    groups: list[list[int]]
    complementary: list[int]
    dead: list[int]
    always_on: list[int]
    effective: int


def redundant_neurons(ids: np.ndarray, neurons: int) -> NeuronGroups:
    """Identical, complementary and constant neurons of packed distinct states *ids*.

    Exact: two neurons fire identically on every sample iff their columns agree on every
    observed distinct state (each was observed at least once), so the counts are not needed.
    """
    ids = np.asarray(ids, dtype=np.uint8)
    if ids.ndim != 2 or len(ids) == 0:
        raise InputError("no states were observed: run data through the layer first")
    bits = np.unpackbits(ids, axis=1, bitorder="little")[:, :neurons]  # [states, neurons]
    on = bits.all(axis=0)
    off = ~bits.any(axis=0)
    varying = np.flatnonzero(~on & ~off)
    # one canonical column per neuron: flipped so that the first state reads 0
    canon = bits[:, varying] ^ bits[0, varying]
    packed = np.packbits(canon.T, axis=1)
    rows = packed.view(np.dtype((np.void, packed.shape[1]))).ravel() if packed.size else packed
    groups: list[list[int]] = []
    complementary: list[int] = []
    if len(varying):
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        for g in range(len(first)):
            members = varying[inverse == g]
            if len(members) > 1:
                groups.append(members.tolist())
                lead = bits[0, members[0]]
                complementary += [int(m) for m in members[1:] if bits[0, m] != lead]
        effective = len(first)
    else:
        effective = 0
    groups.sort()
    return NeuronGroups(
        groups=groups,
        complementary=sorted(complementary),
        dead=np.flatnonzero(off).tolist(),
        always_on=np.flatnonzero(on).tolist(),
        effective=effective,
    )


def state_keys(ids: np.ndarray) -> np.ndarray:
    """One sortable key per packed row: a uint64 for rows of up to 8 bytes (fast sorts),
    else the row as an opaque void value."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    n, width = ids.shape
    if width > 8:
        return _rows(ids)
    padded = np.zeros((n, 8), dtype=np.uint8)
    padded[:, :width] = ids
    return padded.view("<u8").ravel()


def class_table(
    ids: np.ndarray, by_class: Mapping[int, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """(row, class, count) triples [pairs, 3], ascending by (row, class): for each class,
    its states (packed rows, every one among *ids*) and their counts, as rows of *ids*."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    classes = [c for c in sorted(by_class) if len(by_class[c][0])]
    if not classes:
        return np.zeros((0, 3), dtype=np.int64)
    keys = state_keys(ids)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    parts = []
    for c in classes:
        cids, ccounts = by_class[c]
        wanted = state_keys(np.asarray(cids, dtype=np.uint8).reshape(len(cids), ids.shape[1]))
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(ids) - 1)
        if np.any(sorted_keys[at] != wanted):
            raise InputError(f"class {c} has states that are not among the layer's states")
        rows = order[at]
        parts.append(np.column_stack([rows, np.full(len(rows), c), ccounts]).astype(np.int64))
    table = np.concatenate(parts)
    return table[np.lexsort((table[:, 1], table[:, 0]))]
