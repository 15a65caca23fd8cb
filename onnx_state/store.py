"""Everything zarr: the results store (an Analysis as a zarr group, written atomically), and
the arrays that keep a counter's recorded states.

Layout (schema version 2; also in the README). Version 1 stores, which lack the items
marked (v2), are still read.

    <path>/                  group, attrs: schema="onnx_state.analysis", schema_version,
                             onnx_state_version, model_sha256, data_fingerprint, n_samples,
                             accuracy, parity_max_abs_diff, layer_order, complete=true,
                             run (v2: the run record, see RUN_FIELDS)
    <path>/layers/<i>/       group per captured layer, attrs: name, tensor, layer, layer_type,
                             op_type, kind, neurons, axis, state_count, nan_count,
                             captured and axis_rule (v2)
        state_ids            uint8 [n_unique, ceil(neurons / 8)], packbits little-endian
        counts               int64 [n_unique]
        class_counts         optional, int64 [pairs, 3]: (state row, class, count) for each
                             state seen with a class label, ascending by (row, class); rows
                             sum to counts (written when the analysis had labels)
        firing_counts        int64 [neurons] (v2): how often each neuron fired

The group is built in a hidden sibling folder and renamed into place, so an interrupted
run leaves no store that loads; ``complete`` guards against copies of a partial folder.
``read_store`` checks everything above and how it fits together; the ``check_*`` helpers
are the JSON checks every result read back shares (stores here, JSON results elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from onnx_state.errors import InputError, StoreError
from onnx_state.metrics import firing_counts
from onnx_state.outputs import check_output, deferred_interrupts

__all__ = [
    "MISSING",
    "READABLE_VERSIONS",
    "RUN_FIELDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "StoredLayer",
    "check_dict",
    "check_int",
    "check_list",
    "check_number",
    "check_run",
    "check_schema",
    "check_str",
    "is_store",
    "label",
    "open_raw_states",
    "read_store",
    "recover",
    "remove_raw_states",
    "shown",
    "write_store",
]

SCHEMA = "onnx_state.analysis"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The run record (root attribute ``run``, version 2): field -> JSON type ("str", "int",
# "int?" for an integer or null, "str list").
RUN_FIELDS = {
    "onnx_state": "str", "onnx": "str", "onnxruntime": "str", "numpy": "str", "python": "str",
    "providers": "str list", "threads": "int?", "cpus": "int", "optimization": "str",
    "batch_size": "int?",
}  # fmt: skip


class StoredLayer(NamedTuple):
    """One layer as the store keeps it: its attributes, state ids and counts."""

    attrs: dict[str, Any]
    ids: np.ndarray  # uint8 [n_unique, ceil(neurons / 8)], ascending
    counts: np.ndarray  # int64 [n_unique]
    firing: np.ndarray | None = None  # int64 [neurons]; None: not stored (version 1)
    class_counts: np.ndarray | None = None  # int64 [pairs, 3]: (row, class, count), optional


def write_store(
    path: str | os.PathLike[str],
    attrs: dict[str, Any],
    layers: list[StoredLayer],
    overwrite: bool = False,
    checkpoint: dict[str, Any] | None = None,
) -> None:
    """Write a results store at *path*, atomically and safe from interrupts.

    The store is built in a hidden sibling folder and renamed into place; SIGINT and
    SIGTERM wait until that is done or undone (``outputs.deferred_interrupts``). Replacing
    a store renames the old one aside first and deletes it only once the new one is in
    place; a crash between the two renames is repaired by the next read or write
    (``recover``).

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
    checkpoint:
        Write a checkpoint of an unfinished run instead (``complete`` false, these
        attributes under ``checkpoint``); it always replaces an earlier one.
    """
    import zarr

    target = Path(path).absolute()
    recover(target)
    # A checkpoint replaces the run's own earlier checkpoint; anything else needs overwrite.
    replaces_checkpoint = checkpoint is not None and _is_checkpoint(target)
    check_output(path, overwrite=overwrite or replaces_checkpoint, kind="store",
                 is_ours=is_store)  # fmt: skip
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    with deferred_interrupts():
        try:
            root = zarr.open_group(str(tmp), mode="w")
            for i, layer in enumerate(layers):
                g = root.create_group(f"layers/{i}")
                g.attrs.update({k: _plain(v) for k, v in layer.attrs.items()})
                width = (layer.attrs["neurons"] + 7) // 8  # 0: a layer that never ran
                ids = layer.ids.reshape(len(layer.ids), width)
                g.create_array("state_ids", data=np.ascontiguousarray(ids, dtype=np.uint8))
                g.create_array("counts", data=np.ascontiguousarray(layer.counts, dtype=np.int64))
                if layer.class_counts is not None:
                    table = np.ascontiguousarray(layer.class_counts, dtype=np.int64)
                    g.create_array("class_counts", data=table.reshape(-1, 3))
                firing = layer.firing
                if firing is None:
                    firing = firing_counts(ids, layer.counts, layer.attrs["neurons"])
                g.create_array("firing_counts", data=np.ascontiguousarray(firing, dtype=np.int64))
            full = {**attrs, "schema": SCHEMA, "schema_version": SCHEMA_VERSION}
            full["complete"] = checkpoint is None
            if checkpoint is not None:
                full["checkpoint"] = checkpoint
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


def recover(path: str | os.PathLike[str], tidy: bool = True) -> None:
    """Repair what a crash (SIGKILL, power loss) can leave beside the store at *path*.

    A crash between the two renames of an overwrite leaves no store at *path* and the old
    one under a hidden ``.NAME.old-<8 hex>`` name: it is put back. With *tidy* (writes),
    set-aside stores left after a completed overwrite, and ``.NAME.partial-<8 hex>``
    folders of a save that never finished (an hour old or more: another process may be
    saving right now), are deleted. Only names of exactly that form are touched.
    """
    target = Path(path).absolute()
    if not target.parent.is_dir():
        return
    ours = re.compile(re.escape(f".{target.name}.") + r"(old|partial)-[0-9a-f]{8}")
    left = [p for p in target.parent.iterdir() if ours.fullmatch(p.name) and p.is_dir()]
    olds = sorted(  # newest first: the store the crashed overwrite had just set aside
        (p for p in left if ".old-" in p.name), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in olds:
        if not target.exists() and is_store(old):
            old.rename(target)
        elif tidy and is_store(old):
            shutil.rmtree(old, ignore_errors=True)
    if not tidy:
        return
    stale = time.time() - 3600  # another process may be saving right now: leave fresh ones
    for partial in (p for p in left if ".partial-" in p.name):
        if partial.stat().st_mtime < stale:
            shutil.rmtree(partial, ignore_errors=True)


def read_store(
    path: str | os.PathLike[str], checkpoint: bool = False
) -> tuple[dict[str, Any], list[StoredLayer]]:
    """(root attributes, layers) of a store written by write_store, fully checked.

    Checks the schema, completeness, every attribute's JSON type and range, each layer's
    arrays (dtype, shape, width ``ceil(neurons / 8)``, no bit above the last neuron) and
    their consistency (one count >= 1 per state id, counts summing to ``state_count``,
    state ids unique and ascending by their little-endian integer value). Any mismatch is
    one StoreError whose single line names the store, the layer (index and name), the
    attribute or array, and what was expected. With *checkpoint*, the store must be the
    checkpoint of an unfinished run (see write_store) instead of a complete one.
    """
    import zarr

    source = Path(path)
    recover(source, tidy=False)  # puts back a store a crashed overwrite had set aside
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
    version = attrs.get("schema_version", MISSING)
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise StoreError(
            f"{source} has schema version {shown(version)}; this onnx_state reads "
            f"versions {' and '.join(map(str, READABLE_VERSIONS))}"
        )
    if checkpoint:
        if attrs.get("complete") is not False or not isinstance(attrs.get("checkpoint"), dict):
            raise StoreError(f"{source} holds no checkpoint of an unfinished run to resume")
    elif attrs.get("complete") is not True:
        hint = " (resume it with --resume)" if isinstance(attrs.get("checkpoint"), dict) else ""
        raise StoreError(f"{source} is incomplete (the run that wrote it was interrupted){hint}")
    order = _check_root(attrs, f"{source}: root attribute", version)
    layers = [
        _read_layer(root, i, name, order, str(source), version) for i, name in enumerate(order)
    ]
    _check_no_extra_layers(root, len(order), str(source))
    return attrs, layers


# -- checks shared by every result loaded back (stores here, JSON results elsewhere) ----
class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # what ``d.get(key, MISSING)`` gives for an absent key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """A value as a short JSON-like text for error messages ('missing' for MISSING)."""
    if value is MISSING:
        return "missing"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(what: str, value: Any, expected: str) -> StoreError:
    return StoreError(f"{what} is {shown(value)}; expected {expected}")


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    """*value* if it is a JSON integer (not a bool) >= *minimum*, else a StoreError."""
    expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if not _is_int(value) or (minimum is not None and value < minimum):
        raise _bad(what, value, expected)
    return int(value)


def check_number(
    value: Any,
    what: str,
    low: float | None = None,
    high: float | None = None,
    null: bool = False,
    finite: bool = True,
) -> float | None:
    """*value* if it is a JSON number in [low, high] (or null when *null*); NaN and
    infinities only when not *finite* (an infinity still within the bounds)."""
    if null and value is None:
        return None
    if low is not None and high is not None:
        expected = f"a number in [{low:g}, {high:g}]"
    elif low is not None:
        expected = f"a number >= {low:g}"
    else:
        expected = f"a number <= {high:g}" if high is not None else "a finite number"
        expected = expected if finite or high is not None else "a number"
    expected = f"null or {expected}" if null else expected
    expected = expected if finite else f"{expected}, or NaN"
    if (
        not _is_number(value)
        or (finite and not math.isfinite(value))
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise _bad(what, value, expected)
    return value  # type: ignore[no-any-return]


def check_str(value: Any, what: str, choices: tuple[str, ...] | None = None) -> str:
    """*value* if it is a JSON string (one of *choices* when given), else a StoreError."""
    if choices is not None and value not in choices:
        raise _bad(what, value, " or ".join(json.dumps(c) for c in choices))
    if not isinstance(value, str):
        raise _bad(what, value, "a string")
    return value


def check_list(value: Any, what: str, item: str, distinct: bool = False) -> list[Any]:
    """*value* if it is a JSON list whose entries are all *item* ("str" or "int")."""
    one, many = ("a string", "strings") if item == "str" else ("an integer", "integers")
    expected = f"a list of {'distinct ' if distinct else ''}{many}"
    if not isinstance(value, list):
        raise _bad(what, value, expected)
    for i, v in enumerate(value):
        if not (isinstance(v, str) if item == "str" else _is_int(v)):
            raise _bad(f"{what}[{i}]", v, one)
    if distinct:
        seen: dict[Any, int] = {}
        for i, v in enumerate(value):
            if v in seen:
                raise StoreError(
                    f"{what}[{i}] repeats entry {seen[v]} ({shown(v)}); expected {expected}"
                )
            seen[v] = i
    return list(value)


# Rounding may carry a figure read back from JSON (a cosine, an efficiency) an ulp past
# its bound; range checks allow this much.
SLACK = 1e-9


def check_schema(d: Any, where: str, schema: str, version: int, kind: str) -> dict[str, Any]:
    """*d* as a dict of result JSON of *schema* at *version*, else a StoreError that starts
    with *where* and names the *kind* of result expected."""
    checked = check_dict(d, where)
    got = checked.get("schema_version", MISSING)
    if checked.get("schema") != schema or type(got) is not int or got != version:
        raise StoreError(
            f"{where}: not an onnx_state {kind} of schema version {version} (schema "
            f"{shown(checked.get('schema', MISSING))}, schema_version {shown(got)})"
        )
    return checked


def check_dict(value: Any, what: str) -> dict[str, Any]:
    """*value* if it is a JSON object, else a StoreError."""
    if not isinstance(value, dict):
        raise _bad(what, value, "an object")
    return value


def label(name: str) -> str:
    """A name as it can stand in a one-line message."""
    return name if name.isprintable() and name else repr(name)


def check_run(value: Any, at: str) -> dict[str, Any]:
    """A run record (see RUN_FIELDS) with every field of its JSON type, else a StoreError;
    fields this version does not know are kept as they are."""
    run = check_dict(value, f"{at} run")
    for key, kind in RUN_FIELDS.items():
        got, what = run.get(key, MISSING), f"{at} run.{key}"
        if kind == "str":
            check_str(got, what)
        elif kind == "str list":
            check_list(got, what, "str")
        elif kind == "int" or got is not None:
            check_int(got, what, minimum=1)
    return run


def _check_root(attrs: dict[str, Any], at: str, version: int = SCHEMA_VERSION) -> list[str]:
    """layer_order, after checking every root attribute the schema (*version*) defines."""
    run = attrs.get("run", MISSING)
    if version >= 2 and run is not None:  # null: unknown (a result read from version 1)
        check_run(run, at)
    check_int(attrs.get("n_samples", MISSING), f"{at} n_samples", minimum=0)
    for key in ("model_sha256", "data_fingerprint"):
        check_str(attrs.get(key, MISSING), f"{at} {key}")
    if "onnx_state_version" in attrs:
        check_str(attrs["onnx_state_version"], f"{at} onnx_state_version")
    check_number(attrs.get("accuracy", MISSING), f"{at} accuracy", 0, 1, null=True)
    check_number(
        attrs.get("parity_max_abs_diff", MISSING), f"{at} parity_max_abs_diff", 0, null=True
    )
    for key in ("network_efficiency", "aiq_beta2"):  # derived, not read back: type only
        if key in attrs:
            check_number(attrs[key], f"{at} {key}", 0, null=True)
    return check_list(attrs.get("layer_order", MISSING), f"{at} layer_order", "str", True)


def _read_layer(
    root: Any, i: int, name: str, order: list[str], source: str, version: int = SCHEMA_VERSION
) -> StoredLayer:
    """Layer *i* of a store (schema *version*), every attribute and array checked."""
    import zarr

    at = f"{source}: layer {i} ({label(name)})"
    try:
        group = root[f"layers/{i}"]
    except KeyError:
        raise StoreError(
            f"{at} is missing: no group layers/{i} (layer_order names {len(order)} layers)"
        ) from None
    except Exception as exc:
        raise StoreError(f"{at}: cannot open layers/{i} ({_why(exc)})") from exc
    if not isinstance(group, zarr.Group):
        raise StoreError(f"{at}: layers/{i} is an array; expected a layer group")
    attrs = dict(group.attrs)
    attr = f"{at}: attribute"
    got = attrs.get("name", MISSING)
    if got != name:
        raise _bad(f"{attr} name", got, f"{json.dumps(name)} (layer_order[{i}])")
    text = ("tensor", "layer", "layer_type", "op_type")
    for key in (*text, "captured", "axis_rule") if version >= 2 else text:
        check_str(attrs.get(key, MISSING), f"{attr} {key}")
    check_str(attrs.get("kind", MISSING), f"{attr} kind", ("post", "pre"))
    # 0 neurons: a layer in an If branch that never ran, whose width the graph leaves open
    neurons = check_int(attrs.get("neurons", MISSING), f"{attr} neurons", minimum=0)
    check_int(attrs.get("axis", MISSING), f"{attr} axis")
    state_count = check_int(attrs.get("state_count", MISSING), f"{attr} state_count", 0)
    if neurons == 0 and state_count:
        raise StoreError(f"{attr} neurons is 0 but state_count is {state_count}; expected >= 1")
    check_int(attrs.get("nan_count", MISSING), f"{attr} nan_count", minimum=0)

    width = (neurons + 7) // 8
    ids = _read_array(group, "state_ids", at, np.uint8, f"[unique states, {width}]")
    counts = _read_array(group, "counts", at, np.int64, "[unique states]")
    if ids.shape[1] != width:
        raise StoreError(
            f"{at}: state_ids has {ids.shape[1]} bytes per row but {neurons} neurons need "
            f"ceil({neurons} / 8) = {width}"
        )
    if len(counts) != len(ids):
        raise StoreError(
            f"{at}: counts has {len(counts)} entries but state_ids has {len(ids)} rows"
        )
    low = np.flatnonzero(counts < 1)
    if len(low):
        raise StoreError(f"{at}: counts[{low[0]}] is {counts[low[0]]}; expected every count >= 1")
    total = _exact_sum(counts)
    if total != state_count:
        raise StoreError(f"{at}: counts sum to {total} but attribute state_count is {state_count}")
    spare = neurons % 8
    if spare and len(ids):
        stray = np.flatnonzero(ids[:, -1] >> spare)
        if len(stray):
            r = int(stray[0])
            raise StoreError(
                f"{at}: state_ids row {r} sets bits above neuron {neurons - 1} (the last) in "
                f"its last byte (0x{int(ids[r, -1]):02x}); expected bits {spare}-7 of byte "
                f"{width - 1} clear"
            )
    disorder = _first_disorder(ids)
    if disorder is not None:
        r, repeated = disorder
        if repeated:
            raise StoreError(f"{at}: state_ids row {r} repeats row {r - 1}; expected unique states")
        raise StoreError(
            f"{at}: state_ids row {r} is below row {r - 1}; expected rows ascending by their "
            "little-endian integer value"
        )
    table = None
    try:
        present = "class_counts" in group  # optional: analyses with labels write it
    except Exception as exc:  # zarr's metadata errors: JSON, types, validation
        raise StoreError(f"{at}: cannot open class_counts ({_why(exc)})") from None
    if present:
        table = _read_array(group, "class_counts", at, np.int64, "[pairs, 3]")
        _check_class_counts(table, counts, at)
    if version < 2:
        return StoredLayer(attrs, ids, counts, class_counts=table)
    firing = _read_array(group, "firing_counts", at, np.int64, "[neurons]")
    if firing.shape != (neurons,):
        raise StoreError(
            f"{at}: firing_counts has {len(firing)} entries; expected one per neuron ({neurons})"
        )
    expected = firing_counts(ids, counts, neurons)
    wrong = np.flatnonzero(firing != expected)
    if len(wrong):
        j = int(wrong[0])
        raise StoreError(
            f"{at}: firing_counts[{j}] is {firing[j]} but the states fire neuron {j} "
            f"{expected[j]} times; expected the sum over states of count x bit"
        )
    return StoredLayer(attrs, ids, counts, firing=firing, class_counts=table)


def _check_class_counts(table: np.ndarray, counts: np.ndarray, at: str) -> None:
    """(row, class, count) triples: 3 columns, rows of state_ids, classes >= 0, counts >= 1,
    ascending by (row, class) without repeats, and summing per row to the state's count."""
    if table.shape[1] != 3:
        raise StoreError(f"{at}: class_counts has {table.shape[1]} columns; expected 3")
    if not len(table):
        return
    row, cls, cnt = table[:, 0], table[:, 1], table[:, 2]
    if row.min() < 0 or row.max() >= len(counts):
        raise StoreError(f"{at}: class_counts names state rows outside [0, {len(counts) - 1}]")
    if cls.min() < 0 or cnt.min() < 1:
        raise StoreError(f"{at}: class_counts has a class < 0 or a count < 1")
    step = np.diff(row)
    if np.any(step < 0) or np.any((step == 0) & (np.diff(cls) <= 0)):
        raise StoreError(f"{at}: class_counts is not ascending by (row, class) without repeats")
    per_row = np.bincount(row, weights=cnt, minlength=len(counts))
    if np.any(per_row != counts):  # every state is in some class set, whole
        bad = int(np.flatnonzero(per_row != counts)[0])
        raise StoreError(
            f"{at}: class_counts of state row {bad} sum to {int(per_row[bad])} but its count "
            f"is {int(counts[bad])}"
        )


