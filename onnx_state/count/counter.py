"""Streaming counter of firing states: validation and layouts around the Cython kernel.

A neuron fires iff its value is > 0 (NaN never fires and is counted in ``nan_count``); an
integer neuron fires iff its value is > its zero point (0 unless the counter has one), in
integer arithmetic. Every index combination other than the neuron axis is one state; a
state is packed least-significant bit first, neuron ``8*j + i`` being bit ``i`` of byte
``j``, which is ``np.packbits(bits, bitorder='little')``. Bits packed that way beforehand
(e.g. inside the model's graph) are counted as they are (``packed=True``).
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from onnx_state import store

try:
    from onnx_state.count._counter import DENSE_NEURONS, KERNEL_DTYPES, StateTable
except ModuleNotFoundError as exc:  # a source tree without the built extension
    from onnx_state.errors import MissingExtraError

    here = Path(__file__).resolve().parent
    raise MissingExtraError(
        f"onnx_state's compiled state counter is not built in {here}: Python is importing "
        "the source tree (it shadows an installed onnx_state when run from the repository "
        "folder). Build it in place with `pip install -e .`, or run from another folder"
    ) from exc
from onnx_state.errors import ArgumentError, DTypeError, InputError

if sys.byteorder != "little":  # the kernel's words are read back as little-endian bytes
    raise ImportError("onnx_state's state counter needs a little-endian machine")

__all__ = [
    "DENSE_NEURONS",
    "StateCounter",
    "ids_from_words",
    "kernel_view",
    "packed_view",
    "sort_states",
    "width_mismatch",
]

# dtype accepted -> dtype the kernel reads (bool as bytes); native byte order only
_KERNEL_DTYPES = {dt: np.dtype(np.uint8) if dt == np.bool_ else dt for dt in KERNEL_DTYPES}
_DTYPE_NAMES = "float16/32/64, bool, int8/16/32/64 or uint8/16/32"

ZeroPoint = int | np.ndarray  # one threshold, or one per neuron

# A hash table is still cut into per-thread shards while it holds at most this much (some
# 30,000 states of up to 64 neurons, 16,000 of 256): every thread may keep a shard of that
# size (and up to one batch more) per layer, merged once at the end.
SHARD_TABLE_BYTES = 1 << 20


def kernel_view(x: Any, axis: int) -> np.ndarray:
    """Return *x* as a (outer, neurons, inner) array the kernel reads, a view where possible.

    Raises DTypeError for other dtypes and InputError for a rank below 2 or a bad axis.
    """
    x, axis = _checked(x, axis)
    kdt = _KERNEL_DTYPES.get(x.dtype)
    if kdt is None:
        raise DTypeError(f"cannot count states of a {x.dtype} tensor; use {_DTYPE_NAMES}")
    return _three_axes(x.view(kdt), axis)


def packed_view(x: Any, axis: int, n_bytes: int) -> np.ndarray:
    """Return packed bytes *x* as a (outer, n_bytes, inner) uint8 array, a view where possible.

    Raises DTypeError unless *x* is uint8, InputError for a bad axis or a byte count
    other than *n_bytes* along it.
    """
    x, axis = _checked(x, axis)
    if x.dtype != np.uint8:
        raise DTypeError(
            f"packed states are uint8 bytes (np.packbits), not {x.dtype}; count an "
            "unpacked tensor with a counter made without packed=True"
        )
    if x.shape[axis] != n_bytes:
        raise InputError(
            f"a packed state of {8 * n_bytes - 7}..{8 * n_bytes} neurons is {n_bytes} bytes, "
            f"but the batch has {x.shape[axis]} along axis {axis}; pack the neuron axis with "
            "np.packbits(bitorder='little')"
        )
    return _three_axes(x, axis)


def _checked(x: Any, axis: Any) -> tuple[np.ndarray, int]:
    """*x* as an array of rank >= 2 and *axis* as its non-negative neuron axis (not 0)."""
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"cannot count states of this data: {' '.join(str(exc).split())}"
        ) from None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise InputError(f"the neuron axis must be an integer, got {axis!r}")
    axis = int(axis)
    if x.ndim < 2:
        raise InputError(
            f"a captured tensor needs rank >= 2 (samples and neurons), got shape {x.shape}"
        )
    if not -x.ndim <= axis < x.ndim:
        raise InputError(f"neuron axis {axis} is out of range for shape {x.shape}")
    axis %= x.ndim
    if axis == 0:
        raise InputError("the neuron axis cannot be axis 0, the sample (batch) axis")
    return x, axis


def _three_axes(x: np.ndarray, axis: int) -> np.ndarray:
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    x3 = x.reshape(outer, x.shape[axis], inner)  # a view unless strides forbid it
    if inner == 1 and outer > 1:
        # Neurons last: make the samples the inner loop so blocks span many states.
        x3 = x3[:, :, 0].T[None]
    return np.asarray(x3)


def _zero_point(value: Any) -> ZeroPoint | None:
    """A zero point as given, checked: None, an int, or a 1-D int64 array (one per neuron)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"a zero point is an integer or one integer per neuron, not {value!r}")
    try:
        z = np.asarray(value)
    except (ValueError, TypeError):
        z = np.asarray(None)
    if z.dtype.kind not in "iu" or z.ndim > 1 or z.size == 0:
        raise InputError(
            f"a zero point is an integer or a 1-D array of integers (one per neuron), not "
            f"{' '.join(repr(value).split())[:80]}"
        )
    if z.dtype == np.uint64 and int(z.max()) > np.iinfo(np.int64).max:
        raise InputError(f"zero point {int(z.max())} is out of range for any counted dtype")
    if z.ndim == 0:
        return int(z)
    return np.array(z, dtype=np.int64)


