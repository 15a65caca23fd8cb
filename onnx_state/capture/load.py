"""Load a model safely: every external-data reference must be a regular file in its folder.

A tensor's data may live in another file (``data_location = EXTERNAL``). onnx and onnxruntime
resolve such a reference wherever the tensor sits: graph and subgraph initializers, sparse
initializers, any node attribute that carries a tensor (whatever its declared type), nodes of
model-local functions. ``check_external_data`` walks every one of those places and checks
each reference itself, whatever the onnx version: a relative location, no ``..`` out of the
folder, no symbolic link on the way (a link's target can lie outside the folder, or be
changed after the check), a regular file (no FIFO, device or folder), offset and length
whole numbers within the file. ``load_model`` runs that check before anything reads an
external file, and then reads the data itself from the checked files (onnx's own loader
never sees them), so every failure is one ``ModelError`` or ``InputError``.

Models too large for one protobuf keep their external-data references and are handed to
onnxruntime by path (see ``session.make_session``).

A ModelProto given in memory has no folder of its own: onnxruntime resolves its references
from the current directory, so that is the folder they are checked against.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any, NoReturn

import onnx
from onnx import ModelProto

from onnx_state.errors import InputError, ModelError

__all__ = [
    "LARGE_MODEL_BYTES",
    "ExternalTensor",
    "all_graphs",
    "all_initializers",
    "check_external_data",
    "external_bytes",
    "external_location",
    "has_external_data",
    "is_external",
    "load_model",
    "load_model_hashed",
    "model_sha256",
]

# Above this, a model is handed to onnxruntime as a file (protobuf's 2 GB limit).
LARGE_MODEL_BYTES = 1_800_000_000

# The keys onnx accepts in a tensor's external_data (onnxruntime refuses any other).
_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
# onnxruntime reads a tensor with this location from a raw memory address (its offset).
_ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"
_RESAVE = "re-save the model with onnx.save_model(..., save_as_external_data=True)"


@dataclass(frozen=True, eq=False)
class ExternalTensor:
    """One tensor whose data lives in a file, with the checked file it refers to.

    *where* names the tensor and its place in the model; *path* is the data file (inside
    the folder, every component checked); *identity* its ``(st_dev, st_ino)`` and *size* its
    size when checked; *length* None means to the end of the file; *top_level* says the
    tensor is one of the main graph's own initializers.
    """

    where: str
    tensor: onnx.TensorProto
    location: str
    path: Path
    offset: int
    length: int | None
    size: int
    identity: tuple[int, int]
    top_level: bool


# -- where tensors live -----------------------------------------------------------------------
def _tensor_sites(model: ModelProto) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    """(where, tensor, top_level) for every tensor onnx or onnxruntime could load."""
    yield from _graph_sites(model.graph, "", top=True)
    for function in model.functions:
        label = f"{function.domain}.{function.name}" if function.domain else function.name
        inside = f" in function {label!r}"
        yield from _node_sites(function.node, inside)
        for attr in function.attribute_proto:  # default values of the function's attributes
            yield from _attribute_sites(attr, f"default attribute {attr.name!r}{inside}")
    for i, info in enumerate(model.training_info):
        for field in ("initialization", "algorithm"):
            if info.HasField(field):
                graph = getattr(info, field)
                yield from _graph_sites(graph, f" in training_info[{i}].{field}", top=False)


def _graph_sites(
    graph: onnx.GraphProto, inside: str, top: bool
) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    for tensor in graph.initializer:
        yield f"initializer {tensor.name!r}{inside}", tensor, top
    for sparse in graph.sparse_initializer:
        yield from _sparse_sites(sparse, f"sparse initializer {sparse.values.name!r}{inside}")
    yield from _node_sites(graph.node, inside)


def _node_sites(
    nodes: Iterable[onnx.NodeProto], inside: str
) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    for node in nodes:
        label = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
        for attr in node.attribute:
            yield from _attribute_sites(attr, f"attribute {attr.name!r} of {label}{inside}")


def _attribute_sites(
    attr: onnx.AttributeProto, here: str
) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    """Every tensor field that is set, whatever the attribute's declared type says."""
    if attr.HasField("t"):
        yield here, attr.t, False
    for i, tensor in enumerate(attr.tensors):
        yield f"{here} (tensor {i})", tensor, False
    if attr.HasField("sparse_tensor"):
        yield from _sparse_sites(attr.sparse_tensor, here)
    for i, sparse in enumerate(attr.sparse_tensors):
        yield from _sparse_sites(sparse, f"{here} (sparse tensor {i})")
    if attr.HasField("g"):
        yield from _graph_sites(attr.g, f" in subgraph {here}", top=False)
    for i, graph in enumerate(attr.graphs):
        yield from _graph_sites(graph, f" in subgraph {i} of {here}", top=False)


