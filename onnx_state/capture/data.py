"""Data in: input specs, array files, batches checked against the model, fingerprints."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import xxhash
from onnx import ModelProto

from onnx_state.errors import InputError

__all__ = [
    "Fingerprint",
    "InputSpec",
    "batch_count",
    "check_batch",
    "input_specs",
    "iter_batches",
    "load_array",
    "open_data",
]


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (None or a string for free dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


def input_specs(model: ModelProto) -> list[InputSpec]:
    """Graph inputs that are fed at run time (initializers excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def load_array(source: str | os.PathLike[str], key: str | None = None) -> Any:
    """Open ``.npy`` (memory-mapped), ``.npz`` or zarr data without unpickling anything.

    ``path.npz:key`` (or *key*) picks one array of an npz file or a zarr group.
    """
    text = os.fspath(source)
    if key is None and ":" in text and not Path(text).exists():
        text, key = text.rsplit(":", 1)
    path = Path(text)
    if not path.exists():
        raise InputError(f"data file {text!r} does not exist")
    if key is not None and path.suffix == ".npy":
        raise InputError(f"{path} holds one array; drop ':{key}'")
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if key is None:
                    if len(npz.files) != 1:
                        raise InputError(
                            f"{path} holds {', '.join(npz.files)}; pick one as {path}:NAME"
                        )
                    key = npz.files[0]
                if key not in npz.files:
                    raise InputError(
                        f"{path} has no array {key!r}; it holds {', '.join(npz.files)}"
                    )
                return npz[key]
        if path.is_dir():
            import zarr

            node: Any = zarr.open(str(path), mode="r")
            if key is not None:
                node = node[key]
            if not hasattr(node, "dtype"):
                raise InputError(f"{path} is a zarr group; pick an array as {path}:NAME")
            return node
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read {path}: {exc} (object arrays are refused)") from exc
    raise InputError(f"unsupported data file {path}; use .npy, .npz or a zarr directory")


def _as_mapping(data: Any, names: Sequence[str]) -> Mapping[str, Any] | None:
    """Whole-dataset form: one array for a one-input model, or a dict of arrays."""
    if isinstance(data, Mapping):
        return data
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        if len(names) != 1:
            raise InputError(
                f"the model has {len(names)} inputs ({', '.join(names)}); pass a dict of arrays"
            )
        return {names[0]: data}
    return None


def open_data(data: Any) -> Any:
    """A path becomes its array (see load_array); anything else is returned as it is."""
    return load_array(data) if isinstance(data, (str, os.PathLike)) else data


def batch_count(data: Any, specs: Sequence[InputSpec], batch_size: int) -> int | None:
    """Number of batches iter_batches will yield, when known up front."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    data = open_data(data)
    mapping = _as_mapping(data, [s.name for s in specs])
    if mapping is not None and not mapping:
        raise InputError("the data dict is empty; give one array per model input")
    if mapping is None:
        return len(data) if hasattr(data, "__len__") else None
    first = next(iter(mapping.values()))
    n = first.shape[0] if hasattr(first, "shape") else len(first)
    return -(-n // batch_size)


def iter_batches(
    data: Any, specs: Sequence[InputSpec], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yield checked input dicts from arrays, dicts of arrays, or an iterable of batches."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    names = [s.name for s in specs]
    data = open_data(data)
    mapping = _as_mapping(data, names)
    if mapping is not None:
        if not mapping:
            raise InputError("the data dict is empty; give one array per model input")
        check_batch({k: _head(v) for k, v in mapping.items()}, specs)
        lengths = {k: v.shape[0] if hasattr(v, "shape") else len(v) for k, v in mapping.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"inputs differ in length: {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise InputError("the data holds no samples")
        for start in range(0, n, batch_size):
            yield {
                k: np.ascontiguousarray(v[start : start + batch_size]) for k, v in mapping.items()
            }
        return
    if not isinstance(data, Iterable):
        raise InputError(
            f"cannot read data of type {type(data).__name__}; pass an array, a dict of arrays, "
            "a .npy/.npz/zarr path or an iterable of batches"
        )
    empty = True
    for item in data:
        batch = _as_mapping(item, names)
        if batch is None:
            raise InputError(
                f"a batch must be an array or a dict of arrays, got {type(item).__name__}"
            )
        # A copy: iterators may refill one buffer while this batch is still being counted.
        batch = {k: np.array(v, order="C", copy=True) for k, v in batch.items()}
        check_batch(batch, specs)
        if len(next(iter(batch.values()), ())) == 0:
            continue  # an empty batch holds no states
        empty = False
        yield batch
    if empty:
        raise InputError("the data holds no batches (or only empty ones)")


def _head(array: Any) -> np.ndarray:
    """First sample with its batch axis, enough to check names, ranks, shapes and dtypes."""
    return np.asarray(array[:1])


def check_batch(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
    """Raise one InputError listing every name, rank, shape and dtype mismatch."""
    expected = {s.name: s for s in specs}
    problems = []
    missing = sorted(set(expected) - set(batch))
    extra = sorted(set(batch) - set(expected))
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    if extra:
        problems.append(
            f"unknown input(s) {', '.join(extra)} (the model takes {', '.join(expected)})"
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
            if isinstance(want, int) and want > 0 and d != want and not (i == 0 and d == 0)
        ]  # fmt: skip
        if bad:
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


class Fingerprint:
    """XXH3-128 of a data set as streamed, independent of how it was split into batches.

    One hash per input over its bytes, then one over names, dtypes, sample shapes and those
    hashes; the digest reads ``xxh3_128:<hex>``. XXH3 runs near memory speed (BLAKE2b took a
    third of the counting time); it identifies data sets, it is not tamper-proof.
    """

    ALGORITHM = "xxh3_128"

    def __init__(self) -> None:
        self._inputs: dict[str, Any] = {}
        self._meta: dict[str, str] = {}

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        """Hash the next batch (inputs by name, batch axis first)."""
        for name, a in batch.items():
            self._inputs.setdefault(name, xxhash.xxh3_128()).update(
                memoryview(np.ascontiguousarray(a)).cast("B")  # type: ignore[arg-type]
            )
            self._meta[name] = f"{a.dtype.str}{a.shape[1:]}"

    def hexdigest(self) -> str:
        """``xxh3_128:<hex>`` of every batch so far, independent of their sizes."""
        total = xxhash.xxh3_128()
        for name in sorted(self._inputs):
            total.update(f"{name}:{self._meta[name]}:{self._inputs[name].hexdigest()};".encode())
        return f"{self.ALGORITHM}:{total.hexdigest()}"


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