def sort_states(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort (uint64 words, counts) ascending by the integer sum(bit_c * 2**c)."""
    if len(keys) == 0:
        return keys, counts
    # Keys are unique, so one unstable (SIMD) argsort is exact for one word; np.lexsort
    # sorts by the last key first, which is the top word.
    if keys.shape[1] == 1:
        if np.all(keys[1:, 0] > keys[:-1, 0]):  # dense tables export in order
            return keys, counts
        order = np.argsort(keys[:, 0])
    else:
        order = np.lexsort(keys.T)
    return keys[order], counts[order]


class StateCounter:
    """Count the firing states of one layer, batch after batch, in bounded memory.

    Parameters
    ----------
    neurons:
        Number of neurons; taken from the first batch when None.
    record:
        Keep every packed state in order as well (TensorState's ``raw_states``): ``True``
        for an in-memory zarr array, or a directory path for an on-disk zarr array.
    compressor:
        ``"blosc"`` (lz4, bit-shuffled) or ``"zstd"`` for the recorded states.
    chunk_states:
        Recorded states per zarr chunk.
    zero_point:
        Integer tensors only: a neuron fires iff its value is > its zero point (compared as
        integers, never converted to float). One int for the whole tensor, or a 1-D array
        of one per neuron (per-channel quantization along the neuron axis); it must fit the
        batches' dtype. None (the default) is 0, as for int32 accumulators. Fixed for the
        counter's lifetime; counters with different zero points refuse to merge.
    packed:
        Batches are firing bits already packed along the neuron axis, uint8 bytes as
        ``np.packbits(bits, axis, bitorder='little')`` gives them (``neurons`` is then
        required). Pad bits above the last neuron are ignored, as
        ``np.unpackbits(count=neurons)`` ignores them. The bytes show no NaN:
        ``nan_count`` adds what ``update_packed(nan_count=...)`` is told. The states are
        the same as those of the unpacked tensor, so such counters merge with others.

    One table, a lock, no threads of its own: to count on several threads, use
    ``onnx_state.count.count_states`` or ``ParallelCounting``, which cut batches into
    shards (see ``shardable``) and merge them exactly.
    """

    def __init__(
        self,
        neurons: int | None = None,
        *,
        record: bool | str | Path = False,
        compressor: str = "blosc",
        chunk_states: int = 1 << 16,
        zero_point: int | np.ndarray | None = None,
        packed: bool = False,
    ) -> None:
        if compressor not in ("blosc", "zstd"):
            raise InputError(f"unknown compressor {compressor!r}; use 'blosc' or 'zstd'")
        if chunk_states < 1:
            raise InputError(f"chunk_states must be positive, got {chunk_states}")
        if packed and neurons is None:
            raise InputError(
                "packed states do not say how many neurons they hold; give neurons= as well"
            )
        self._zero_point = _zero_point(zero_point)
        if packed and self._zero_point is not None:
            raise InputError(
                "packed bits are already thresholded; a zero point applies to unpacked "
                "integer tensors (give zero_point= or packed=True, not both)"
            )
        self._packed = bool(packed)
        self._record = record
        self._compressor = compressor
        self._chunk_states = int(chunk_states)
        self._table: StateTable | None = None
        self._raw: Any = None
        # Per-neuron thresholds once the width is known (None: all 0), and their copies in
        # each integer dtype seen, as the kernel reads them.
        self._thresholds: np.ndarray | None = None
        self._typed_thresholds: dict[np.dtype[Any], np.ndarray] = {}
        # The kernel releases the GIL and shares one table and scratch buffer per counter:
        # one update at a time (torch hooks may fire from several threads).
        self._lock = threading.RLock()
        if neurons is not None:
            self._start(int(neurons))

    def _start(self, neurons: int) -> StateTable:
        if neurons < 1:
            raise InputError(f"a layer needs at least one neuron, got {neurons}")
        self._thresholds = _thresholds(self._zero_point, neurons)
        self._table = StateTable(neurons)
        if self.records:
            self._raw = store.open_raw_states(
                self._record, self.n_bytes, self._compressor, self._chunk_states
            )
        return self._table

    @classmethod
    def from_states(
        cls,
        ids: np.ndarray,
        counts: np.ndarray,
        neurons: int,
        nan_count: int = 0,
        *,
        zero_point: int | np.ndarray | None = None,
        packed: bool = False,
    ) -> StateCounter:
        """A counter holding these states (uint8 rows as ``state_ids()`` gives them) and
        counts, e.g. read back from a results store, that goes on counting batches with
        this *zero_point* and *packed* (see the class)."""
        counter = cls(neurons, zero_point=zero_point, packed=packed)
        assert counter._table is not None
        words = np.zeros((len(ids), counter._table.nwords), dtype=np.uint64)
        words.view(np.uint8)[:, : counter.n_bytes] = np.asarray(ids, dtype=np.uint8)
        counter._table.add_counts(words, np.ascontiguousarray(counts, np.int64), nan_count)
        return counter

    # -- counting ---------------------------------------------------------------------------
    def update(self, x: Any, axis: int = 1) -> StateCounter:
        """Count the states of one captured batch *x* whose neurons lie along *axis*
        (packed bytes along it when the counter was made with ``packed=True``)."""
        if self._packed:
            return self.update_packed(x, axis)
        x3 = kernel_view(x, axis)
        with self._lock:
            table = self._table
            if table is None:
                table = self._start(x3.shape[1])
            elif x3.shape[1] != table.neurons:
                raise width_mismatch(table.neurons, x3.shape[1], axis)
            zp = None if self._thresholds is None else self._typed(x3.dtype, np.asarray(x).dtype)
            self._add(x3, lambda rec: table.add(x3, rec, zp))
        return self

    def update_packed(
        self, packed: Any, axis: int = 1, neurons: int | None = None, nan_count: int = 0
    ) -> StateCounter:
        """Count the states of a batch of packed firing bits: uint8 bytes along *axis*,
        neuron ``8*j + i`` being bit ``i`` of byte ``j`` (``np.packbits(bits, axis,
        bitorder='little')``), ceil(neurons / 8) of them. Pad bits are ignored.

        The states, ids and counts are exactly those ``update`` gives for the unpacked bits.
        *neurons* is needed only by a counter that has not seen a batch yet. Bytes show no
        NaN: *nan_count*, the NaN values of the unpacked batch as whoever packed it counted
        them, is added to ``nan_count`` (an empty batch may carry it alone).
        """
        if isinstance(nan_count, bool) or not isinstance(nan_count, (int, np.integer)):
            raise InputError(f"nan_count must be an integer, got {nan_count!r}")
        if nan_count < 0:
            raise InputError(f"nan_count must be non-negative, got {nan_count}")
        if neurons is not None and self._table is not None and neurons != self.neurons:
            raise width_mismatch(self.neurons, int(neurons), axis)
        if self._table is None and neurons is None:
            raise InputError(
                "packed states do not say how many neurons they hold; give neurons= (or "
                "make the counter with neurons=)"
            )
        if self._zero_point is not None:
            raise InputError(
                "this counter has a zero point, for unpacked integer tensors; packed bits "
                "are already thresholded: count them with a counter without zero_point="
            )
        with self._lock:
            table = self._table if self._table is not None else self._start(int(neurons or 0))
            x3 = packed_view(packed, axis, self.n_bytes)
            self._add(x3, lambda rec: table.add_packed(x3, rec, int(nan_count)))
        return self

    def _add(self, x3: np.ndarray, add: Any) -> None:
        """Run *add*(record buffer or None) on the kernel, recording the states if asked."""
        if self._raw is None:
            add(None)
            return
        assert self._table is not None
        buf = np.empty((x3.shape[0] * x3.shape[2], self._table.nwords), dtype=np.uint64)
        add(buf)
        if len(buf):
            self._raw.append(buf.view(np.uint8)[:, : self.n_bytes], axis=0)

    def _typed(self, kdt: np.dtype[Any], dtype: np.dtype[Any]) -> np.ndarray | None:
        """The per-neuron zero points in the kernel's dtype *kdt* for batches of *dtype*
        (None: all 0)."""
        if self._thresholds is None:
            return None
        if dtype.kind not in "iu":
            raise DTypeError(
                f"this counter has zero point {describe_zero_point(self._zero_point)}, which "
                f"applies to integer tensors; this batch is {dtype} (count it with a counter "
                "without zero_point=)"
            )
        typed = self._typed_thresholds.get(kdt)
        if typed is None:
            info = np.iinfo(kdt)
            low, high = int(self._thresholds.min()), int(self._thresholds.max())
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise InputError(
                    f"zero point {bad} is out of range for {dtype} ({info.min}..{info.max}); "
                    "give the zero point of this tensor, in its own dtype"
                )
            typed = self._typed_thresholds[kdt] = self._thresholds.astype(kdt)
        return typed

    def merge(self, other: StateCounter) -> StateCounter:
        """Add *other*'s counts (and recorded states, appended after ours) to this counter."""
        if not isinstance(other, StateCounter):
            raise ArgumentError(f"can only merge a StateCounter, not {type(other).__name__}")
        if other._table is None:
            return self
        if self._table is not None and other.neurons != self.neurons:
            raise InputError(
                f"cannot merge a {other.neurons}-neuron counter into a {self.neurons}-neuron one"
            )
        mine = _thresholds(self._zero_point, other.neurons)
        if not _same_thresholds(mine, other._thresholds):
            raise InputError(
                "cannot merge counters with different zero points "
                f"({describe_zero_point(other._zero_point)} into "
                f"{describe_zero_point(self._zero_point)}): their neurons fire at different "
                "thresholds (make both with the same zero_point=)"
            )
        if self._record and other._raw is None:
            raise InputError(
                "this counter records states but the other does not; recorded states would no "
                "longer match state_count (merge into a counter without record=...)"
            )
        with other._lock:
            # In another table's slot order, keys re-insert clustered (14x slower on hash
            # tables); sorted they spread.
            keys, counts = sort_states(*other._table.export())
            raw = other._raw[:] if self._record and other._raw.shape[0] else None
            nans = other._table.nan_count
        with self._lock:
            table = self._table if self._table is not None else self._start(other.neurons)
            table.add_counts(keys, counts, nans)
            if raw is not None:
                self._raw.append(raw, axis=0)
        return self

    def reset(self) -> None:
        """Forget every state seen so far (recorded states too)."""
        with self._lock:
            neurons = self.neurons if self._table is not None else None
            self._table = None
            self._raw = None
            if neurons is not None:
                if isinstance(self._record, (str, Path)):
                    store.remove_raw_states(Path(self._record))
                self._start(neurons)

    def empty_copy(self) -> StateCounter:
        """A new counter of this layer, with no states: the same neurons (if known), zero
        point and input (``packed``), not recording. For shards merged back into this one."""
        return StateCounter(self.neurons or None, zero_point=self._zero_point, packed=self._packed)

    # -- results ----------------------------------------------------------------------------
    @property
    def neurons(self) -> int:
        """Neurons in the layer (0 before the first batch)."""
        return 0 if self._table is None else self._table.neurons

    @property
    def zero_point(self) -> int | np.ndarray | None:
        """The zero point as given (an int, or one int64 per neuron), or None."""
        z = self._zero_point
        return z.copy() if isinstance(z, np.ndarray) else z

    @property
    def packed(self) -> bool:
        """Whether ``update`` takes packed bits (see the class)."""
        return self._packed

    @property
    def records(self) -> bool:
        """Whether every state is also recorded in order (then batches cannot be split)."""
        return self._record is not False and self._record is not None

    @property
    def shardable(self) -> bool:
        """Whether a batch may be cut by samples into shards counted apart and merged.

        Recorded states must stay in order, so a recording counter is never cut.
        """
        return not self.records

    @property
    def shards_cheaply(self) -> bool:
        """Whether shards are cheap enough to cut every batch: a dense table (at most
        DENSE_NEURONS neurons) merges in one pass over a fixed array; a hash table's shards
        each grow towards all of its distinct states, so a hash table is cut only while it
        holds at most SHARD_TABLE_BYTES (1 MiB): a shard then costs little memory (up to
        one more batch of states), and wide layers with repeating states (MatMul outputs)
        still count on every thread."""
        if not self.shardable or self._table is None:
            return False
        return self.neurons <= DENSE_NEURONS or self._table.nbytes <= SHARD_TABLE_BYTES

    @property
    def n_bytes(self) -> int:
        """Bytes per packed state: ceil(neurons / 8)."""
        return (self.neurons + 7) // 8

    @property
    def state_count(self) -> int:
        """All states observed, repeats included."""
        with self._lock:
            return 0 if self._table is None else int(self._table.state_count)

    @property
    def nan_count(self) -> int:
        """NaN values seen (each counted as not firing)."""
        with self._lock:
            return 0 if self._table is None else int(self._table.nan_count)

    @property
    def n_unique(self) -> int:
        """Distinct states observed."""
        with self._lock:
            return 0 if self._table is None else int(self._table.n_unique)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._table is None:
                return np.empty((0, 1), np.uint64), np.empty(0, np.int64)
            exported = self._table.export()
        return sort_states(*exported)

    def counts(self) -> np.ndarray:
        """Occurrences of each observed state (int64), in ``state_ids`` order."""
        return self._sorted()[1]

    def state_ids(self) -> np.ndarray:
        """Observed states as uint8 rows [n_unique, n_bytes], ascending by the
        little-endian integer sum(bit_c * 2**c)."""
        return ids_from_words(self._sorted()[0], self.n_bytes)

    def state_bytes(self) -> list[bytes]:
        """The rows of ``state_ids()`` as bytes (TensorState's form)."""
        return [row.tobytes() for row in self.state_ids()]

    def state_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(state_ids, counts) from one sort, for callers that need both."""
        keys, counts = self._sorted()
        return ids_from_words(keys, self.n_bytes), counts

    def table_words(self) -> tuple[np.ndarray, np.ndarray]:
        """(states as uint64 words [n, nwords], counts [n]) in no particular order: a
        snapshot without the sort (see results.States.deferred)."""
        with self._lock:
            if self._table is None:
                return np.empty((0, 1), np.uint64), np.empty(0, np.int64)
            return self._table.export()

    @property
    def raw_states(self) -> Any:
        """Recorded packed states as a zarr array [state_count, n_bytes], or None."""
        return self._raw

    def states(self) -> np.ndarray:
        """Recorded states unpacked to bool [state_count, neurons] (needs ``record``)."""
        if self._raw is None:
            if self._record:
                return np.zeros((0, self.neurons), dtype=bool)
            raise InputError("states were not recorded; create the counter with record=True")
        packed = np.asarray(self._raw[:])
        return np.unpackbits(packed, axis=1, count=self.neurons, bitorder="little").astype(bool)

    # -- pickling (for workers) -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # Recorded states travel inside the pickle, and the copy records in memory: two
        # counters appending to one on-disk array would corrupt it.
        with self._lock:
            keys, counts = (None, None) if self._table is None else self._table.export()
            raw = None if self._raw is None else np.asarray(self._raw[:])
        return {
            "record": bool(self._record),
            "compressor": self._compressor,
            "chunk_states": self._chunk_states,
            "neurons": self.neurons or None,
            "keys": keys,
            "counts": counts,
            "state_count": self.state_count,
            "nan_count": self.nan_count,
            "raw": raw,
            "zero_point": self._zero_point,
            "packed": self._packed,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._record = state["record"]
        self._compressor = state["compressor"]
        self._chunk_states = state["chunk_states"]
        self._table = None
        self._raw = None
        self._lock = threading.RLock()
        self._zero_point = _zero_point(state.get("zero_point"))
        self._packed = bool(state.get("packed", False))
        self._thresholds = None
        self._typed_thresholds = {}
        if state["neurons"] is None:
            return
        self._thresholds = _thresholds(self._zero_point, state["neurons"])
        self._table = StateTable(state["neurons"])
        keys, counts = sort_states(state["keys"], state["counts"])  # (see merge)
        self._table.add_counts(keys, counts, state["nan_count"])
        if self._record:
            self._raw = store.open_raw_states(
                True, self.n_bytes, self._compressor, self._chunk_states
            )
            if state["raw"] is not None and len(state["raw"]):
                self._raw.append(state["raw"], axis=0)

    def __repr__(self) -> str:
        return (
            f"StateCounter(neurons={self.neurons}, state_count={self.state_count}, "
            f"n_unique={self.n_unique})"
        )


def _thresholds(zero_point: ZeroPoint | None, neurons: int) -> np.ndarray | None:
    """One int64 threshold per neuron, or None when every one is 0."""
    if zero_point is None:
        return None
    if isinstance(zero_point, np.ndarray) and len(zero_point) != neurons:
        raise InputError(
            f"the zero point has {len(zero_point)} values but the layer has {neurons} "
            "neurons; give one per neuron along the neuron axis, or one int"
        )
    thresholds = np.broadcast_to(np.asarray(zero_point, np.int64), (neurons,))
    return None if not thresholds.any() else np.ascontiguousarray(thresholds)


def _same_thresholds(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def describe_zero_point(zero_point: ZeroPoint | None) -> str:
    """A zero point in a few words, for messages."""
    if zero_point is None:
        return "0"
    if isinstance(zero_point, np.ndarray):
        head = ", ".join(str(int(v)) for v in zero_point[:4])
        more = ", ..." if len(zero_point) > 4 else ""
        return f"[{head}{more}] (per neuron)"
    return str(zero_point)


def width_mismatch(neurons: int, got: int, axis: int) -> InputError:
    """The error for a batch whose neuron axis is not the layer's width."""
    return InputError(
        f"this counter has {neurons} neurons but the batch has {got} along axis {axis}; "
        "use one counter per layer and the same neuron axis"
    )


def ids_from_words(words: np.ndarray, n_bytes: int) -> np.ndarray:
    """uint64 state words [n, nwords] -> uint8 rows [n, n_bytes] (little-endian bytes)."""
    return np.ascontiguousarray(words.view(np.uint8)[:, :n_bytes])