def _sparse_sites(
    sparse: onnx.SparseTensorProto, here: str
) -> Iterator[tuple[str, onnx.TensorProto, bool]]:
    yield f"{here} (values)", sparse.values, False
    yield f"{here} (indices)", sparse.indices, False


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether *tensor* refers to external data."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_location(tensor: onnx.TensorProto) -> str | None:
    """The ``location`` of an external *tensor*'s data (the last one given), or None."""
    return next((e.value for e in reversed(tensor.external_data) if e.key == "location"), None)


def all_initializers(model: ModelProto) -> Iterable[onnx.TensorProto]:
    """Every tensor of the model: initializers (sparse ones' values and indices), tensors
    carried by node attributes, in subgraphs and model-local functions too."""
    return (tensor for _, tensor, _ in _tensor_sites(model))


def has_external_data(model: ModelProto) -> bool:
    """Whether any tensor of the model, wherever it sits, refers to external data."""
    return any(is_external(tensor) for tensor in all_initializers(model))


def all_graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """*graph* and every subgraph of its control-flow nodes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_graphs(g)


# -- checking one reference -------------------------------------------------------------------
def check_external_data(
    model: ModelProto,
    base_dir: str | os.PathLike[str],
    *,
    source: str | None = None,
    folder: str = "the model's folder",
) -> list[ExternalTensor]:
    """Check every external-data reference of *model* against the folder *base_dir*.

    Each must name, relative to *base_dir*, a regular file inside it, reached without a
    symbolic link, with offset and length (non-negative integers) inside the file. Raises
    one ModelError naming the tensor, the file and the fix for the first that does not;
    returns the checked references. *source* names the model in messages, *folder* the
    folder.
    """
    base = Path(base_dir).resolve()
    model_name = f" of {source}" if source else ""
    return [
        _check_tensor(f"{where}{model_name}", tensor, base, top, f"{folder} {base}")
        for where, tensor, top in _tensor_sites(model)
        if is_external(tensor)
    ]


def _check_tensor(
    where: str, tensor: onnx.TensorProto, base: Path, top: bool, folder: str
) -> ExternalTensor:
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in _KEYS:
            raise ModelError(
                f"{where} has the unknown external-data key {entry.key!r} (onnx knows "
                f"{', '.join(sorted(_KEYS))}); remove it or {_RESAVE}"
            )
        if entry.key in entries:  # onnx reads the last one, a check might read the first
            raise ModelError(
                f"{where} has the external-data key {entry.key!r} twice "
                f"({entries[entry.key]!r} and {entry.value!r}); keep one, or {_RESAVE}"
            )
        entries[entry.key] = entry.value
    location = entries.get("location", "")
    if not location:
        raise ModelError(
            f"{where} is stored as external data but names no file (no location); {_RESAVE}"
        )
    path, st = _check_location(where, location, base, folder)
    offset = _whole_number(where, location, "offset", entries.get("offset"))
    length = _whole_number(where, location, "length", entries.get("length"))
    offset = offset or 0
    if offset > st.st_size:
        raise ModelError(
            f"{where} has external-data offset {offset}, past the end of {location!r} "
            f"({st.st_size} bytes); the data file is truncated or belongs to another model: "
            f"{_RESAVE}"
        )
    if length is not None and offset + length > st.st_size:
        raise ModelError(
            f"{where} has {length} bytes of external data at offset {offset} of {location!r}, "
            f"past its end ({st.st_size} bytes); the data file is truncated or belongs to "
            f"another model: {_RESAVE}"
        )
    return ExternalTensor(
        where, tensor, location, path, offset, length, st.st_size, (st.st_dev, st.st_ino), top
    )


def _whole_number(where: str, location: str, key: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):  # int() would take " +1_0" too
        raise ModelError(
            f"{where} has external-data {key} {value!r} for {location!r}, which is not a "
            f"non-negative whole number; fix the {key} or {_RESAVE}"
        )
    return int(value)


def _check_location(
    where: str, location: str, base: Path, folder: str
) -> tuple[Path, os.stat_result]:
    """The file *location* names under *base*, walked one component at a time."""

    def refuse(problem: str, fix: str) -> NoReturn:
        raise ModelError(f"{where} refers to external data {location!r}, which {problem}; {fix}")

    if location == _ORT_MEMORY_TAG:
        refuse(
            "is onnxruntime's tag for data at a raw memory address, not a file",
            f"a model file must keep its data in files: {_RESAVE}",
        )
    if "\0" in location:
        refuse("contains a NUL character", "fix the location")
    if location.endswith(("/", os.sep)):
        refuse("ends with a slash", "give the name of the data file")
    if PurePath(location).anchor:
        refuse(
            f"is an absolute path, outside {folder}",
            "move the data file next to the model and give its name relative to the model",
        )
    current, depth = base, 0
    parts = PurePath(location).parts
    st: os.stat_result | None = None
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            if depth == 0:
                refuse(
                    f"is outside {folder}",
                    "move the data file next to the model and give its name",
                )
            current, depth = current.parent, depth - 1
            continue
        current, depth = current / part, depth + 1
        shown = current.relative_to(base)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            refuse(
                f"does not exist in {folder}",
                "put the data file next to the model, or re-export the model with its data",
            )
        except OSError as exc:
            refuse(f"cannot be checked ({exc.strerror or exc})", "fix the location")
        if stat.S_ISLNK(st.st_mode):
            refuse(
                f"goes through the symbolic link {str(shown)!r}: links are refused, even to a "
                "file inside the folder, since their target can lie outside it or be changed "
                "after the check",
                "put the file itself in place of the link",
            )
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            refuse(f"does not exist: {str(shown)!r} is not a folder", "fix the location")
    if depth == 0 or st is None:
        refuse("is the model's folder itself, not a file", "give the name of the data file")
    if stat.S_ISDIR(st.st_mode):
        refuse("is a folder, not a file", "give the name of the data file inside it")
    if not stat.S_ISREG(st.st_mode):
        refuse(
            f"is not a regular file (a {_file_kind(st.st_mode)})",
            "external data must be a plain file next to the model",
        )
    return current, st


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return kind
    return "special file"


def external_bytes(model: ModelProto, base_dir: str | os.PathLike[str]) -> int:
    """Bytes of external data a model refers to (each file counted once), after checking
    every reference (see ``check_external_data``)."""
    return _file_bytes(check_external_data(model, base_dir))


def _file_bytes(tensors: Iterable[ExternalTensor]) -> int:
    return sum({t.identity: t.size for t in tensors}.values())


# -- reading ----------------------------------------------------------------------------------
def _changed(ext: ExternalTensor, what: str) -> NoReturn:
    raise ModelError(
        f"{ext.where}: the external data file {ext.location!r} {what} since it was "
        "checked; load the model again once nothing is writing to its folder"
    )


def _open_checked(ext: ExternalTensor) -> tuple[IO[bytes], int]:
    """The very file that was checked, open for reading, and the reference's length."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in must not block the open
    try:
        fd = os.open(ext.path, flags)
    except OSError as exc:
        raise ModelError(
            f"{ext.where}: cannot read its external data file {ext.location!r} "
            f"({exc.strerror or exc}); check the file's permissions"
        ) from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ext.identity:
        f.close()
        _changed(ext, "was replaced")
    length = st.st_size - ext.offset if ext.length is None else ext.length
    if ext.offset + length > st.st_size:
        f.close()
        _changed(ext, "shrank")
    return f, length


