"""State-space metrics over state counts: Rényi entropy (bits), efficiency, aIQ, estimators.

All functions take the counts of the observed states (any order, zeros ignored) and are
pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from onnx_state.errors import InputError

__all__ = [
    "EntropyInterval",
    "aIQ",
    "bootstrap_entropy",
    "chao_shen_entropy",
    "efficiency",
    "entropy",
    "firing_counts",
    "js_divergence",
    "miller_madow_entropy",
    "network_efficiency",
    "seen_in",
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
