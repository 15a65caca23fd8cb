"""Hand a loaded model's weights to onnxruntime without serializing them.

The instrumented model must reach onnxruntime as bytes (it has extra outputs the file lacks).
Serializing it with its weights costs protobuf's size pass and a copy of every weight: 43 ms
for 28 MB, more than building the session. onnxruntime also takes the contents of
external-data files from memory (``SessionOptions.add_external_initializers_from_files_in_
memory``) and copies what it needs while the session is built. ``detach_weights`` moves the
``raw_data`` of each large main-graph initializer out of the proto into a buffer of its own,
leaving a reference to a "file" of a name no other tensor uses, which exists only in that
table: nothing on disk is read for it, so what runs is exactly the bytes that were loaded
and hashed. Once the session exists, ``DetachedWeights.forget`` leaves those tensors empty
(their data lives in onnxruntime), or ``restore`` puts the bytes back when the build failed.

Memory: protobuf's Python API hands out each ``raw_data`` as a copy, and frees a message's
memory only with the message, so ``session.Instrumented`` swaps the loaded proto for a copy
made after the weights left it (``DetachedWeights.move_to``) and lets the loaded one go
before the build: the weights then exist twice while the session is built (the buffers,
onnxruntime's copy), not three times as when the model was serialized (the proto, the
serialized bytes, onnxruntime).

Only a model that onnxruntime resolves by name alone is detached (``can_detach``): given a
table of in-memory files, onnxruntime 1.32 looks every external reference up in it, so a
model with references to files on disk keeps the serialized route, and so does one whose
initializer names are not unique (onnxruntime keeps one tensor per name; the other would be
looked up on disk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import ModelProto

__all__ = ["DetachedWeights", "can_detach", "detach_weights", "memory_files_supported"]

# The prefix of the in-memory "file" of each detached tensor (a plain relative file name,
# as onnxruntime's checks of external-data locations require).
_PREFIX = "onnx_state-detached-"


def memory_files_supported() -> bool:
    """Whether this onnxruntime takes external-data files from memory."""
    import onnxruntime as ort

    return hasattr(ort.SessionOptions, "add_external_initializers_from_files_in_memory")


@dataclass
class DetachedWeights:
    """The weights ``detach_weights`` took out of a proto, as in-memory external-data files."""

    tensors: list[onnx.TensorProto] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # in the main graph's initializers

    def move_to(self, model: ModelProto) -> None:
        """Refer to the tensors of *model*, a copy of the proto they were detached from."""
        self.tensors = [model.graph.initializer[i] for i in self.positions]

    def files(self) -> tuple[list[str], list[bytes], list[int]]:
        """(names, contents, lengths): ``add_external_initializers_from_files_in_memory``."""
        return list(self.names), list(self.buffers), [len(b) for b in self.buffers]

    def forget(self) -> None:
        """Drop the bytes: each tensor keeps its name, type and shape, and no data (as
        ``session._drop_weights`` leaves a tensor)."""
        for tensor in self.tensors:
            del tensor.external_data[:]
            tensor.ClearField("data_location")  # (detach_weights took only tensors without)
        self.buffers.clear()

    def restore(self) -> None:
        """Put the bytes back into their tensors, as they were before ``detach_weights``."""
        for tensor, data in zip(self.tensors, self.buffers):
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            tensor.raw_data = data
        self.buffers.clear()


def can_detach(model: ModelProto) -> bool:
    """Whether *model* can go to onnxruntime with detached weights: it refers to no external
    data (wherever a tensor sits: see ``load.has_external_data``), and no main-graph
    initializer shares its name with another, a sparse initializer or a node's output."""
    from onnx_state.capture import load

    if load.has_external_data(model):
        return False
    graph = model.graph
    names = [t.name for t in graph.initializer]
    others = {s.values.name for s in graph.sparse_initializer}
    others.update(out for node in graph.node for out in node.output)
    return len(set(names)) == len(names) and others.isdisjoint(names)


def detach_weights(model: ModelProto, min_bytes: int = 1024) -> DetachedWeights:
    """Move the ``raw_data`` of every main-graph initializer of *model* holding at least
    *min_bytes* into a ``DetachedWeights`` (in place), each tensor left referring to its
    in-memory file. Tensors already external (or spelling out a data location), or with
    typed data fields, stay as they are."""
    detached = DetachedWeights()
    try:
        _detach(model, min_bytes, detached)
    except BaseException:  # (an interrupt, or memory for the copies): the proto as it was
        detached.restore()
        raise
    return detached


def _detach(model: ModelProto, min_bytes: int, detached: DetachedWeights) -> None:
    for i, tensor in enumerate(model.graph.initializer):
        # (a tensor that spells out data_location, or has external_data entries, is left as
        # it is: restore could not tell how it was written)
        if tensor.HasField("data_location") or tensor.external_data:
            continue
        if len(tensor.raw_data) < min_bytes:
            continue
        data = tensor.raw_data
        name = f"{_PREFIX}{i}.bin"
        # listed first: restore() can then undo a tensor caught half-way
        detached.tensors.append(tensor)
        detached.buffers.append(data)
        detached.names.append(name)
        detached.positions.append(i)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", name), ("offset", "0"), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