def _read_external(ext: ExternalTensor) -> bytes:
    """The bytes of one checked reference, read from the very file that was checked."""
    f, length = _open_checked(ext)
    with f:
        try:
            f.seek(ext.offset)
            data = f.read(length)
        except OSError as exc:
            raise ModelError(
                f"{ext.where}: cannot read its external data file {ext.location!r} "
                f"({exc.strerror or exc})"
            ) from None
    if len(data) != length:
        _changed(ext, "shrank")
    return data


def _load_external(tensors: Iterable[ExternalTensor]) -> None:
    """Put each tensor's checked data into the proto: the tensor becomes what it was before
    it was saved with external data."""
    for ext in tensors:
        ext.tensor.raw_data = _read_external(ext)
        ext.tensor.ClearField("data_location")
        del ext.tensor.external_data[:]


# -- the model file ---------------------------------------------------------------------------
def _read_model(path: Path, digest: Any = None) -> tuple[ModelProto, int]:
    """Parse the model file at *path* (external data not loaded); the proto and its size.

    *digest* (a hashlib object), when given, is fed the file's bytes.
    """
    shown = repr(str(path))
    fix = "give the path to a .onnx file"
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"model file {shown} does not exist; {fix}") from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"model file {shown} cannot be opened ({getattr(exc, 'strerror', None) or exc}); {fix}"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"model path {shown} is a folder, not a file; {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"model path {shown} is not a regular file (a {_file_kind(st.st_mode)}); {fix}"
        )
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InputError(f"model path {shown} is no longer a regular file; {fix}")
            data = f.read()
    except OSError as exc:
        raise InputError(f"model file {shown} cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ModelError(
            f"model file {shown} is empty (0 bytes); export or download the model again"
        )
    if digest is not None:
        digest.update(data)
    ext = os.path.splitext(path)[1]
    fmt = onnx.serialization.registry.get_format_from_file_extension(ext) or "protobuf"
    try:
        proto = onnx.load_model_from_string(data, format=fmt)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(
            f"{path} is not a readable ONNX model ({exc.__class__.__name__}); {fix}"
        ) from None
    if not proto.HasField("graph"):
        raise ModelError(f"{path} is not a readable ONNX model (it has no graph); {fix}")
    return proto, len(data)


