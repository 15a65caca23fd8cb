"""The results store: an Analysis as a zarr group on disk, written atomically.

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

import numpy as np

from onnx_state.errors import InputError, StoreError
from onnx_state.results import SCHEMA_VERSION, Analysis, LayerResult, States

__all__ = ["load_analysis", "save_analysis"]

SCHEMA = "onnx_state.analysis"
_LAYER_ATTRS = (
    "name", "tensor", "layer", "layer_type", "op_type", "kind", "neurons", "axis",
    "state_count", "nan_count",
)  # fmt: skip


def save_analysis(analysis: Analysis, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write *analysis* to a zarr group at *path*, atomically."""
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
        for i, layer in enumerate(analysis.layers):
            g = root.create_group(f"layers/{i}")
            g.attrs.update({k: _plain(getattr(layer, k)) for k in _LAYER_ATTRS})
            ids = layer.state_ids()
            ids = ids.reshape(len(ids), max(1, (layer.neurons + 7) // 8))
            g.create_array("state_ids", data=np.ascontiguousarray(ids, dtype=np.uint8))
            g.create_array("counts", data=np.ascontiguousarray(layer.counts(), dtype=np.int64))
        attrs = {k: v for k, v in analysis.to_dict().items() if k != "layers"}
        attrs.update(schema=SCHEMA, layer_order=[r.name for r in analysis.layers], complete=True)
        root.attrs.update({k: _plain(v) for k, v in attrs.items()})
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


def load_analysis(path: str | os.PathLike) -> Analysis:
    """Read a store written by save_analysis, checking schema and completeness."""
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
    for i in range(len(attrs["layer_order"])):
        g = root[f"layers/{i}"]
        a = dict(g.attrs)
        layers.append(
            LayerResult(
                **{k: a[k] for k in _LAYER_ATTRS},
                states=States(np.asarray(g["state_ids"][:]), np.asarray(g["counts"][:])),
            )
        )
    return Analysis(
        layers=layers,
        n_samples=attrs["n_samples"],
        model_sha256=attrs["model_sha256"],
        data_fingerprint=attrs["data_fingerprint"],
        accuracy=attrs.get("accuracy"),
        parity_max_abs_diff=attrs.get("parity_max_abs_diff"),
        onnx_state_version=attrs.get("onnx_state_version", ""),
        schema_version=attrs["schema_version"],
    )


def _is_store(path: Path) -> bool:
    """A folder whose zarr root says it is an onnx_state results store (complete or not)."""
    import json

    meta = path / "zarr.json"
    try:
        return path.is_dir() and json.loads(meta.read_text())["attributes"]["schema"] == SCHEMA
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _plain(value):
    """JSON-safe scalars for zarr attributes."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
