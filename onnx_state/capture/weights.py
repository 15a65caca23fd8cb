"""Hand a model's embedded weights to onnxruntime as references to its own file.

The instrumented model must reach onnxruntime as bytes (it has extra outputs the file lacks).
Serializing it with its weights costs a copy of every weight and, with protobuf's size pass,
tens of milliseconds per 10 MB. But the weights already sit in the model file, byte for byte:
an initializer's ``raw_data`` is one contiguous run of the file. ``point_at_own_file`` finds
those runs by walking the protobuf wire format of the file (tags and lengths only, never the
weights) and turns each large initializer into an external-data reference to its own bytes
there (``location`` = the file's name, ``offset``, ``length``); onnxruntime reads them from
the file as it reads any external data (``make_session`` tells it the folder). The proto
keeps no copy of the weights from then on and serializes in about a millisecond.

Where the file does not line up with the loaded proto — another serialization format, a file
replaced since it was read, a layout the walk does not follow (a graph split into several
fields, groups) — nothing is changed, and the model is serialized as before.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import ModelProto

__all__ = ["point_at_own_file", "raw_data_spans"]

# Field numbers of onnx.proto that the walk reads.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_LEN = 2  # wire type of length-delimited fields
# Bytes compared at each end of a run against the loaded tensor: a replaced file shows.
_PROBE = 64


class _LayoutError(Exception):
    """The bytes are not the plain protobuf layout the walk reads."""


def _varint(buf: bytes | mmap.mmap, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _LayoutError
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field of the message in buf[start:end];
    start..end is the payload of a length-delimited field, else the value's own bytes."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            j = _varint(buf, i, end)[1]
        elif wire == 1:
            j = i + 8
        elif wire == _LEN:
            n, i = _varint(buf, i, end)
            j = i + n
        elif wire == 5:
            j = i + 4
        else:  # groups (deprecated) and invalid wire types
            raise _LayoutError
        if number == 0 or j > end:
            raise _LayoutError
        yield number, wire, i, j
        i = j


def raw_data_spans(buf: bytes | mmap.mmap) -> list[tuple[str, int, int]] | None:
    """For each initializer of the main graph of the serialized ModelProto *buf*, in order:
    its name and the offset and length of its ``raw_data`` bytes in *buf* (-1, 0 without).

    None where *buf* does not have the layout read here: truncated, groups, or the graph
    given in several fields (protobuf merges them; the offsets would not be one run).
    Repeated scalar fields take the last value, as protobuf's parser does.
    """
    try:
        graphs = [
            (s, e) for n, w, s, e in _fields(buf, 0, len(buf)) if n == _MODEL_GRAPH and w == _LEN
        ]
        if len(graphs) != 1:
            return None
        spans = []
        for n, w, s, e in _fields(buf, *graphs[0]):
            if n != _GRAPH_INITIALIZER or w != _LEN:
                continue
            name, offset, length = b"", -1, 0
            for tn, tw, ts, te in _fields(buf, s, e):
                if tw != _LEN:
                    continue
                if tn == _TENSOR_NAME:
                    name = bytes(buf[ts:te])
                elif tn == _TENSOR_RAW_DATA:
                    offset, length = ts, te - ts
            spans.append((name.decode("utf-8"), offset, length))
        return spans
    except (_LayoutError, UnicodeDecodeError):
        return None


def point_at_own_file(
    model: ModelProto, path: str | os.PathLike[str], min_bytes: int = 1024
) -> bool:
    """Make each main-graph initializer of *model* with at least *min_bytes* of ``raw_data``
    an external-data reference to the same bytes in the file *path* that *model* was parsed
    from (in place); whether it did.

    Every initializer's name and data length must match the file, and each pointed run
    must begin and end with the tensor's own bytes; otherwise (or for a file onnx does not
    read as binary protobuf, or a symbolic link, whose target could change before
    onnxruntime opens it) *model* is left unchanged and False is returned. onnxruntime must
    then be given the file's folder (``session.make_session``'s *model_dir*).
    """
    path = Path(path)
    fmt = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    if fmt not in (None, "protobuf") or path.is_symlink():
        return False
    inits = model.graph.initializer
    chosen: list[tuple[onnx.TensorProto, int, int]] = []
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            spans = raw_data_spans(mm)
            if spans is None or len(spans) != len(inits):
                return False
            for tensor, (name, offset, length) in zip(inits, spans):
                if tensor.name != name:
                    return False
                if offset < 0:  # no raw_data in the file (e.g. external there): left as is
                    continue
                raw = tensor.raw_data
                if len(raw) != length:
                    return False
                if length < min_bytes:
                    continue
                head, end = min(_PROBE, length), offset + length
                if mm[offset : offset + head] != raw[:head] or mm[end - head : end] != raw[-head:]:
                    return False
                chosen.append((tensor, offset, length))
    except (OSError, ValueError):  # unreadable now, or empty: serialize instead
        return False
    for tensor, offset, length in chosen:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", path.name), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    return bool(chosen)
