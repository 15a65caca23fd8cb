"""Runs over a Dask cluster: ranges of samples as pure tasks, counters merged in a tree.

``analyze``, ``audit`` and ``compare`` take ``cluster=`` and hand their work here as a
``RangeWork``: what one range of samples computes on a worker (``count``) and how partial
results merge exactly (``merge``). This module owns the rest: connecting to a cluster
(``connect``), cutting the data into ranges of whole batches aligned with its storage chunks
(``plan_ranges``), telling workers where to read each range (zarr and ``.npy`` sources are
read by the workers themselves; in-memory arrays are scattered; dask arrays are computed on
the workers), one context (onnxruntime sessions) per worker process and work, progress,
and faults.

Results equal a single-process run's exactly: every range is a run of the same batches
(range edges are multiples of the batch size) and counters merge exactly; so does the data
fingerprint, a tree hash that each range computes on what it reads (``capture.fingerprint``).

Dask is an extra (``pip install 'onnx-state[dask]'``), imported only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from onnx_state.capture.data import (
    InputSpec,
    as_inputs,
    check_inputs,
    open_data,
    storage_chunking,
)
from onnx_state.count import StateCounter
from onnx_state.count._counter import merge_sorted_ids
from onnx_state.errors import ArgumentError, InputError, MissingExtraError, ModelError, one_line
from onnx_state.outputs import progress_bar

__all__ = [
    "MERGE_FAN_IN",
    "RANGES_PER_THREAD",
    "WORKER_ENVIRON",
    "RangeWork",
    "Ranges",
    "Table",
    "connect",
    "local_cluster",
    "open_inputs",
    "open_url",
    "plan_ranges",
    "run_ranges",
    "worker_threads",
]

# Ranges per worker thread: enough to balance uneven workers and the last round, and to lose
# little to a killed one; few enough that per-range overhead (tables shipped) stays small.
RANGES_PER_THREAD = 8
# Partial results merged per merge task: the tree is log8(ranges) levels deep.
MERGE_FAN_IN = 8
# The malloc settings of worker processes this module starts. Dask's nanny sets
# MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS), which also fixes
# glibc's mmap threshold at 128 kB: every batch's captured tensors are then fresh mmaps,
# page-faulted in each time. Measured on 50,000 LeNet-5 samples, one worker: 7.36 s
# against 6.73 s with these (peak RSS 342 against 542 MB). README "Scaling out" says how
# to give them to a cluster of your own.
WORKER_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": 32 << 20, "MALLOC_MMAP_THRESHOLD_": 16 << 20}
# Worker contexts (sessions) kept per worker process, most recently used last.
_MAX_CONTEXTS = 4

NO_ITERABLES = (
    "cluster= needs data the workers can read by sample range: a .npy file, a zarr array "
    "or group (a path or a URL), a numpy or dask array, or a dict of them by input name; "
    "an iterable of batches can only be streamed in one process (drop cluster=)"
)


class RangeWork(Protocol):
    """What one command computes on one range of samples; pickled to the workers.

    ``build`` runs once per worker process (its result is cached under ``key()``);
    ``count`` runs one range and returns a partial result that must pickle; ``merge`` adds
    partial results exactly and must not change its arguments (a task may run twice).
    """

    def key(self) -> Hashable:
        """Identifies the context ``build`` makes: the models and their settings."""
        ...

    def build(self, threads: int) -> Any:
        """The worker-side context (sessions) for workers of *threads* threads."""
        ...

    def count(
        self,
        context: Any,
        data: Sequence[Mapping[str, Any]],
        start: int,
        labels: Any,
        shared: Any,
    ) -> Any:
        """The partial result of the range that starts at sample *start*: *data* holds each
        data set's inputs over the range (arrays by name), *labels* its labels or None,
        *shared* what ``run_ranges`` was given to share with every range."""
        ...

    def merge(self, partials: Sequence[Any]) -> Any:
        """One partial result holding all of *partials* (given in sample order)."""
        ...


@dataclass(frozen=True)
class Ranges:
    """What ``run_ranges`` returns: the merged result, the ranges run and the workers
    that ran them."""

    merged: Any
    ranges: list[tuple[int, int]]
    workers: int


@dataclass(frozen=True)
class Table:
    """A counter's states as plain arrays, sorted: what ranges ship and merge.

    A StateCounter pickles its hash table in slot order, and re-inserting keys in another
    table's slot order clusters them (measured: 0.36 s against 0.026 s sorted for 75,000
    states of 50 neurons), so ranges ship their states sorted and merges keep them so.
    """

    ids: np.ndarray  # uint8 [n, ceil(neurons / 8)], ascending (StateCounter.state_table)
    counts: np.ndarray  # int64 [n]
    neurons: int  # 0: no batch seen
    nan_count: int

    @classmethod
    def of(cls, counter: StateCounter) -> Table:
        """The table of *counter*."""
        ids, counts = counter.state_table()
        return cls(ids, counts, counter.neurons, counter.nan_count)

    def counter(self) -> StateCounter:
        """A new counter holding this table."""
        if not self.neurons:
            return StateCounter()
        return StateCounter.from_states(self.ids, self.counts, self.neurons, self.nan_count)

    @staticmethod
    def merge(tables: Sequence[Table]) -> Table:
        """One table of every state of *tables* (exact: counts add).

        Sorted tables merge pairwise in linear passes (``merge_sorted_ids``): a tree of
        log2(len(tables)) passes, each new table sorted as every input is.
        """
        seen = [t for t in tables if t.neurons]
        if not seen:
            return tables[0]
        level = [(t.ids, t.counts) for t in seen]
        while len(level) > 1:
            level = [
                merge_sorted_ids(*level[i], *level[i + 1]) if i + 1 < len(level) else level[i]
                for i in range(0, len(level), 2)
            ]
        ids, counts = level[0]
        return Table(ids, counts, seen[0].neurons, sum(t.nan_count for t in seen))


# -- connecting -----------------------------------------------------------------------------
def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(
            "cluster= needs Dask: pip install 'onnx-state[dask]' (dask and distributed)"
        ) from None
    return distributed


@contextlib.contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for *cluster*, for the duration of one call.

    *cluster* is a Client (used as it is), a scheduler address (connected, then closed), or
    a number N of worker processes to start on this machine for the call (one thread each).
    """
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if isinstance(cluster, bool) or not isinstance(cluster, (int, str)):
        raise ArgumentError(
            f"cluster must be a distributed.Client, a scheduler address or a number of "
            f"workers, got {type(cluster).__name__}"
        )
    if isinstance(cluster, int):
        if cluster < 1:
            raise InputError(f"the number of workers must be at least 1, got {cluster}")
        with local_cluster(cluster) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(cluster, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"cannot reach a Dask scheduler at {cluster!r}: {one_line(exc)}; give the "
            "address the scheduler prints (tcp://HOST:PORT)"
        ) from None
    with client:
        yield client


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of *workers* processes of one thread each, started
    with WORKER_ENVIRON (what ``cluster=N`` runs on)."""
    import dask

    distributed = _distributed()
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENVIRON}
    # Dask's nanny reads os.environ over its config (a plain cluster run earlier leaves
    # MALLOC_TRIM_THRESHOLD_=65536 there) and copies its settings into os.environ: ours are
    # set there for the start only, then what was there is put back (a nanny restarting a
    # worker later sets them again).
    before = {k: os.environ.get(k) for k in environ}
    os.environ.update({k: str(v) for k, v in WORKER_ENVIRON.items()})
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=logging.ERROR,
            )  # fmt: skip
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_threads() -> int:
    """Threads of the Dask worker this runs on (1 outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    state = getattr(worker, "state", worker)
    return max(1, int(getattr(state, "nthreads", 1)))


# -- the data -------------------------------------------------------------------------------
def _is_dask(array: Any) -> bool:
    return hasattr(array, "dask") and hasattr(array, "chunks") and hasattr(array, "compute")


def _is_zarr(array: Any) -> bool:
    return type(array).__module__.startswith("zarr") and hasattr(array, "store_path")


def open_url(value: Any) -> Any:
    """A zarr array or group (a dict of its arrays) for a URL; anything else as it is."""
    if not (isinstance(value, str) and "://" in value):
        return value
    import zarr

    try:
        node: Any = zarr.open(value, mode="r")
    except Exception as exc:  # zarr and fsspec raise many kinds for a bad URL
        raise InputError(f"cannot open the zarr data at {value}: {one_line(exc)}") from None
    if hasattr(node, "dtype"):
        return node
    arrays = dict(node.arrays())
    if not arrays:
        raise InputError(f"{value} is a zarr group without arrays")
    return next(iter(arrays.values())) if len(arrays) == 1 else arrays


def open_inputs(
    data: Any, specs: Sequence[InputSpec], constants: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    """*data* opened as arrays by input name (nothing read but their first sample) and its
    number of samples; names, ranks, shapes and dtypes checked against *specs*.

    An iterable of batches is refused: its ranges cannot be handed to workers.
    """
    if isinstance(data, Mapping):
        data = {k: open_url(v) for k, v in data.items()}
    opened = open_data(open_url(data))
    names = [s.name for s in specs if s.name not in constants]
    mapping = as_inputs(opened, names)
    if mapping is None:
        raise InputError(NO_ITERABLES)
    mapping = dict(mapping)
    for name, value in mapping.items():
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise InputError(f"input {name!r}: {NO_ITERABLES}")
    check_inputs(mapping, specs, constants)
    lengths = {k: int(v.shape[0]) for k, v in mapping.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"inputs differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError("the data holds no samples")
    return mapping, n


def _chunk_edges(array: Any) -> list[int]:
    """Sample indices where the storage chunks (zarr shards or chunks, dask blocks) end."""
    if _is_dask(array):
        return [int(e) for e in np.cumsum(array.chunks[0])]
    if _is_zarr(array):
        shards = getattr(array, "shards", None)
        step = int((shards or array.chunks)[0])
        return list(range(step, int(array.shape[0]) + step, step))
    return []


def plan_ranges(
    n: int, batch_size: int, chunk_edges: Sequence[int], threads: int
) -> list[tuple[int, int]]:
    """Cut *n* samples into ranges of whole batches, each ending at a storage chunk's end
    where the batches allow.

    Every range but the last holds whole batches of *batch_size*, so each range runs the
    same batches as one process would. Candidate ends are the chunk ends (rounded down to
    a whole batch), else every batch; each range ends at the candidate nearest to its
    target size past its start (the earlier on a tie): ``n / (threads * RANGES_PER_THREAD)``
    samples, shrinking towards the end to ``left / (2 * threads)`` but not below a quarter
    of the first size (guided scheduling: the last ranges are short, so that no thread runs
    a long one while the others wait, and few, since each ships its tables).
    """
    if n < 1 or batch_size < 1 or threads < 1:
        raise InputError(f"cannot plan ranges of {n} samples in batches of {batch_size}")
    bulk = math.ceil(n / (threads * RANGES_PER_THREAD))
    if chunk_edges:
        ends = sorted({e - e % batch_size for e in chunk_edges if 0 < e < n} - {0} | {n})
    else:
        ends = [*range(batch_size, n, batch_size), n]
    ranges, start, i = [], 0, 0
    while start < n:
        target = max(batch_size, bulk // 4, min(bulk, math.ceil((n - start) / (2 * threads))))
        while ends[i] <= start:
            i += 1
        j = i  # the candidate nearest to start + target
        while j + 1 < len(ends) and abs(ends[j + 1] - start - target) < abs(
            ends[j] - start - target
        ):
            j += 1
        ranges.append((start, ends[j]))
        start = ends[j]
    return ranges


class _Memmap:
    """A memory-mapped ``.npy`` file, reopened by each worker."""

    def __init__(self, array: Any) -> None:
        self.filename = os.fspath(array.filename)
        self.offset = int(array.offset)
        self.dtype = array.dtype.str
        self.shape: tuple[int, ...] = tuple(int(d) for d in array.shape)
        self.fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)

    def open(self) -> Any:
        try:
            order: Literal["C", "F"] = "F" if self.fortran else "C"
            return np.memmap(
                self.filename, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                shape=self.shape, order=order,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise InputError(
                f"a worker cannot read {self.filename}: {one_line(exc)}; every worker needs "
                "the data at the same path"
            ) from None


class _Zarr:
    """A zarr array on storage every worker reaches (its store pickles as a reference)."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def open(self) -> Any:
        return self.array


class _Window:
    """Samples start .. stop of an array, indexed from 0, as ``iter_batches`` reads them.

    A read that fails names the batch of *batch* samples it falls in, counted in the whole
    data (*offset* is the window's first sample there), as one process would.
    """

    def __init__(self, array: Any, start: int, stop: int, offset: int, batch: int) -> None:
        self.array, self.start, self.offset, self.batch = array, start, offset, batch
        self.shape = (stop - start, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return int(self.shape[0])

    def sample_chunking(self) -> tuple[int, int] | None:
        """The array's storage chunks, counted from the window's first sample."""
        chunking = storage_chunking(self.array)
        return None if chunking is None else (chunking[0], chunking[1] - self.start)

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b, _ = rows.indices(self.shape[0])
        try:
            return np.asarray(self.array[self.start + a : self.start + b])
        except Exception as exc:  # zarr codecs and numpy memmaps raise their own kinds
            why = " ".join(str(exc).split()) or type(exc).__name__
            lo = self.offset + a - a % self.batch  # (a head read fails for its batch)
            hi = min(lo + self.batch, self.offset + len(self))  # as one process names it
            raise InputError(f"cannot read samples {lo}..{hi} of the data: {why}") from None


def _source(array: Any) -> Any:
    """How workers reach *array*: a _Memmap or _Zarr they open, or None (in memory)."""
    if isinstance(array, np.memmap) and array.filename:
        return _Memmap(array)
    if _is_zarr(array):
        store = type(array.store_path.store).__name__
        return None if store == "MemoryStore" else _Zarr(array)
    return None


# -- the worker side ------------------------------------------------------------------------
_CONTEXTS: OrderedDict[Hashable, tuple[threading.Lock, Any]] = OrderedDict()
_CONTEXTS_LOCK = threading.Lock()


def _context(work: RangeWork) -> tuple[threading.Lock, Any]:
    """The context of *work* in this worker process, built on first use.

    Its lock runs one range at a time: each range uses all of the worker's threads.
    """
    key = work.key()
    with _CONTEXTS_LOCK:
        entry = _CONTEXTS.get(key)
        if entry is None:
            entry = (threading.Lock(), work.build(worker_threads()))
            _CONTEXTS[key] = entry
            while len(_CONTEXTS) > _MAX_CONTEXTS:
                _CONTEXTS.popitem(last=False)
        _CONTEXTS.move_to_end(key)
        return entry


def _windows(parts: Mapping[str, Any], start: int, stop: int, batch: int) -> dict[str, _Window]:
    """Each input over samples start .. stop: a source is opened, an array is the range."""
    out = {}
    for name, part in parts.items():
        if isinstance(part, (_Memmap, _Zarr)):
            out[name] = _Window(part.open(), start, stop, start, batch)
        else:
            out[name] = _Window(np.asarray(part), 0, stop - start, start, batch)
    return out


def _range_task(
    work: RangeWork,
    parts: Sequence[Mapping[str, Any]],
    start: int,
    stop: int,
    batch: int,
    labels: Any,
    shared: Any,
) -> Any:
    lock, context = _context(work)
    data = [_windows(p, start, stop, batch) for p in parts]
    with lock:
        return work.count(context, data, start, labels, shared)


def _merge_task(work: RangeWork, *partials: Any) -> Any:
    return work.merge(partials)


# -- the client side ------------------------------------------------------------------------
def run_ranges(
    client: Any,
    work: RangeWork,
    datasets: Sequence[Mapping[str, Any]],
    n: int,
    batch_size: int,
    *,
    labels: np.ndarray | None = None,
    progress: bool | None = None,
    shared: Any = None,
) -> Ranges:
    """Run *work* over every range of *n* samples on *client*'s workers and merge the
    partial results in a tree.

    Parameters
    ----------
    client:
        A ``distributed.Client`` (see ``connect``).
    work:
        What each range computes (see ``RangeWork``).
    datasets:
        One or more data sets of *n* samples (from ``open_inputs``), run range by range in
        lock-step: ``work.count`` gets each one's inputs over the same samples.
    batch_size:
        Samples per onnxruntime run; range edges are multiples of it.
    labels:
        One label per sample; each range gets its own.
    progress:
        Show a progress bar over batches; None shows one when stderr is a terminal.
    shared:
        Data every range needs (an audit's reference states): sent once to every worker.

    A range that fails fails the call with its error (the earliest range's, when several
    fail); a range whose worker died is run again elsewhere (Dask's retries).
    """
    distributed = _distributed()
    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError:
        raise InputError(
            "the Dask cluster has no workers (waited 60 s); start some, or give cluster=N"
        ) from None
    info = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(int(w.get("nthreads", 1)) for w in info.values()) or 1
    edges = sorted({e for d in datasets for a in d.values() for e in _chunk_edges(a)})
    ranges = plan_ranges(n, batch_size, edges, threads)
    parts = [_range_parts(client, d, ranges) for d in datasets]
    if shared is not None:
        shared = _hold(client, shared)
    futures = [
        client.submit(
            _range_task,
            work,
            [p[i] for p in parts],
            a,
            b,
            batch_size,
            None if labels is None else labels[a:b],
            shared,
            pure=False,
        )
        for i, (a, b) in enumerate(ranges)
    ]
    level = futures
    while len(level) > 1:
        level = [
            client.submit(_merge_task, work, *level[i : i + MERGE_FAN_IN], pure=False)
            for i in range(0, len(level), MERGE_FAN_IN)
        ]
    root = level[0]
    try:
        _follow(distributed, futures, ranges, batch_size, progress)
        merged = root.result()
    except BaseException:
        client.cancel([*futures, root])
        raise
    return Ranges(merged, ranges, len(info))


def _hold(client: Any, value: Any) -> Any:
    """A future of *value* that survives the death of any worker.

    Not ``scatter(broadcast=True)``: its replicate step can hang for good with the workers
    re-gathering from each other (dask/distributed#4907; here one test run in six). A task
    whose spec holds the value runs on one worker; the others fetch its result as any
    dependency, and should every holder die the scheduler runs it again from the spec
    (scattered data would be lost with its worker).
    """
    import dask

    # The value travels in the graph on purpose (once, to the scheduler): no "large graph"
    # advice to scatter it instead.
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1 PiB"}):
        return client.submit(_identity, value, pure=False)


def _identity(value: Any) -> Any:
    return value


def _range_parts(
    client: Any, inputs: Mapping[str, Any], ranges: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """What each range task gets per input: a source the worker opens, or the range itself
    (in-memory arrays scattered, dask arrays computed on the workers)."""
    out: list[dict[str, Any]] = [{} for _ in ranges]
    for name, array in inputs.items():
        source = _source(array)
        if source is not None:
            for part in out:
                part[name] = source
        elif _is_dask(array):
            for part, (a, b) in zip(out, ranges):
                part[name] = client.compute(array[a:b])
        else:
            slices = [np.ascontiguousarray(array[a:b]) for a, b in ranges]
            for part, future in zip(out, client.scatter(slices, hash=False)):
                part[name] = future
    return out


def _follow(
    distributed: Any,
    futures: Sequence[Any],
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    progress: bool | None,
) -> None:
    """Wait for every range, advancing a progress bar by its batches; on a failure, raise
    the error of the earliest range that failed (as one process would meet it first)."""
    index = {f.key: i for i, f in enumerate(futures)}
    with progress_bar(-(-ranges[-1][1] // batch_size), progress) as bar:
        for future in distributed.as_completed(futures):
            if future.status == "error":
                first = index[future.key]
                for later in futures[first + 1 :]:
                    later.cancel()
                distributed.wait(futures[:first])
                failed = [f for f in futures[: first + 1] if f.status == "error"]
                raise _error(failed[0], ranges[index[failed[0].key]])
            a, b = ranges[index[future.key]]
            bar.update(-(-(b - a) // batch_size))


def _error(future: Any, samples: tuple[int, int]) -> BaseException:
    """The error of a failed range: its own OnnxStateError, or one line for a lost worker."""
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        return ModelError(
            f"the workers running samples {samples[0]}..{samples[1]} died each time (out of "
            "memory, or a crash in onnxruntime); run those samples in one process to see why"
        )
    return exc  # type: ignore[no-any-return]
