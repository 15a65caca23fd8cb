"""Data in: input specs, array files, batches checked against the model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnx_state.errors import InputError, ModelError, OnnxStateError, did_you_mean

# Decoded bytes of one storage chunk that an input read in batches may keep (see _Blocks).
BLOCK_BYTES = 128 << 20

__all__ = [
    "BLOCK_BYTES",
    "DEFAULT_BATCH_SIZE",
    "InputSpec",
    "Rows",
    "as_inputs",
    "batch_count",
    "batch_samples",
    "check_batch",
    "check_constants",
    "check_inputs",
    "data_length",
    "data_specs",
    "input_specs",
    "iter_batches",
    "load_array",
    "load_data",
    "open_data",
    "resolve_batch_size",
    "storage_chunking",
]


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (None or a string for free dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    @property
    def batch(self) -> int | None:
        """The fixed size of the batch axis (axis 0), or None when it is free."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


def input_specs(model: ModelProto) -> list[InputSpec]:
    """Graph inputs that are fed at run time (initializers excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise ModelError(
                f"input {vi.name!r} is not a tensor of a type onnx_state can feed (elem type "
                f"{tt.elem_type}); only tensor inputs are supported"
            ) from None
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def _split_key(source: str | os.PathLike[str], key: str | None) -> tuple[Path, str | None]:
    """``PATH:KEY`` into (PATH, KEY) unless the whole text names an existing file."""
    text = os.fspath(source)
    if key is None and ":" in text and not Path(text).exists():
        text, key = text.rsplit(":", 1)
    path = Path(text)
    if not path.exists():
        raise InputError(f"data file {text!r} does not exist")
    if key is not None and path.suffix == ".npy":
        raise InputError(f"{path} holds one array; drop ':{key}'")
    return path, key


def load_array(source: str | os.PathLike[str], key: str | None = None) -> Any:
    """Open one array of ``.npy`` (memory-mapped), ``.npz`` or zarr data, unpickling nothing.

    ``path.npz:key`` (or *key*) picks one array of an npz file or a zarr group.
    """
    path, key = _split_key(source, key)
    found = _load(path, key)
    if isinstance(found, dict):
        raise InputError(f"{path} holds {', '.join(found)}; pick one as {path}:NAME")
    return found


def load_data(source: str | os.PathLike[str]) -> Any:
    """A data file: one array, or a dict of arrays by name for an ``.npz`` file or a zarr
    group that holds several (one per model input); ``PATH:KEY`` picks one array."""
    path, key = _split_key(source, None)
    return _load(path, key)


def _load(path: Path, key: str | None) -> Any:
    """The array *key* of *path*, its only array, or (several and no key) a dict of them."""
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.suffix == ".npz":
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise InputError(f"{path} is not an .npz archive (it holds one .npy array)")
            with loaded as npz:
                if key is None:
                    if len(npz.files) == 1:
                        return npz[npz.files[0]]
                    return {name: npz[name] for name in npz.files}
                if key not in npz.files:
                    raise InputError(
                        f"{path} has no array {key!r}; it holds {', '.join(npz.files)}"
                    )
                return npz[key]
        if path.is_dir():
            import zarr

            node: Any = zarr.open(str(path), mode="r")
            if key is not None:
                if hasattr(node, "dtype") or key not in node:
                    held = [] if hasattr(node, "dtype") else sorted(node.array_keys())
                    raise InputError(
                        f"{path} has no array {key!r}; it holds {', '.join(held) or 'none'}"
                    )
                node = node[key]
            if hasattr(node, "dtype"):
                return node
            arrays = {name: a for name, a in node.arrays()}
            if not arrays:
                raise InputError(f"{path} is a zarr group without arrays")
            return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    except OnnxStateError:
        raise
    except Exception as exc:  # numpy, zipfile, zlib and zarr raise many kinds on bad files
        why = " ".join(str(exc).split()) or type(exc).__name__
        objects = any(w in why.lower() for w in ("pickle", "python objects", "object"))
        hint = " (object arrays are refused)" if objects else ""
        raise InputError(f"cannot read {path}: {why}{hint}") from None
    raise InputError(f"unsupported data file {path}; use .npy, .npz or a zarr directory")


def as_inputs(data: Any, names: Sequence[str]) -> Mapping[str, Any] | None:
    """*data* as arrays by input name (one array for a one-input model, or a dict of them),
    or None when it is not in that form (an iterable of batches). *names*: batched inputs."""
    if isinstance(data, Mapping):
        return data
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        if len(names) != 1:
            raise InputError(
                f"the model has {len(names)} inputs ({', '.join(names)}); pass a dict of "
                "arrays by input name (CLI: --data NAME=PATH per input, or an .npz / zarr "
                "group with one array per input), and inputs shared by every sample (states, "
                "scalars) as constants (constants= / --const)"
            )
        return {names[0]: data}
    return None


def open_data(data: Any) -> Any:
    """Paths become arrays: a path its array or dict of arrays (see load_data), and each
    path in a dict its array (see load_array); anything else is returned as it is."""
    if isinstance(data, (str, os.PathLike)):
        return load_data(data)
    if isinstance(data, Mapping):
        return {
            k: load_array(v) if isinstance(v, (str, os.PathLike)) else v for k, v in data.items()
        }
    return data


def data_specs(specs: Sequence[InputSpec], constants: Mapping[str, Any]) -> list[InputSpec]:
    """The inputs fed batch by batch: every input that is not a constant."""
    return [s for s in specs if s.name not in constants]


def check_constants(
    constants: Mapping[str, Any] | None, specs: Sequence[InputSpec]
) -> dict[str, np.ndarray]:
    """Constant inputs (fed whole with every batch) as arrays checked against the model.

    A value is an array, a path (see load_array), or a Python number, which takes the
    input's dtype when it is exactly representable there. Every problem is reported at once.
    """
    if not constants:
        return {}
    expected = {s.name: s for s in specs}
    problems = []
    out: dict[str, np.ndarray] = {}
    for name, value in constants.items():
        spec = expected.get(name)
        if spec is None:
            problems.append(
                f"constant {name!r} is not a model input (it takes {', '.join(expected)})."
                + did_you_mean(name, expected)
            )
            continue
        if isinstance(value, (str, os.PathLike)):
            value = load_array(value)
        if isinstance(value, (bool, int, float)):
            try:
                with np.errstate(all="ignore"):
                    array = np.asarray(value, dtype=spec.dtype)
                exact = spec.dtype.kind == "f" or array.item() == value
            except (OverflowError, ValueError):
                exact = False
            if not exact:
                problems.append(
                    f"constant {name!r} = {value!r} does not fit the model's {spec.dtype}"
                )
                continue
        else:
            array = np.asarray(value)  # (ascontiguousarray would make a 0-d array 1-d)
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
        if array.ndim != len(spec.shape) or any(
            isinstance(want, int) and want > 0 and d != want
            for d, want in zip(array.shape, spec.shape)
        ):
            problems.append(
                f"constant {name!r} has shape {array.shape} but the model expects "
                f"{_fmt(spec.shape)} (a constant is fed whole, batch axis included)"
            )
        if array.dtype != spec.dtype:
            problems.append(
                f"constant {name!r} is {array.dtype} but the model expects {spec.dtype} "
                f"(convert with .astype(np.{spec.dtype.name}))"
            )
        out[name] = array
    if problems:
        raise InputError("; ".join(problems))
    return out


DEFAULT_BATCH_SIZE = 200


def resolve_batch_size(
    batch_size: int | None, specs: Sequence[InputSpec], n_samples: int | None = None
) -> int:
    """The batch size to run: *batch_size*, else the inputs' fixed batch dimension, else 200.

    *specs* are the batched inputs; a size that contradicts a fixed batch dimension, and a
    sample count that leaves a last batch of another size, are refused.
    """
    fixed = {s.name: s.batch for s in specs if s.batch is not None}
    if len(set(fixed.values())) > 1:
        raise InputError(f"the model's inputs fix different batch sizes: {fixed}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if not fixed:
        return DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    name, size = next(iter(fixed.items()))
    if batch_size is not None and batch_size != size:
        raise InputError(
            f"input {name!r} has a fixed batch dimension of {size}, so batches must hold "
            f"{size} samples; use batch size {size} (or leave it out), got {batch_size}"
        )
    if n_samples is not None and n_samples % size:
        raise InputError(
            f"input {name!r} has a fixed batch dimension of {size}, but {n_samples} samples "
            f"leave a last batch of {n_samples % size}; give a multiple of {size} samples"
        )
    return size


def _length(array: Any) -> int:
    return int(array.shape[0]) if hasattr(array, "shape") else len(array)


def data_length(data: Any, specs: Sequence[InputSpec]) -> int | None:
    """Samples in *data* (opened; the batched inputs' *specs*), when known up front."""
    mapping = as_inputs(data, [s.name for s in specs])
    if mapping is None:
        return None
    if not mapping:
        raise InputError("the data dict is empty; give one array per model input")
    first = next(iter(mapping.values()))
    if getattr(first, "ndim", 1) == 0:
        raise InputError("a 0-d array cannot be split into samples; pass it as a constant instead")
    return _length(first)


def check_inputs(data: Any, specs: Sequence[InputSpec], constants: Mapping[str, Any] = {}) -> None:
    """Check the names, ranks, sample shapes and dtypes of opened *data* (one array or a dict
    of arrays; iterables are checked batch by batch) against all model inputs *specs*."""
    names = [s.name for s in specs if s.name not in constants]
    mapping = as_inputs(data, names)
    if mapping is None:
        return
    if not mapping:
        raise InputError("the data dict is empty; give one array per model input")
    both = sorted(set(mapping) & set(constants))
    if both:
        raise InputError(
            f"input(s) {', '.join(both)} given both as data and as constant(s); give each once"
        )
    for k, v in mapping.items():
        if getattr(v, "ndim", 1) == 0:
            raise InputError(
                f"input {k!r} is a 0-d array, which cannot be split into samples; pass it "
                "as a constant instead (constants= / --const)"
            )
    check_batch({k: _head(v) for k, v in mapping.items()}, specs, constants, head=True)


def batch_count(data: Any, specs: Sequence[InputSpec], batch_size: int) -> int | None:
    """Number of batches iter_batches will yield, when known up front."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    data = open_data(data)
    n = data_length(data, specs)
    if n is None:
        return len(data) if hasattr(data, "__len__") else None
    return -(-n // batch_size)


def batch_samples(batch: Mapping[str, np.ndarray], constants: Mapping[str, Any] = {}) -> int:
    """Samples in one batch: the length of its first batched input."""
    return next(len(v) for k, v in batch.items() if k not in constants)


def iter_batches(
    data: Any,
    specs: Sequence[InputSpec],
    batch_size: int,
    constants: Mapping[str, np.ndarray] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield checked input dicts from arrays, dicts of arrays, or an iterable of batches.

    *specs* are all model inputs; *constants* (from check_constants) join every batch.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    constants = dict(constants or {})
    batched = data_specs(specs, constants)
    names = [s.name for s in batched]
    data = open_data(data)
    mapping = as_inputs(data, names)
    if mapping is not None:
        check_inputs(mapping, specs, constants)
        lengths = {k: _length(v) for k, v in mapping.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"inputs differ in length: {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise InputError("the data holds no samples")
        readers = {k: _Blocks(v, n) for k, v in mapping.items()}
        for start in range(0, n, batch_size):
            rows = slice(start, min(n, start + batch_size))
            batch = {k: r.read(rows) for k, r in readers.items()}
            yield {**batch, **constants}
        return
    if not isinstance(data, Iterable):
        raise InputError(
            f"cannot read data of type {type(data).__name__}; pass an array, a dict of arrays, "
            "a .npy/.npz/zarr path or an iterable of batches"
        )
    empty = True
    for item in data:
        given = as_inputs(item, names)
        if given is None:
            raise InputError(
                f"a batch must be an array or a dict of arrays, got {type(item).__name__}"
            )
        # A copy: iterators may refill one buffer while this batch is still being counted.
        batch = {k: np.array(v, order="C", copy=True) for k, v in given.items()}
        check_batch(batch, specs, constants)
        if len(next(iter(batch.values()), ())) == 0:
            continue  # an empty batch holds no states
        empty = False
        yield {**batch, **constants}
    if empty:
        raise InputError("the data holds no batches (or only empty ones)")


def _head(array: Any) -> np.ndarray:
    """First sample with its batch axis, enough to check names, ranks, shapes and dtypes."""
    return _read(array, slice(0, 1))


def _read(array: Any, rows: slice, batch: slice | None = None) -> np.ndarray:
    """Rows of an array-like (numpy, memory-mapped, zarr) as a C-contiguous array; a
    corrupt chunk or file is one InputError naming the samples of *batch* (default: *rows*)."""
    try:
        return np.ascontiguousarray(array[rows])
    except OnnxStateError:
        raise
    except Exception as exc:  # zarr codecs and numpy memmaps raise their own kinds
        why = " ".join(str(exc).split()) or type(exc).__name__
        named = rows if batch is None else batch
        raise InputError(
            f"cannot read samples {named.start}..{named.stop} of the data: {why}"
        ) from None


def storage_chunking(array: Any) -> tuple[int, int] | None:
    """(samples per storage chunk, where a chunk starts) of an array stored in chunks along
    its sample axis (zarr, h5py), or None for arrays read at any row at the same cost.

    An array-like may say it itself with a ``sample_chunking()`` method (a window onto a
    chunked array does: its chunks start off its own row 0).
    """
    own = getattr(array, "sample_chunking", None)
    if callable(own):
        return own()  # type: ignore[no-any-return]
    chunks = getattr(array, "chunks", None)  # (a dask array's are tuples of tuples)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], (int, np.integer)):
        return int(chunks[0]), 0
    return None


class _Blocks:
    """One input read batch after batch, in order.

    A chunked array decodes a whole storage chunk for any read inside it, so reading it
    batch by batch decoded each chunk once per batch (a chunk of 2,000 samples read in
    batches of 200: ten times, 1.4 s of an 8 s LeNet-5 run over 50,000 zarr samples).
    This reads the chunks a batch touches once, keeps them and serves the next batches
    from them (copies, so that a batch still being counted does not keep a whole block
    alive); a batch across a chunk edge joins the kept tail with the next chunks. It holds
    at most one chunk plus one batch, and reads batch by batch when one chunk would exceed
    BLOCK_BYTES.
    """

    def __init__(self, array: Any, n: int) -> None:
        self.array, self.n = array, n
        chunking = storage_chunking(array)
        if chunking is not None and chunking[0] > 1:
            sample = int(np.dtype(array.dtype).itemsize * np.prod(array.shape[1:], dtype=np.int64))
            if chunking[0] * sample > BLOCK_BYTES:
                chunking = None
        self.chunking = chunking if chunking is not None and chunking[0] > 1 else None
        self.block: np.ndarray | None = None
        self.lo = self.hi = 0  # the samples self.block holds

    def read(self, rows: slice) -> np.ndarray:
        """Samples rows.start .. rows.stop (at or after the previous read's start)."""
        if self.chunking is None:
            return _read(self.array, rows)
        a, b = rows.start, rows.stop
        if self.block is None or not (self.lo <= a and b <= self.hi):
            size, origin = self.chunking
            end = min(self.n, origin - (origin - b) // size * size)  # end of b - 1's chunk
            kept = self.block is not None and self.lo <= a < self.hi
            new = _read(self.array, slice(self.hi if kept else a, end), rows)
            if kept:
                assert self.block is not None
                new = np.concatenate([self.block[a - self.lo :], new])
            self.block, self.lo, self.hi = new, a, end
        if (a, b) == (self.lo, self.hi):
            return self.block  # the block is this batch
        batch = self.block[a - self.lo : b - self.lo].copy()
        if b == self.hi:  # the block's last batch: it need not wait for the next read
            self.block, self.lo = None, self.hi
        return batch


def check_batch(
    batch: Mapping[str, np.ndarray],
    specs: Sequence[InputSpec],
    constants: Mapping[str, Any] = {},
    head: bool = False,
) -> None:
    """Raise one InputError listing every name, rank, shape and dtype mismatch.

    *specs* are all model inputs; inputs in *constants* need not be in *batch*. With
    *head*, *batch* holds only the first sample of each input, so the batch axis is not
    checked (see resolve_batch_size).
    """
    expected = {s.name: s for s in specs if s.name not in constants}
    problems = []
    missing = sorted(set(expected) - set(batch))
    extra = sorted(set(batch) - set(expected) - set(constants))  # constants join batches
    if missing:
        # Without a misnamed array, the missing input may be one shared by every sample.
        hint = "" if extra else (
            " (an input shared by every sample, such as a recurrent state, goes in "
            "constants= / --const)"
        )  # fmt: skip
        problems.append(f"missing input(s) {', '.join(missing)}{hint}")
    if extra:
        unfed = [n for n in expected if n not in batch]
        hints = "".join(did_you_mean(name, unfed) for name in extra)
        problems.append(
            f"unknown input(s) {', '.join(extra)} (the model takes {', '.join(expected)}).{hints}"
        )
    for name in sorted(set(expected) & set(batch)):
        spec, array = expected[name], batch[name]
        if array.ndim != len(spec.shape):
            problems.append(
                f"input {name!r} has rank {array.ndim} (samples of shape {array.shape[1:]}) "
                f"but the model expects rank {len(spec.shape)} {_fmt(spec.shape)}"
            )
            continue
        bad = [
            i for i, (d, want) in enumerate(zip(array.shape, spec.shape))
            if isinstance(want, int) and want > 0 and d != want and not (i == 0 and head)
        ]  # fmt: skip
        if bad == [0]:
            problems.append(
                f"input {name!r} has a batch of {array.shape[0]} but the model fixes its batch "
                f"dimension to {spec.shape[0]}; use batch size {spec.shape[0]}"
            )
        elif bad:
            problems.append(
                f"input {name!r} has samples of shape {array.shape[1:]} but the model expects "
                f"{_fmt(spec.shape)} (the first axis is the batch)"
            )
        if array.dtype != spec.dtype:
            problems.append(
                f"input {name!r} is {array.dtype} but the model expects {spec.dtype} "
                f"(convert with .astype(np.{spec.dtype.name}))"
            )
    if problems:
        raise InputError("; ".join(problems))


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + ")"


class Rows:
    """Rows *index* of an array (numpy, memory-mapped or zarr), read a slice at a time.

    Looks like an array to ``iter_batches``, so a selection of samples streams through the
    same batching and checks as whole data sets.
    """

    def __init__(self, array: Any, index: np.ndarray) -> None:
        self.array = array
        self.index = np.asarray(index)
        self.shape = (len(self.index), *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: slice) -> np.ndarray:
        index = self.index[rows]
        if hasattr(self.array, "oindex"):  # zarr: orthogonal selection
            return np.asarray(self.array.oindex[index])
        return np.asarray(self.array[index])