def _read_array(group: Any, name: str, at: str, dtype: type[Any], shape: str) -> np.ndarray:
    """Array *name* of a layer group, checked for its dtype and number of dimensions
    (*shape* describes them: ``[rows]`` or ``[rows, columns]``)."""
    import zarr

    want = np.dtype(dtype)
    ndim = shape.count(",") + 1
    expected = f"{'an' if want.name.startswith('i') else 'a'} {want} array {shape}"
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{at}: {name} is missing; expected {expected}") from None
    except Exception as exc:
        raise StoreError(f"{at}: cannot open {name} ({_why(exc)})") from exc
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{at}: {name} is a group; expected {expected}")
    found = np.dtype(node.dtype)
    if found.kind != want.kind or found.itemsize != want.itemsize:  # either byte order
        raise StoreError(f"{at}: {name} has dtype {found}; expected {want}")
    if len(node.shape) != ndim:
        raise StoreError(
            f"{at}: {name} has shape {tuple(node.shape)}; expected {ndim} dimension"
            f"{'s' if ndim > 1 else ''} {shape}"
        )
    try:
        data = np.asarray(node[...])
    except Exception as exc:
        raise StoreError(f"{at}: cannot read {name} ({_why(exc)})") from exc
    return np.ascontiguousarray(data, dtype=want)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _exact_sum(counts: np.ndarray) -> int:
    """The exact sum of non-negative int64 counts (in 32-bit halves: no wrap-around)."""
    u = counts.view(np.uint64)
    high = int(np.sum(u >> np.uint64(32), dtype=np.uint64))
    low = int(np.sum(u & np.uint64(0xFFFFFFFF), dtype=np.uint64))
    return (high << 32) + low


