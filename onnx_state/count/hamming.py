"""Exact minimum Hamming distances from packed states to a reference set of states.

``HammingIndex(reference_ids)`` sorts the reference rows by popcount once (the index: a
query only scans buckets whose popcount is closer than the best distance so far);
``min_distances(ids)`` runs the nogil kernel ``_hamming.min_distances`` over row ranges on
several threads. States are packed as everywhere in onnx_state (``np.packbits(bits,
bitorder="little")``); distances do not depend on the packing as long as both sides share it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from onnx_state.count._hamming import min_distances as _min_distances
from onnx_state.count.engine import available_cpus
from onnx_state.errors import InputError

__all__ = ["HammingIndex", "to_words"]

# Rows per task: enough work to amortise a thread hand-off, small enough to balance.
_CHUNK = 256


def to_words(ids: np.ndarray) -> np.ndarray:
    """uint8 state rows [n, bytes] as zero-padded native uint64 words [n, ceil(bytes / 8)]."""
    ids = np.asarray(ids, dtype=np.uint8)
    if ids.ndim != 2:
        raise InputError(f"state ids must be a 2-D array of packed rows, got shape {ids.shape}")
    n, width = ids.shape
    words = (width + 7) // 8
    padded = np.zeros((n, 8 * words), dtype=np.uint8)
    padded[:, :width] = ids
    return padded.view(np.uint64).reshape(n, words)


def _popcounts(words: np.ndarray) -> np.ndarray:
    """Set bits per row of uint64 words."""
    as_bytes = words.view(np.uint8).reshape(len(words), 8 * words.shape[1])
    return np.asarray(np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int64))


class HammingIndex:
    """A reference set of packed states for exact nearest-Hamming-distance queries.

    Rows of up to 8 bytes (64 neurons) are also kept as sorted integer keys: a query is
    first looked up exactly (distance 0), then with each of its bits flipped (distance 1),
    and only the rest go to the kernel, which then stops at the first row at distance 2.

    Parameters
    ----------
    reference_ids:
        uint8 [m, bytes] packed states (duplicates allowed; rows keep their index for
        ``exclude``).
    """

    def __init__(self, reference_ids: np.ndarray) -> None:
        words = to_words(reference_ids)
        self.width = np.asarray(reference_ids).shape[1]
        pops = _popcounts(words)
        self.order = np.argsort(pops, kind="stable")  # sorted row -> original row
        self.words = np.ascontiguousarray(words[self.order])
        top = int(pops.max()) if len(pops) else 0
        counts = np.bincount(pops, minlength=top + 1)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rank = np.empty(len(self.order), dtype=np.int64)  # original row -> sorted row
        self.rank[self.order] = np.arange(len(self.order))
        self.keys = words[:, 0] if self.width <= 8 and len(words) else None  # original order
        self.sorted_keys = None if self.keys is None else np.sort(self.keys)

    def __len__(self) -> int:
        return len(self.words)

    def min_distances(
        self, ids: np.ndarray, threads: int | None = None, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """int64 [n]: for each packed row of *ids*, its smallest Hamming distance to a
        reference row (``64 * words + 1`` when the reference is empty).

        *exclude* (int [n], -1 for none) names one reference row per query that does not
        count, for leave-one-out distances of the reference's own rows.
        """
        ids = np.asarray(ids, dtype=np.uint8)
        if ids.ndim != 2 or ids.shape[1] != self.width:
            raise InputError(
                f"states of {ids.shape[1:] if ids.ndim == 2 else ids.shape} bytes cannot be "
                f"compared with reference states of {self.width} bytes"
            )
        query = to_words(ids)
        n = len(query)
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64)
            if exclude.shape != (n,):
                raise InputError(
                    f"exclude needs one row index per query ({n}), got {exclude.shape}"
                )
        out = np.zeros(n, dtype=np.int64)
        rest, floor = np.arange(n), 0
        if self.keys is not None and n:
            rest = self._near(query[:, 0], exclude, out)
            floor = 2
        if len(rest):
            out[rest] = self._scan(query[rest], threads, floor,
                                   None if exclude is None else exclude[rest])  # fmt: skip
        return out

    def _near(self, keys: np.ndarray, exclude: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """Settle the queries at distance 0 or 1 by lookups of their keys (in *out*); return
        the indices of the others, which lie at distance 2 or more."""
        assert self.keys is not None and self.sorted_keys is not None
        if exclude is None:
            skipped, has = np.zeros(len(keys), dtype=np.uint64), np.zeros(len(keys), dtype=bool)
        else:
            skipped, has = self.keys[np.maximum(exclude, 0)], exclude >= 0
        zero = self._hits(keys, skipped, has)
        rest = np.flatnonzero(~zero)
        flips = np.uint64(1) << np.arange(8 * self.width, dtype=np.uint64)
        near = np.zeros(len(rest), dtype=bool)
        for s in range(0, len(rest), 8192):  # bounded memory: 8192 x 64 keys at a time
            part = rest[s : s + 8192]
            flipped = keys[part, None] ^ flips[None, :]
            hits = self._hits(flipped, skipped[part, None], has[part, None])
            near[s : s + 8192] = hits.any(axis=1)
        out[rest[near]] = 1
        return rest[~near]

    def _hits(self, keys: np.ndarray, skipped: np.ndarray, has: np.ndarray) -> np.ndarray:
        """Whether each key occurs among the reference rows, the skipped row (where *has*)
        not counting."""
        assert self.sorted_keys is not None
        found = np.searchsorted(self.sorted_keys, keys, side="right") - np.searchsorted(
            self.sorted_keys, keys, side="left"
        )
        return np.asarray(found - ((keys == skipped) & has) > 0)

    def _scan(
        self, query: np.ndarray, threads: int | None, floor: int, exclude: np.ndarray | None
    ) -> np.ndarray:
        """The kernel over *query* words, rows split over threads."""
        n = len(query)
        out = np.empty(n, dtype=np.int32)
        skip = None
        if exclude is not None:
            skip = np.where(exclude >= 0, self.rank[np.maximum(exclude, 0)], -1)
        workers = max(1, min(threads or available_cpus(), -(-n // _CHUNK)))
        if workers == 1:
            _min_distances(query, self.words, self.offsets, out, 0, n, skip, floor)
        else:
            with ThreadPoolExecutor(workers) as pool:
                jobs = [
                    pool.submit(_min_distances, query, self.words, self.offsets, out, s,
                                min(n, s + _CHUNK), skip, floor)
                    for s in range(0, n, _CHUNK)
                ]  # fmt: skip
                for job in jobs:
                    job.result()
        return out.astype(np.int64)
