"""Load a model safely: external data must stay inside the model's folder.

Models too large for one protobuf keep their external-data references and are handed to
onnxruntime by path (see ``session.make_session``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import ModelProto

from onnx_state.errors import InputError, ModelError

__all__ = [
    "LARGE_MODEL_BYTES",
    "all_graphs",
    "check_external_data",
    "external_bytes",
    "load_model",
    "model_sha256",
]

# Above this, a model is handed to onnxruntime as a file (protobuf's 2 GB limit).
LARGE_MODEL_BYTES = 1_800_000_000


def check_external_data(model: ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations outside *base_dir* (absolute or escaping with ``..``)."""
    base = base_dir.resolve()
    for tensor in all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelError(
                f"initializer {tensor.name!r} points to external data {location!r} outside the "
                f"model's folder {base}; move the data file next to the model"
            )


def all_initializers(model: ModelProto) -> Iterable[onnx.TensorProto]:
    """Every initializer and tensor attribute of the model, subgraphs included."""
    for graph in all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


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


def external_bytes(model: ModelProto, base_dir: Path) -> int:
    """Bytes of external data a model refers to (each file counted once)."""
    files: set[str] = set()
    for tensor in all_initializers(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return sum((base_dir / f).stat().st_size for f in files if (base_dir / f).is_file())


def load_model(
    model: str | os.PathLike[str] | ModelProto,
    load_external: bool = True,
    max_bytes: int | None = None,
) -> ModelProto:
    """Load a model file (checking its external data stays in its folder) or pass a proto.

    Parameters
    ----------
    model:
        A path to a .onnx file, or a ModelProto (returned as it is).
    load_external:
        Load external data into the proto. It is loaded only when the model with its data
        stays within *max_bytes* (protobuf cannot serialize more than 2 GB); otherwise the
        tensors keep their references and the file is handed to onnxruntime by path.
    max_bytes:
        See *load_external*; None means no limit.
    """
    if isinstance(model, ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist; give the path to a .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    check_external_data(proto, path.parent)
    total = path.stat().st_size + external_bytes(proto, path.parent)
    if load_external and (max_bytes is None or total <= max_bytes):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except OSError as exc:
            raise ModelError(f"cannot read the external data of {path}: {exc}") from None
    return proto


def model_sha256(model: ModelProto) -> str:
    """Hash of the serialized model (deterministic serialization)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
