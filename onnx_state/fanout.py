"""Count one batch's captured tensors on several threads, with results identical to one.

The counting kernel releases the GIL, so threads scale. Each layer's counter is touched by
one thread at a time: a layer counted in a dense table (few neurons) is cut by samples into
pieces, each counted into the taking thread's own shard (merged exactly by ``finish``);
any other layer goes whole to one thread. Threads take the next piece from a shared
queue, largest first, so layers of uneven cost balance themselves.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from onnx_state.counter import DENSE_NEURONS, StateCounter, width_mismatch

__all__ = ["LayerCounting"]

# A piece below this many values is not worth a hand-off between threads.
_MIN_PIECE_VALUES = 1 << 17


def _guided_edges(n: int, workers: int, smallest: int) -> list[int]:
    """Cut n samples into pieces of shrinking size: each takes 1/(2 * workers) of what is
    left, but at least *smallest*, so the threads finish together (guided scheduling)."""
    edges = [0]
    while edges[-1] < n:
        left = n - edges[-1]
        edges.append(edges[-1] + min(left, max(smallest, left // (2 * workers))))
    return edges


class LayerCounting:
    """A consumer for ``Instrumented.stream`` that feeds one StateCounter per (tensor, axis).

    Use as a context manager; ``finish()`` folds the shards into *counters* and must run
    before they are read. *fingerprint*, when given, is updated with every batch.
    """

    def __init__(
        self,
        counters: Mapping[tuple[str, int], StateCounter],
        workers: int = 1,
        fingerprint: Any = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.counters = counters
        self.workers = workers
        self.fingerprint = fingerprint
        # shards[k][key]: worker k's counter for a split layer; worker 0 uses the layer's own
        self._shards: list[dict[Hashable, StateCounter]] = [{} for _ in range(workers)]
        self._width: dict[Hashable, int] = {}  # neurons of each layer, from its first batch
        self._pool = ThreadPoolExecutor(workers - 1) if workers > 1 else None

    def __enter__(self) -> LayerCounting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __call__(self, batch: Mapping[str, np.ndarray], captured: Mapping[str, Any]) -> None:
        if self._pool is None:
            for piece in self._pieces(captured, batch):
                self._count(0, piece)
            return
        work: queue.SimpleQueue = queue.SimpleQueue()
        for piece in self._pieces(captured, batch):
            work.put(piece)
        for _ in range(self.workers):
            work.put(None)  # one stop mark per thread, after every piece
        # Wake the other threads only now: woken earlier, they would take the GIL from the
        # thread cutting the pieces.
        failed = threading.Event()
        futures = [self._pool.submit(self._work, k, work, failed) for k in range(1, self.workers)]
        try:
            self._work(0, work, failed)
        finally:
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err

    def _pieces(
        self, captured: Mapping[str, Any], batch: Mapping[str, np.ndarray] | None = None
    ) -> list[tuple[Any, Any, int, bool]]:
        """(counter key, array, axis, split?) per piece, largest first; the fingerprint of
        *batch* last, as (None, batch, 0, False)."""
        pieces: list[tuple[Any, Any, int, bool]] = []
        for key, counter in self.counters.items():
            tensor, axis = key
            x = np.asarray(captured[tensor])
            n = x.shape[0] if x.ndim else 0
            valid = x.ndim >= 2 and -x.ndim <= axis < x.ndim
            if valid:
                # One width per layer, checked here for every batch: the thread that takes a
                # piece may hold a shard, or a counter that has not seen a batch yet.
                width = self._width.setdefault(key, counter.neurons or x.shape[axis])
                if x.shape[axis] != width:
                    raise width_mismatch(width, x.shape[axis], axis)
            splittable = (
                valid
                and self.workers > 1
                and not counter.records
                and x.shape[axis] <= DENSE_NEURONS
                and n > 1
                and x.size >= 2 * _MIN_PIECE_VALUES
            )
            if not splittable:
                pieces.append((key, x, axis, False))  # the counter reports any other problem
                continue
            edges = _guided_edges(n, self.workers, max(1, n * _MIN_PIECE_VALUES // x.size))
            pieces += [(key, x[a:b], axis, True) for a, b in itertools.pairwise(edges)]
        # Whole layers first (they cannot be shared out), then split pieces, large to small.
        pieces.sort(key=lambda p: (p[3], -p[1].size))
        if self.fingerprint is not None and batch is not None:
            pieces.append((None, batch, 0, False))
        return pieces

    def _work(self, worker: int, work: queue.SimpleQueue, failed: threading.Event) -> None:
        try:
            while (piece := work.get()) is not None:
                if not failed.is_set():  # after a failure, drain to the stop mark
                    self._count(worker, piece)
        except BaseException:
            failed.set()
            raise

    def _count(self, worker: int, piece: tuple[Any, Any, int, bool]) -> None:
        key, x, axis, split = piece
        if key is None:
            self.fingerprint.update(x)
            return
        counter = self.counters[key]
        if split and worker:
            shards = self._shards[worker]
            if key not in shards:
                shards[key] = StateCounter(self._width[key])
            counter = shards[key]
        counter.update(x, axis=axis)

    def finish(self) -> None:
        """Merge every worker's shards into the layers' counters (exact)."""
        for shards in self._shards[1:]:
            for key, shard in shards.items():
                self.counters[key].merge(shard)
            shards.clear()
