"""Everything zarr: the results store (an Analysis as a zarr group, written atomically), and
the arrays that keep a counter's recorded states.

Layout (schema version 1; also in the README):

    <path>/                  group, attrs: schema="onnx_state.analysis", schema_version,
                             onnx_state_version, model_sha256, data_fingerprint, n_samples,
                             accuracy, parity_max_abs_diff, layer_order, complete=true
    <path>/layers/<i>/       group per captured layer, attrs: name, tensor, layer, layer_type,
                             op_type, kind, neurons, axis, state_count, nan_count
        state_ids            uint8 [n_unique, ceil(neurons / 8)], packbits little-endian
        counts               int64 [n_unique]

The group is built in a hidden sibling folder and renamed into place, so an interrupted
run leaves no store that loads; ``complete`` guards against copies of a partial folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from onnx_state.errors import InputError, StoreError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "StoredLayer",
    "open_raw_states",
    "read_store",
    "remove_raw_states",
    "write_store",
]

SCHEMA = "onnx_state.analysis"
SCHEMA_VERSION = 1


class StoredLayer(NamedTuple):
    """One layer as the store keeps it: its attributes, state ids and counts."""

    attrs: dict[str, Any]
    ids: np.ndarray  # uint8 [n_unique, ceil(neurons / 8)], ascending
    counts: np.ndarray  # int64 [n_unique]


def write_store(
    path: str | os.PathLike[str],
    attrs: dict[str, Any],
    layers: list[StoredLayer],
    overwrite: bool = False,
) -> None:
    """Write a results store at *path*, atomically.

    Parameters
    ----------
    path:
        The store's folder.
    attrs:
        Root attributes (schema, version and completeness are added here).
    layers:
        One entry per layer, in order.
    overwrite:
        Replace an existing results store (never any other folder).
    """
    import zarr

    target = Path(path).absolute()
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another path or pass overwrite=True")
    if target.exists() and not _is_store(target):
        raise InputError(
            f"{target} exists and is not an onnx_state results store; not replacing it"
        )
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(str(tmp), mode="w")
        for i, layer in enumerate(layers):
            g = root.create_group(f"layers/{i}")
            g.attrs.update({k: _plain(v) for k, v in layer.attrs.items()})
            ids = layer.ids.reshape(len(layer.ids), max(1, (layer.attrs["neurons"] + 7) // 8))
            g.create_array("state_ids", data=np.ascontiguousarray(ids, dtype=np.uint8))
            g.create_array("counts", data=np.ascontiguousarray(layer.counts, dtype=np.int64))
        full = {**attrs, "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "complete": True}
        root.attrs.update({k: _plain(v) for k, v in full.items()})
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_store(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[StoredLayer]]:
    """(root attributes, layers) of a store written by write_store, checking its schema
    and completeness."""
    import zarr

    source = Path(path)
    if not source.is_dir():
        raise StoreError(f"results store {str(source)!r} does not exist")
    try:
        root = zarr.open_group(str(source), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:
        raise StoreError(
            f"{source} is not a zarr results store ({exc.__class__.__name__})"
        ) from exc
    if attrs.get("schema") != SCHEMA:
        raise StoreError(f"{source} is not an onnx_state results store (no schema {SCHEMA!r})")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{source} has schema version {attrs.get('schema_version')}; this onnx_state reads "
            f"version {SCHEMA_VERSION}"
        )
    if attrs.get("complete") is not True:
        raise StoreError(f"{source} is incomplete (the run that wrote it was interrupted)")
    layers = []
    for i in range(len(_as_list(attrs["layer_order"]))):
        g = root[f"layers/{i}"]
        if not isinstance(g, zarr.Group):
            raise StoreError(f"{source}/layers/{i} is not a layer group")
        ids, counts = (np.asarray(_array(g, k)[:]) for k in ("state_ids", "counts"))
        layers.append(StoredLayer(dict(g.attrs), ids, counts))
    return attrs, layers


def _as_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise StoreError(f"a results store's layer_order must be a list, not {value!r}")
    return value


def _array(group: Any, name: str) -> Any:
    """The zarr array *name* of a layer group."""
    import zarr

    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.path}/{name} is not an array")
    return node


def _is_store(path: Path) -> bool:
    """A folder whose zarr root says it is an onnx_state results store (complete or not)."""
    import json

    meta = path / "zarr.json"
    try:
        return path.is_dir() and json.loads(meta.read_text())["attributes"]["schema"] == SCHEMA
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _plain(value: Any) -> Any:
    """JSON-safe scalars for zarr attributes."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- recorded states (StateCounter(record=...)) ------------------------------------------
def _codecs(compressor: str) -> list[Any]:
    from zarr.codecs import BloscCodec, ZstdCodec

    if compressor == "zstd":
        return [ZstdCodec(level=3)]
    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]


def open_raw_states(record: bool | str | Path, n_bytes: int, compressor: str, chunk: int) -> Any:
    """An empty zarr array for a counter's recorded states: in memory for ``record=True``,
    else a new folder at *record*; chunks of *chunk* states (at most ~8 MiB)."""
    import zarr

    store: Any
    if isinstance(record, (str, Path)):
        path = Path(record)
        if path.exists():
            raise InputError(f"{path} already exists; choose a new path for recorded states")
        store = zarr.storage.LocalStore(str(path))
    else:
        store = zarr.storage.MemoryStore()
    return zarr.create_array(
        store=store,
        shape=(0, n_bytes),
        # At most ~8 MiB per chunk: wide layers would otherwise get chunks of gigabytes.
        chunks=(max(1, min(chunk, (8 << 20) // n_bytes)), n_bytes),
        dtype="uint8",
        compressors=_codecs(compressor),
        fill_value=0,
    )


def remove_raw_states(path: Path) -> None:
    """Delete a recorded-states folder (a counter's reset)."""

    if path.exists():
        shutil.rmtree(path)
