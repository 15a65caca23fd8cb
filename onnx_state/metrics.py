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
    "miller_madow_entropy",
    "network_efficiency",
]

_LN2 = math.log(2.0)


def _observed(counts: Iterable[float] | np.ndarray) -> np.ndarray:
    """Validate counts and return the positive ones as float64."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.size and (not np.all(np.isfinite(c)) or c.min() < 0):
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
    if alpha == 1:
        return float(-np.sum(p * np.log2(p)))
    if alpha == 0:
        return math.log2(p.size)
    if math.isinf(alpha):
        return float(-np.log2(p.max()))
    return float(np.log2(np.sum(p**alpha)) / (1 - alpha))


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
    return entropy(c, 1) + (c.size - 1) / (2.0 * c.sum() * _LN2)


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
