"""Hamming-tolerant novelty: how far a sample's firing states lie from a reference's states.

Per layer, each state of a sample (one per spatial position) gets its exact minimum Hamming
distance to the reference's distinct states — optionally only those of the sample's class
(NAP, Olber et al., CVPR 2023; Cheng et al., DATE 2019) — and the sample's layer distance
is the mean over its positions.

Calibration — the thresholds and ranks below — comes from held-out distances:

* ``calibrate(distances)``: the per-sample layer distances of held-out in-distribution data
  (data of the reference's distribution that is not in the reference store; audit's
  ``calibration=``). This is the calibration to use.
* otherwise, from the reference store alone (leave one out, no re-run): a state seen at
  least twice (in that class) has distance 0, a state seen once its distance to the nearest
  *other* state. For layers with one state per sample this is exactly the distance each
  reference sample would have had with itself left out — still optimistic, since the model
  was fitted to those samples; for conv layers it is a per-position distribution, far
  narrower than that of a per-sample mean (most positions repeat), so votes there fire on
  most samples. Use it for AUROC-type comparisons, not for flags.

Combining layers (``combine``): a layer votes when the sample's distance exceeds the
*quantile* of the reference's held-out distances; the score is the number of votes plus the
mean over layers of the calibrated rank F(d) in [0, 1) — the reference's held-out
distribution function at d (ties half) — so that samples with equal votes are still ordered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_state import metrics
from onnx_state.count.hamming import HammingIndex
from onnx_state.errors import InputError
from onnx_state.results import LayerResult

__all__ = ["ReferenceLayer", "combine", "weighted_quantile"]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (lower quantile)."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cum = np.cumsum(w)
    k = int(np.searchsorted(cum, q * cum[-1] - 1e-9 * cum[-1]))
    return float(v[min(k, len(v) - 1)])


def _leave_one_out(index: HammingIndex, ids: np.ndarray, counts: np.ndarray, neurons: int,
                   threads: int | None) -> np.ndarray:  # fmt: skip
    """Held-out distances of the reference's own distinct states (rows of the index)."""
    out = np.zeros(len(ids), dtype=np.int64)
    single = np.flatnonzero(counts == 1)
    if len(single):
        out[single] = index.min_distances(ids[single], threads, exclude=single)
    return np.minimum(out, neurons)  # a lone state has no other: at most every neuron differs


@dataclass
class _Side:
    """The reference states a query is compared with: all of them, or one class's."""

    ids: np.ndarray
    index: HammingIndex


class ReferenceLayer:
    """One reference layer prepared for distance queries and calibrated on itself.

    Parameters
    ----------
    layer:
        The reference's result for this layer (with ``class_counts`` for per-class sets).
    by_class:
        Compare a sample only with the reference states of its class (when the reference
        has class counts; otherwise every state).
    quantile:
        The layer's vote threshold is this quantile of the held-out distances.
    threads:
        Threads of the distance kernel; None means every core.
    """

    def __init__(self, layer: LayerResult, *, by_class: bool = True, quantile: float = 0.95,
                 threads: int | None = None) -> None:  # fmt: skip
        if not 0 < quantile < 1:
            raise InputError(f"the novelty quantile must lie in (0, 1), got {quantile}")
        self.name = layer.name
        self.neurons = layer.neurons
        self.threads = threads
        ids, counts = layer.state_ids(), layer.counts()
        if len(ids) == 0:
            raise InputError(
                f"the reference layer {layer.name} observed no states (a layer in an If "
                f"branch that did not run?): Hamming novelty needs them; exclude layer "
                f"{layer.layer!r}, or use exact novelty"
            )
        self.all = _Side(ids, HammingIndex(ids))
        self.classes: dict[int, _Side] = {}
        table = layer.class_counts if by_class else None
        if table is not None and len(table):
            values, weights = [], []
            for c in np.unique(table[:, 1]):
                rows = table[table[:, 1] == c]
                side = _Side(ids[rows[:, 0]], HammingIndex(ids[rows[:, 0]]))
                self.classes[int(c)] = side
                values.append(_leave_one_out(side.index, side.ids, rows[:, 2], self.neurons,
                                             threads))  # fmt: skip
                weights.append(rows[:, 2])
            held, weight = np.concatenate(values), np.concatenate(weights)
        else:
            held = _leave_one_out(self.all.index, ids, counts, self.neurons, threads)
            weight = counts
        self.quantile = quantile
        self.calibrated_on = "reference (leave one out)"
        self._set_held_out(held.astype(np.float64), weight.astype(np.float64))

    def _set_held_out(self, held: np.ndarray, weight: np.ndarray) -> None:
        order = np.argsort(held, kind="stable")
        self.held_out = held[order]
        self._cum = np.concatenate([[0.0], np.cumsum(weight[order], dtype=np.float64)])
        self.threshold = weighted_quantile(held, weight, self.quantile)

    def calibrate(self, distances: np.ndarray) -> None:
        """Take thresholds and ranks from held-out in-distribution samples' layer distances
        (``distances`` [samples], as ``distances`` then a mean over positions gives)."""
        d = np.asarray(distances, dtype=np.float64).ravel()
        if d.size == 0:
            raise InputError("the calibration data holds no samples")
        self.calibrated_on = f"{d.size} held-out samples"
        self._set_held_out(d, np.ones_like(d))

    @property
    def by_class(self) -> bool:
        """Whether distances are taken to the states of the sample's class."""
        return bool(self.classes)

    def distances(self, ids: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """int64 [n]: each packed state's minimum Hamming distance to the reference (to
        the states of ``classes[i]`` when the reference is per class; a class the
        reference never saw is compared with every state)."""
        out = np.zeros(len(ids), dtype=np.int64)
        if classes is None or not self.classes:
            self._fill(self.all, ids, np.arange(len(ids)), out)
            return out
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            self._fill(self.classes.get(int(c), self.all), ids, rows, out)
        return out

    def _fill(self, side: _Side, ids: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        # Distinct queries only, and exact members (distance 0) settled by a sort first.
        unique, inverse = _unique_rows(ids[rows])
        d = np.zeros(len(unique), dtype=np.int64)
        new = np.flatnonzero(~metrics.seen_in(unique, side.ids))
        if len(new):
            d[new] = side.index.min_distances(unique[new], self.threads)
        out[rows] = np.minimum(d[inverse.ravel()], self.neurons)

    def rank(self, distance: np.ndarray) -> np.ndarray:
        """F(d): the held-out weight below d plus half the weight at d, over the total."""
        d = np.asarray(distance, dtype=np.float64)
        below = self._cum[np.searchsorted(self.held_out, d, side="left")]
        upto = self._cum[np.searchsorted(self.held_out, d, side="right")]
        return np.asarray((below + upto) / 2 / self._cum[-1])


def _unique_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, inverse) of packed states; rows of up to 8 bytes sort as one uint64
    (np.unique over axis 0 sorts structured rows, several times slower)."""
    _, first, inverse = np.unique(metrics.state_keys(ids), return_index=True, return_inverse=True)
    return ids[first], inverse.ravel()


def combine(
    distances: Mapping[str, np.ndarray], references: Sequence[ReferenceLayer]
) -> tuple[np.ndarray, np.ndarray]:
    """(score, votes) per sample from per-layer mean distances (see the module docstring)."""
    if not references:
        raise InputError("Hamming novelty needs at least one reference layer")
    votes = np.zeros(len(distances[references[0].name]), dtype=np.int64)
    ranks = np.zeros(len(votes))
    for r in references:
        d = distances[r.name]
        votes += d > r.threshold
        ranks += r.rank(d)
    return votes + ranks / len(references), votes
