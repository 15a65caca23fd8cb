"""The parallel counting engine, and the one place that decides how threads are used.

``plan_threads`` decides, once per run, how many threads count, whether counting overlaps
the next onnxruntime run, and whether onnxruntime's idle threads may spin.
``ParallelCounting`` counts each batch's captured tensors on that many threads with results
identical to one: the counting kernel releases the GIL, so threads scale. Each layer's
counter is touched by one thread at a time. A layer whose counter ``shards_cheaply`` (a
dense table, or a hash table of at most 1 MiB) is cut by samples into pieces, each
counted into the taking thread's own shard; with ``shard_any`` (``count_states``: one
array, nothing else to share out), so is any ``shardable`` counter. Any other layer goes
whole to one thread: the shards of a large hash table would each grow towards all of the
layer's distinct states. Threads take the next piece from a
shared queue, largest first, so layers of uneven cost balance themselves. Shards are merged
exactly when the engine's block ends without an error, so no caller can forget it.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_state.count.counter import StateCounter, width_mismatch
from onnx_state.errors import InputError

__all__ = [
    "MAX_COUNTING_THREADS",
    "ParallelCounting",
    "ThreadPlan",
    "available_cpus",
    "count_states",
    "plan_threads",
]

Key = tuple[str, int]  # a captured tensor and its neuron axis

# Past ~16 threads the per-batch pieces are too small to share, and every thread keeps a
# shard (up to 8 MiB) per narrow layer.
MAX_COUNTING_THREADS = 16


@dataclass(frozen=True)
class ThreadPlan:
    """How one run uses threads.

    Attributes
    ----------
    overlap:
        Count batch *k* on a worker thread while batch *k+1* runs (cores are spare, or the
        model runs on an accelerator); otherwise count right after each run.
    counting_threads:
        Threads that count one batch.
    on_cpu:
        Whether onnxruntime computes on the CPU (then its threads must stop spinning when a
        run returns, or they compete with counting; on an accelerator they must not spin).
    """

    overlap: bool
    counting_threads: int
    on_cpu: bool

    def session_config(self) -> dict[str, str]:
        """onnxruntime session config entries that fit this plan."""
        if self.on_cpu:
            # Idle threads spin between operators (fast), but stop when a run returns:
            # states are counted between runs and must not compete with spinning threads.
            return {"session.force_spinning_stop": "1"}
        # The model runs on the accelerator while states are counted on the CPU cores.
        return {"session.intra_op.allow_spinning": "0"}


def plan_threads(
    providers: Sequence[str] | None, threads: int | None, most: int | None = None
) -> ThreadPlan:
    """The plan for a session on *providers* with *threads* intra-op threads (None: all),
    counting on at most *most* threads (None: MAX_COUNTING_THREADS).

    When onnxruntime computes on every core, counting beside it only preempts its threads
    (a parallel section waits for its slowest thread), so batches are counted between runs
    on all cores. When cores are left over, or the model runs on an accelerator, counting
    overlaps the next batch on the spare cores.
    """
    cpus = available_cpus()
    on_cpu = not providers or providers[0] == "CPUExecutionProvider"
    busy = min(threads or cpus, cpus) if on_cpu else 1
    spare = cpus - busy
    most = MAX_COUNTING_THREADS if most is None else max(1, min(most, MAX_COUNTING_THREADS))
    if spare >= 1:
        return ThreadPlan(True, min(spare, most), on_cpu)
    return ThreadPlan(False, min(busy, most), on_cpu)


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2, or a format we do not know
        pass
    return cpus


# A piece below this many values is not worth a hand-off between threads.
_MIN_PIECE_VALUES = 1 << 17
# Whole layers share out among the threads for free; a layer is cut into pieces (counted
# into shards, merged at the end) only when it holds more than this fraction of one
# thread's share of the batch. (ResNet-style, 53 conv maps a batch: cutting every layer
# gave two threads no speed-up, 32.6 ms a batch on both; whole layers 17.9 ms.)
_CUT_SHARE = 0.5


def _guided_edges(n: int, workers: int, smallest: int) -> list[int]:
    """Cut n samples into pieces of shrinking size: each takes 1/(2 * workers) of what is
    left, but at least *smallest*, so the threads finish together (guided scheduling)."""
    edges = [0]
    while edges[-1] < n:
        left = n - edges[-1]
        edges.append(edges[-1] + min(left, max(smallest, left // (2 * workers))))
    return edges


class ParallelCounting:
    """Count batches of captured tensors into one StateCounter per (tensor, neuron axis).

    A consumer for ``Instrumented.stream``: call it with (batch, captured tensors by name).
    Use it as a context manager: when the block ends without an error, every shard has
    been merged into *counters*, which are complete from then on. *fingerprint*, when
    given, is updated with every batch.

    Parameters
    ----------
    counters:
        The counter of each (tensor name, neuron axis).
    workers:
        Counting threads (``ThreadPlan.counting_threads``); results are identical for any.
    fingerprint:
        An object with ``update(batch)``, e.g. ``capture.fingerprint.Fingerprint``.
    shard_any:
        Cut every ``shardable`` counter into shards, not only those that shard cheaply
        (worth it for one big array; memory grows by up to one table per thread).

    After an error the counters hold part of the data, and the shards are dropped.
    """

    def __init__(
        self,
        counters: Mapping[tuple[str, int], StateCounter],
        workers: int = 1,
        fingerprint: Any = None,
        shard_any: bool = False,
    ) -> None:
        if workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}")
        self.counters = counters
        self.workers = workers
        self.fingerprint = fingerprint
        self.shard_any = shard_any
        # shards[k][key]: worker k's counter for a split layer; worker 0 uses the layer's own
        self._shards: list[dict[Key, StateCounter]] = [{} for _ in range(workers)]
        self._width: dict[Key, int] = {}  # neurons of each layer, from its first batch
        self._pool = ThreadPoolExecutor(workers - 1) if workers > 1 else None

    def __enter__(self) -> ParallelCounting:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(merge=exc_type is None)

    def close(self, merge: bool = True) -> None:
        """Stop the threads and (with *merge*) fold every shard into its layer's counter."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if merge:
            self._merge()

    def __call__(self, batch: Mapping[str, np.ndarray], captured: Mapping[str, Any]) -> None:
        if self._pool is None:
            for piece in self._pieces(captured, batch):
                self._count(0, piece)
            return
        work: queue.SimpleQueue[Any] = queue.SimpleQueue()
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
        arrays = {}
        for tensor, _ in self.counters:
            try:
                arrays[tensor] = np.asarray(captured[tensor])
            except (ValueError, TypeError) as exc:
                why = " ".join(str(exc).split())
                raise InputError(f"cannot count states of this data: {why}") from None
        share = _CUT_SHARE * sum(x.size for x in arrays.values()) / self.workers
        for key, counter in self.counters.items():
            tensor, axis = key
            x = arrays[tensor]
            n = x.shape[0] if x.ndim else 0
            valid = x.ndim >= 2 and -x.ndim <= axis < x.ndim
            if valid and x.size == 0:
                # An If branch that did not run: no state. Its neuron count may be 0 where the
                # size is not fixed, so it only starts a counter that knows no width yet.
                if not counter.neurons and x.shape[axis]:
                    counter.update(x, axis=axis)
                continue
            if valid and not counter.packed:  # a packed counter knows its width from the start
                # One width per layer, checked here for every batch: the thread that takes a
                # piece may hold a shard, or a counter that has not seen a batch yet.
                width = self._width.setdefault(key, counter.neurons or x.shape[axis])
                if x.shape[axis] != width:
                    raise width_mismatch(width, x.shape[axis], axis)
                if not counter.neurons:  # start its table, so that the split rule sees it
                    counter.update(x[:0], axis=axis)
            splittable = (
                valid
                and self.workers > 1
                and x.size > share
                and (counter.shards_cheaply or (self.shard_any and counter.shardable))
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

    def _work(self, worker: int, work: queue.SimpleQueue[Any], failed: threading.Event) -> None:
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
                shards[key] = counter.empty_copy()  # same width, zero point and input
            counter = shards[key]
        counter.update(x, axis=axis)

    def flush(self) -> None:
        """Merge the shards now, so that every counter is complete (for a checkpoint)."""
        self._merge()

    def _merge(self) -> None:
        """Merge every worker's shards into the layers' counters (exact)."""
        for shards in self._shards[1:]:
            while shards:
                key = next(iter(shards))
                self.counters[key].merge(shards[key])
                del shards[key]  # only once merged: a retry after a failure counts it once


def count_states(
    x: Any,
    axis: int = 1,
    *,
    threads: int | None = None,
    counter: StateCounter | None = None,
) -> StateCounter:
    """Count every state of one array on several threads, in one call.

    Parameters
    ----------
    x:
        A captured tensor of rank >= 2 (float16/32/64, bool or integers; packed uint8
        bytes for a ``packed`` counter), samples on axis 0.
    axis:
        Its neuron axis.
    threads:
        Counting threads; None takes every available CPU (at most MAX_COUNTING_THREADS).
    counter:
        The counter to add to; a new one by default. A recording counter is counted on one
        thread, since its states must stay in order.

    Returns the counter; its results are identical for any number of threads. A given
    *counter* keeps its zero point and input (``packed``).
    """
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise InputError(f"the neuron axis must be an integer, got {axis!r}")
    counter = StateCounter() if counter is None else counter
    workers = threads or min(available_cpus(), MAX_COUNTING_THREADS)
    with ParallelCounting({("x", axis): counter}, workers, shard_any=True) as engine:
        engine({}, {"x": x})
    return counter