def _first_disorder(ids: np.ndarray) -> tuple[int, bool] | None:
    """(row, repeats) of the first row of *ids* not above the row before it, comparing
    rows as little-endian integers (the order of count.counter.sort_states), or None."""
    if len(ids) < 2:
        return None
    prev, cur = ids[:-1, ::-1], ids[1:, ::-1]  # most significant byte first
    differ = prev != cur
    top = differ.argmax(axis=1)  # the most significant byte that differs
    rows = np.arange(len(prev))
    bad = ~differ[rows, top] | (prev[rows, top] > cur[rows, top])
    if not bad.any():
        return None
    r = int(bad.argmax())
    return r + 1, not bool(differ[r].any())


def _check_no_extra_layers(root: Any, n: int, source: str) -> None:
    """No layer group beyond the n that layer_order names."""
    import zarr

    try:
        layers = root["layers"]
    except KeyError:
        return
    except Exception as exc:  # zarr's metadata errors: JSON, types, validation
        raise StoreError(f"{source}: layers cannot be read ({_why(exc)})") from None
    if not isinstance(layers, zarr.Group):
        raise StoreError(f"{source}: layers is an array; expected a group of layer groups")
    try:
        names = set(layers.keys())
    except Exception as exc:
        raise StoreError(f"{source}: layers cannot be listed ({_why(exc)})") from None
    extra = sorted(names - {str(i) for i in range(n)})
    if extra:
        raise StoreError(
            f"{source}: layers/{extra[0]} is not one of the {n} layers layer_order names; "
            f"expected only layers/0 to layers/{n - 1}"
            if n
            else f"{source}: layers/{extra[0]} is there but layer_order names no layers"
        )


def _is_checkpoint(path: Path) -> bool:
    """A results store that holds the checkpoint of an unfinished run."""
    import json

    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        return bool(is_store(path) and attrs.get("complete") is False and "checkpoint" in attrs)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def is_store(path: Path) -> bool:
    """A folder whose zarr root says it is an onnx_state results store (complete or not)."""
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