def load_model(
    model: str | os.PathLike[str] | ModelProto,
    load_external: bool = True,
    max_bytes: int | None = None,
) -> ModelProto:
    """Load a model file (checking every external-data reference) or pass a proto.

    Parameters
    ----------
    model:
        A path to a .onnx file, or a ModelProto (returned as it is, after its external-data
        references, if any, are checked against the current directory, from which
        onnxruntime resolves them).
    load_external:
        Load external data into the proto. It is loaded only when the model with its data
        stays within *max_bytes* (protobuf cannot serialize more than 2 GB); otherwise the
        main graph's initializers keep their references and the file is handed to
        onnxruntime by path. Tensors elsewhere (attributes, subgraphs, sparse initializers,
        functions) are always loaded: onnxruntime would otherwise resolve them from the
        current directory when the model is handed over as bytes.
    max_bytes:
        See *load_external*; None means no limit.

    Every reference is checked (see ``check_external_data``) before any external file is
    read, whatever *load_external* says; failures raise ModelError or InputError.
    """
    return _load(model, load_external, max_bytes, None, None)


def load_model_hashed(
    model: str | os.PathLike[str] | ModelProto, max_bytes: int | None = None
) -> tuple[ModelProto, str, bool]:
    """``load_model``, the model's SHA-256 (covering its external weights too), and whether
    onnxruntime can load the file by its path as it is.

    For a file, the hash is taken over the bytes as they are read: the model file, then the
    bytes of every external-data reference in model order (read from their files even where
    they stay references), so the model is never serialized for it. A proto in memory is
    hashed by ``model_sha256``. onnxruntime resolves external data from the model's folder
    only for the main graph's initializers, so a file with external tensors elsewhere must
    go to it as a loaded proto.
    """
    if isinstance(model, ModelProto):
        proto = load_model(model, max_bytes=max_bytes)
        return proto, model_sha256(proto), False
    digest = hashlib.sha256()
    sites: list[ExternalTensor] = []
    proto = _load(model, True, max_bytes, digest, sites)
    return proto, digest.hexdigest(), all(t.top_level for t in sites)


def _load(
    model: str | os.PathLike[str] | ModelProto,
    load_external: bool,
    max_bytes: int | None,
    digest: Any,
    sites: list[ExternalTensor] | None,
) -> ModelProto:
    if isinstance(model, ModelProto):
        _check_text(model, "the model given in memory")
        if has_external_data(model):
            check_external_data(
                model,
                Path.cwd(),
                source="the model given in memory (give its path to check its own folder)",
                folder="the current folder",
            )
        return model
    path = Path(model)
    proto, size = _read_model(path, digest)
    _check_text(proto, str(path))
    tensors = check_external_data(proto, path.parent, source=str(path))
    if sites is not None:
        sites.extend(tensors)
    if digest is not None:
        for ext in tensors:  # before loading: every reference, in model order
            _hash_external(ext, digest)
    if load_external and tensors:
        total = size + _file_bytes(tensors)
        keep = max_bytes is not None and total > max_bytes
        _load_external(t for t in tensors if not (keep and t.top_level))
    return proto


def _hash_external(ext: ExternalTensor, digest: Any, chunk: int = 1 << 24) -> None:
    """Feed one checked reference's bytes to *digest*, in chunks (weights may be GBs)."""
    f, length = _open_checked(ext)
    with f:
        try:
            f.seek(ext.offset)
            while length > 0:
                block = f.read(min(chunk, length))
                if not block:
                    break
                digest.update(block)
                length -= len(block)
        except OSError as exc:
            raise ModelError(
                f"{ext.where}: cannot read its external data file {ext.location!r} "
                f"({exc.strerror or exc})"
            ) from None
    if length:
        _changed(ext, "shrank")


def model_sha256(model: ModelProto, base_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of a model in memory: its deterministic serialization, then the bytes of
    every external-data reference it still holds (resolved in *base_dir*, default the
    current folder), so that weights kept in files are covered too."""
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    if has_external_data(model):
        for ext in check_external_data(model, base_dir or Path.cwd()):
            _hash_external(ext, digest)
    return digest.hexdigest()


def _check_text(model: ModelProto, source: str) -> None:
    """Refuse names that are not valid UTF-8 (protobuf hands them over as bytes)."""
    graph = model.graph
    texts = [graph.name]
    texts += [v.name for v in (*graph.input, *graph.output, *graph.value_info)]
    for node in graph.node:
        texts += [node.name, node.op_type, node.domain, *node.input, *node.output]
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ModelError(
            f"{source} holds a name that is not valid UTF-8 ({bad[:40]!r}); the file is "
            "damaged or not an ONNX model"
        )
