"""Fuzz tests: mutated models, data files, results stores, result JSON and counter input.

One property everywhere: a call either succeeds or raises an ``OnnxStateError``; no other
exception escapes. Where a call succeeds, its result is used a little further (a described
model is printed, a loaded store's metrics are finite and it saves and loads back, counts
add up and equal a numpy reference).

CI runs each test for a few seconds, derandomized (the same examples on every run) and
without shrinking. A longer, random run, with failures shrunk to a minimal example, takes the
number of examples per test from the environment:

    ONNX_STATE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from onnx import TensorProto, helper, numpy_helper

import onnx_state
from onnx_state.audit import Audit, audit
from onnx_state.capture import (
    META_INPUT_AXES,
    META_LAYER_NAME,
    META_LAYER_TYPE,
    META_NEURON_AXIS,
    METHODS,
    Instrumented,
    load_array,
    load_data,
    load_model,
    open_data,
)
from onnx_state.capture.describe import describe, describe_table
from onnx_state.compare import Comparison, compare
from onnx_state.errors import OnnxStateError
from onnx_state.separation import FORMULAS, SeparationResult, separation
from tests.models import conv_net, int_data
from tests.reference import reference_counts

# -- settings ---------------------------------------------------------------------------------
_LONG = os.environ.get("ONNX_STATE_FUZZ_EXAMPLES")
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings: *examples* derandomized examples in CI, not shrunk (a failure
    shows the example as generated, within seconds); with ONNX_STATE_FUZZ_EXAMPLES set,
    that many random examples per test, failures shrunk and kept in .hypothesis/."""
    if _LONG:
        return settings(max_examples=int(_LONG), deadline=None, suppress_health_check=_QUIET)
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=_QUIET,
    )


REFUSED: Any = object()  # what ``tolerated`` returns for an OnnxStateError


def tolerated(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), or REFUSED when it raised an OnnxStateError.

    Any other exception escapes: that is the bug these tests look for.
    """
    try:
        return call(*args, **kwargs)
    except OnnxStateError:
        return REFUSED


# -- seeds ------------------------------------------------------------------------------------
N_SAMPLES = 12


@functools.cache
def seed_model() -> onnx.ModelProto:
    """x (N, 3, 8, 8) -> conv -> relu -> flat -> fc -> y (N, 5)."""
    return conv_net()[0]


@functools.cache
def seed_bytes() -> bytes:
    return seed_model().SerializeToString()


@functools.cache
def seed_x() -> np.ndarray:
    return int_data(N_SAMPLES)


@functools.cache
def seed_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, seed_x())
    return buf.getvalue()


def analyze_quietly(data: Any, **kwargs: Any) -> Any:
    """analyze() of the seed model on *data*, no parity run (it only costs a session)."""
    return tolerated(onnx_state.analyze, seed_model(), data, parity=False, **kwargs)


# -- strategies shared by several tests -------------------------------------------------------
texts = st.text(st.characters(codec="utf-8"), max_size=10)
small_ints = st.integers(-3, 20)
int64s = st.integers(-(2**63), 2**63 - 1)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=8,
)


class Blob(bytes):
    """File contents that print as how they were made, not as thousands of bytes."""

    log: tuple[str, ...]

    def __new__(cls, data: bytes, log: Any = ()) -> Blob:
        blob = super().__new__(cls, data)
        blob.log = (*getattr(data, "log", ()), *log)
        return blob

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes: {'; '.join(self.log) or 'as made'})"


@st.composite
def byte_edits(draw: Any, data: bytes, max_edits: int = 4) -> Blob:
    """*data* with a few random flips, deletions, insertions, overwrites or a truncation."""
    out = bytearray(data)
    log = []
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "splice"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        log.append(f"{kind}@{at}")
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del out[at:]
        elif kind == "splice" and out:  # a copy of another stretch (repeated fields, lengths)
            start = draw(st.integers(0, len(out) - 1))
            out[at:at] = out[start : start + draw(st.integers(1, 32))]
    return Blob(bytes(out), (*getattr(data, "log", ()), *log))


@st.composite
def json_edits(draw: Any, doc: Any, max_edits: int = 3) -> Any:
    """A deep copy of JSON-like *doc* with a few edits at random places inside it: a value
    replaced (by random JSON or a near miss of itself), a key or entry deleted or added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_edits))):
        box = [doc]  # the root sits in a box, so that it can be replaced too
        sites: list[tuple[Any, Any]] = [(box, 0)]

        def walk(node: Any, sites: list[tuple[Any, Any]] = sites) -> None:
            keys = list(node) if isinstance(node, dict) else range(len(node))
            for k in keys:
                sites.append((node, k))
                if isinstance(node[k], (dict, list)):
                    walk(node[k])

        if isinstance(doc, (dict, list)):
            walk(doc)
        parent, key = draw(st.sampled_from(sites))
        kind = draw(st.sampled_from(["replace", "near", "near", "delete", "add"]))
        if kind == "delete" and parent is not box:
            del parent[key]
        elif kind == "add" and isinstance(parent[key], dict):
            parent[key][draw(texts)] = draw(json_values)
        elif kind == "add" and isinstance(parent[key], list):
            parent[key].insert(draw(st.integers(0, len(parent[key]))), draw(json_values))
        elif kind == "near":
            parent[key] = draw(near_misses(parent[key]))
        else:
            parent[key] = draw(json_values)
        doc = box[0]
    return doc


def near_misses(value: Any) -> st.SearchStrategy[Any]:
    """Values close to *value* that a check may let through: off by one, other JSON types
    that compare equal, non-finite numbers, a list with an entry repeated, moved or lost."""
    common = st.sampled_from([None, True, False, 0, -1, 1.5, math.nan, math.inf, "", [], {}])
    if isinstance(value, bool):
        return st.sampled_from([not value, int(value), float(value), str(value).lower()])
    if isinstance(value, int):
        return (
            st.sampled_from([value + 1, value - 1, -value, float(value), str(value), 2**63])
            | common
        )
    if isinstance(value, float):
        return (
            st.sampled_from([value * 2, -value, value + 1e-9, math.nan, -math.inf, 2.0**1000])
            | common
        )
    if isinstance(value, str):
        return st.sampled_from([value + "x", value[:-1], value.upper(), f" {value}"]) | common
    if isinstance(value, list) and value:
        return (
            st.sampled_from(
                [value[:-1], value[1:], value[::-1], [*value, value[-1]], [value[0], *value]]
            )
            | common
        )
    return common


# =============================================================================================
# The model loader
# =============================================================================================
MODEL_SUFFIXES = [".onnx", ".onnx", ".onnx", ".pb", ".onnxtxt", ".json", ".textproto", ""]
ATTACH_TO = st.sampled_from(
    [None, "Conv", ["Conv", "MatMul"], "Relu", "fc", "flat", "r", "x", ["Conv", "Gemm"]]
)


def _write_model_folder(folder: Path, model_bytes: bytes, suffix: str, side: bytes) -> Path:
    """The model file, and files its external-data references may name."""
    path = folder / f"m{suffix}"
    path.write_bytes(model_bytes)
    (folder / "data.bin").write_bytes(side)
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(side[::-1])
    (folder / "link.bin").symlink_to("data.bin")
    return path


def _load_and_describe(path: Path) -> None:
    """load_model, describe and its table, instrument: each succeeds or is refused."""
    proto = tolerated(load_model, path)
    if proto is not REFUSED:
        assert isinstance(proto, onnx.ModelProto)
    info = tolerated(describe, path)
    if info is not REFUSED:
        json.dumps(info)  # plain data
        describe_table(info)


@fuzz(500)
@given(
    model=byte_edits(seed_bytes()),
    suffix=st.sampled_from(MODEL_SUFFIXES),
    side=st.binary(max_size=64),
)
def test_mutated_model_bytes(model, suffix, side):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_model_folder(Path(tmp), model, suffix, side)
        _load_and_describe(path)


# -- structured mutations of the seed model ---------------------------------------------------
ONNX_OPS = [
    "Conv", "Relu", "Flatten", "MatMul", "Gemm", "Transpose", "Reshape", "Squeeze", "Identity",
    "Add", "Cast", "Constant", "If", "Softmax", "MaxPool", "BatchNormalization", "Einsum",
    "QLinearConv", "Unsqueeze",
]  # fmt: skip
op_types = st.sampled_from(ONNX_OPS) | texts
ATTR_NAMES = [
    "perm", "axis", "axes", "kernel_shape", "pads", "strides", "dilations", "group", "to",
    "transA", "transB", "value", "then_branch", "else_branch", "body", "allowzero",
]  # fmt: skip
EXT_KEYS = st.sampled_from(["location", "offset", "length", "checksum", "basepath"]) | texts
EXT_VALUES = (
    st.sampled_from(
        [
            "data.bin", "./data.bin", "sub/data.bin", "sub//data.bin", "sub/./data.bin",
            "sub/../data.bin", "../data.bin", "link.bin", "sub", ".", "m.onnx", "missing.bin",
            "data.bin/x", "/etc/hostname", "", "*/_ORT_MEM_ADDR_/*", "a\0b", "sub/",
            "0", "4", "16", "64", "-1", " 1", "1_0", "١", "99999999999999999999",
        ]
    )
    | texts
    | st.integers(0, 2**70).map(str)
)  # fmt: skip
elem_types = st.sampled_from(range(0, 27)) | st.integers(-(2**31), 2**31 - 1)
dims = st.lists(
    st.one_of(int64s, small_ints, texts, st.none()), max_size=5
)  # int: dim_value, str: dim_param, None: neither


def _set_shape(tt: onnx.TypeProto.Tensor, shape: list[Any]) -> None:
    tt.shape.ClearField("dim")
    for d in shape:
        dim = tt.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def _tensor(draw: Any) -> onnx.TensorProto:
    """A small tensor, perhaps of a wrong type, shape or size, perhaps external."""
    t = numpy_helper.from_array(
        np.asarray(draw(st.lists(st.floats(-4, 4, width=32), max_size=6)), np.float32),
        draw(texts),
    )
    if draw(st.booleans()):
        t.data_type = draw(elem_types)
    if draw(st.booleans()):
        t.dims[:] = draw(st.lists(int64s | small_ints, max_size=4))
    if draw(st.booleans()):
        _make_external(draw, t)
    return t


def _make_external(draw: Any, t: onnx.TensorProto) -> None:
    t.data_location = TensorProto.EXTERNAL
    if draw(st.booleans()):
        t.ClearField("raw_data")
    for key, value in draw(st.lists(st.tuples(EXT_KEYS, EXT_VALUES), max_size=4)):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def _pick(draw: Any, items: Any) -> Any:
    return items[draw(st.integers(0, len(items) - 1))] if len(items) else None


def _names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    found = [vi.name for vi in [*g.input, *g.output, *g.value_info]]
    found += [t.name for t in g.initializer]
    found += [o for n in g.node for o in [*n.input, *n.output]]
    return sorted(set(found))


def _mutate_once(draw: Any, m: onnx.ModelProto) -> str:
    """One structured change to *m*; what it changed, in a few words."""
    g = m.graph
    names = st.sampled_from([*_names(m), ""]) | texts
    kind = draw(
        st.sampled_from(
            [
                "op_type", "node_name", "node_inputs", "node_outputs", "drop_node", "dup_node",
                "input_type", "input_dims", "input_kind", "drop_input", "add_input",
                "output_type", "output_dims", "drop_output", "value_info", "init_type",
                "init_dims", "init_data", "init_name", "init_external", "attribute",
                "model_meta", "node_meta", "opset", "ir_version", "subgraph", "function",
                "sparse", "training", "clear",
            ]
        )
    )  # fmt: skip
    node = _pick(draw, g.node)
    where = f"{kind} ({node.name or node.op_type})" if node is not None else kind
    if kind == "op_type" and node is not None:
        node.op_type = draw(op_types)
        if draw(st.booleans()):
            node.domain = draw(st.sampled_from(["", "ai.onnx", "com.microsoft", "x"]) | texts)
    elif kind == "node_name" and node is not None:
        node.name = draw(names)
    elif kind in ("node_inputs", "node_outputs") and node is not None:
        field = node.input if kind == "node_inputs" else node.output
        action = draw(st.sampled_from(["drop", "add", "replace", "clear"]))
        if action == "drop" and len(field):
            del field[draw(st.integers(0, len(field) - 1))]
        elif action == "add":
            field.append(draw(names))
        elif action == "replace" and len(field):
            field[draw(st.integers(0, len(field) - 1))] = draw(names)
        elif action == "clear":
            del field[:]
    elif kind == "drop_node" and len(g.node):
        del g.node[draw(st.integers(0, len(g.node) - 1))]
    elif kind == "dup_node" and node is not None:
        g.node.append(node)
    elif kind in ("input_type", "output_type", "input_dims", "output_dims"):
        infos = g.input if kind.startswith("input") else g.output
        vi = _pick(draw, infos)
        if vi is not None and kind.endswith("type"):
            vi.type.tensor_type.elem_type = draw(elem_types)
        elif vi is not None:
            if draw(st.booleans()):
                vi.type.tensor_type.ClearField("shape")
            else:
                _set_shape(vi.type.tensor_type, draw(dims))
    elif kind == "input_kind" and len(g.input):
        vi = g.input[draw(st.integers(0, len(g.input) - 1))]
        choice = draw(st.sampled_from(["none", "sequence", "map", "optional", "sparse"]))
        vi.ClearField("type")
        if choice == "sequence":
            vi.type.sequence_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
        elif choice == "map":
            vi.type.map_type.key_type = TensorProto.INT64
            vi.type.map_type.value_type.tensor_type.elem_type = TensorProto.FLOAT
        elif choice == "optional":
            vi.type.optional_type.elem_type.tensor_type.elem_type = TensorProto.FLOAT
        elif choice == "sparse":
            vi.type.sparse_tensor_type.elem_type = TensorProto.FLOAT
    elif kind == "drop_input" and len(g.input):
        del g.input[draw(st.integers(0, len(g.input) - 1))]
    elif kind == "drop_output" and len(g.output):
        del g.output[draw(st.integers(0, len(g.output) - 1))]
    elif kind in ("add_input", "value_info"):
        vi = (g.input if kind == "add_input" else g.value_info).add()
        vi.name = draw(names)
        vi.type.tensor_type.elem_type = draw(elem_types)
        _set_shape(vi.type.tensor_type, draw(dims))
    elif kind.startswith("init") and len(g.initializer):
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        if kind == "init_type":
            t.data_type = draw(elem_types)
        elif kind == "init_dims":
            t.dims[:] = draw(st.lists(int64s | small_ints, max_size=5))
        elif kind == "init_data":
            t.raw_data = draw(byte_edits(t.raw_data) | st.binary(max_size=32))
        elif kind == "init_name":
            t.name = draw(names)
        else:
            _make_external(draw, t)
    elif kind == "attribute":
        snapshot = onnx.GraphProto()
        snapshot.CopyFrom(g)
        target = node if node is not None else g.node.add(op_type=draw(op_types))
        attr = target.attribute.add()
        attr.name = draw(st.sampled_from(ATTR_NAMES) | texts)
        attr.type = draw(st.sampled_from(range(0, 15)))
        value = draw(st.sampled_from(["i", "f", "s", "ints", "floats", "strings", "t", "g"]))
        if value == "i":
            attr.i = draw(int64s | small_ints)
        elif value == "f":
            attr.f = draw(st.floats(width=32))
        elif value == "s":
            attr.s = draw(st.binary(max_size=8))
        elif value == "ints":
            attr.ints[:] = draw(st.lists(small_ints | int64s, max_size=5))
        elif value == "floats":
            attr.floats[:] = draw(st.lists(st.floats(width=32), max_size=3))
        elif value == "strings":
            attr.strings[:] = draw(st.lists(st.binary(max_size=4), max_size=3))
        elif value == "t":
            attr.t.CopyFrom(_tensor(draw))
        else:
            attr.g.CopyFrom(snapshot if draw(st.booleans()) else onnx.GraphProto(name="empty"))
    elif kind == "model_meta":
        p = m.metadata_props.add()
        p.key = draw(st.sampled_from([META_INPUT_AXES] * 3) | texts)
        axes = st.dictionaries(st.sampled_from(["x", "y", "c"]) | texts, json_values, max_size=3)
        p.value = draw(json_values.map(json.dumps) | axes.map(json.dumps) | texts)
    elif kind == "node_meta" and node is not None:
        p = node.metadata_props.add()
        p.key = draw(st.sampled_from([META_LAYER_NAME, META_LAYER_TYPE, META_NEURON_AXIS]))
        p.value = draw(
            st.sampled_from(["0", "1", "-1", "3", "9", "", "1.5", "x", "conv", "fc"])
            | st.integers().map(str)
            | texts
        )
    elif kind == "opset":
        if draw(st.booleans()) or not len(m.opset_import):
            m.opset_import.add(domain=draw(texts), version=draw(int64s | small_ints))
        else:
            m.opset_import[0].version = draw(int64s | st.integers(0, 30))
    elif kind == "ir_version":
        m.ir_version = draw(int64s | st.integers(0, 12))
    elif kind == "subgraph":
        body = onnx.GraphProto(name="body")
        if draw(st.booleans()):
            body.CopyFrom(g)
        if draw(st.booleans()):
            body.initializer.append(_tensor(draw))
        g.node.append(
            helper.make_node(
                "If", [draw(names)], [draw(names)], name=draw(texts),
                then_branch=body, else_branch=body,
            )
        )  # fmt: skip
    elif kind == "function":
        f = m.functions.add(name=draw(texts), domain=draw(st.sampled_from(["", "f"]) | texts))
        inner = f.node.add(op_type=draw(op_types), input=["a"], output=["b"])
        attr = inner.attribute.add(name="value", type=onnx.AttributeProto.TENSOR)
        attr.t.CopyFrom(_tensor(draw))
        f.input.append("a")
        f.output.append("b")
    elif kind == "sparse":
        s = g.sparse_initializer.add()
        s.values.CopyFrom(_tensor(draw))
        s.indices.CopyFrom(_tensor(draw))
        s.dims[:] = draw(st.lists(small_ints, max_size=3))
    elif kind == "training":
        info = m.training_info.add()
        info.initialization.initializer.append(_tensor(draw))
    elif kind == "clear":
        g.ClearField(draw(st.sampled_from(["node", "input", "output", "initializer"])))
    return where


@st.composite
def mutated_models(draw: Any, max_mutations: int = 4) -> Blob:
    """The seed model after a few structured mutations, serialized."""
    m = onnx.ModelProto()
    m.CopyFrom(seed_model())
    log = [_mutate_once(draw, m) for _ in range(draw(st.integers(1, max_mutations)))]
    return Blob(m.SerializeToString(), log)


@fuzz(250)
@given(
    model=mutated_models(),
    side=st.binary(max_size=64),
    attach_to=ATTACH_TO,
    method=st.sampled_from(METHODS),
)
def test_mutated_model_fields(model, side, attach_to, method):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_model_folder(Path(tmp), model, ".onnx", side)
        _load_and_describe(path)
        tolerated(onnx_state.instrument, path, attach_to=attach_to, method=method)
        # A ModelProto in memory: its external data is checked against the current folder.
        proto = onnx.ModelProto()
        proto.ParseFromString(model)
        cwd = os.getcwd()
        try:
            os.chdir(tmp)
            info = tolerated(describe, proto)
        finally:
            os.chdir(cwd)
        if info is not REFUSED:
            describe_table(info)


@fuzz(80)
@given(
    model=mutated_models(max_mutations=2),
    side=st.binary(min_size=16, max_size=64),
    attach_to=ATTACH_TO,
    method=st.sampled_from(METHODS),
    labels=st.none() | st.just(np.arange(N_SAMPLES) % 5),
)
def test_mutated_model_runs(model, side, attach_to, method, labels):
    """The whole path: an onnxruntime session for the instrumented model, and a run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_model_folder(Path(tmp), model, ".onnx", side)
        inst = tolerated(Instrumented, path, attach_to=attach_to, method=method, threads=1)
        if inst is REFUSED:
            return
        a = tolerated(
            onnx_state.analyze, path, seed_x(), labels=labels, attach_to=attach_to, method=method
        )
        if a is not REFUSED:
            _use_analysis(a)


# =============================================================================================
# The data loaders
# =============================================================================================
NPY_DESCRS = [
    "'<f4'", "'<f4'", "'<f4'", "'>f4'", "'<f8'", "'<f2'", "'|b1'", "'|u1'", "'<i4'", "'<i8'",
    "'<c8'", "'|O'", "'<U3'", "'|S2'", "'|V8'", "'<M8[s]'", "'<m8[D]'", "'f4'", "'float32'",
    "'<f16'", "'?'", "''", "'|V0'", "[('a', '<f4')]", "[('a', '|O')]", "[('a', '<f4', (2,))]",
    "{'names': ['a'], 'formats': ['<f4']}", "None", "4", "'<f4' + 'x'",
]  # fmt: skip
NPY_SHAPES = [
    "(12, 3, 8, 8)", "(12, 3, 8, 8)", "(6, 3, 8, 8)", "(0, 3, 8, 8)", "(12, 3, 8)", "()",
    "(12,)", "[12, 3, 8, 8]", "12", "None", "(1.5,)", "(-1, 3, 8, 8)", "(12, 3, 8, 8, 0)",
    "(2**62, 3, 8, 8)", "(9223372036854775807, 2)", "(True, 3, 8, 8)", "('12',)",
]  # fmt: skip
shape_texts = st.sampled_from(NPY_SHAPES) | st.lists(
    st.integers(-3, 12) | st.integers(-(2**64), 2**64), max_size=5
).map(lambda s: repr(tuple(s)))


@st.composite
def npy_files(draw: Any) -> bytes:
    """An .npy file whose magic, version, header dict text and payload may be wrong."""
    if draw(st.integers(0, 4)) == 0:
        return draw(byte_edits(seed_npy()))
    entries = {
        "descr": draw(st.sampled_from(NPY_DESCRS) | texts.map(repr)),
        "fortran_order": draw(st.sampled_from(["False", "False", "True", "0", "None", "'no'"])),
        "shape": draw(shape_texts),
    }
    for key in draw(st.lists(st.sampled_from(list(entries)), max_size=1)):
        del entries[key]
    if draw(st.integers(0, 5)) == 0:
        entries[draw(texts)] = draw(json_scalars.map(repr))
    header = "{" + "".join(f"{k!r}: {v}, " for k, v in entries.items()) + "}"
    if draw(st.integers(0, 9)) == 0:
        header = draw(texts)
    major, minor = draw(st.sampled_from([(1, 0)] * 4 + [(2, 0), (3, 0), (0, 0), (4, 0), (1, 1)]))
    raw = header.encode("utf-8" if major >= 3 else "latin1", "replace")
    size_format = "<H" if major == 1 else "<I"
    prefix = 6 + 2 + struct.calcsize(size_format)
    pad = -(prefix + len(raw) + 1) % 64
    raw = raw + b" " * pad + b"\n" if draw(st.booleans()) else raw
    length = len(raw)
    if draw(st.integers(0, 7)) == 0:
        length = draw(st.integers(0, 2 ** (8 * struct.calcsize(size_format)) - 1))
    magic = b"\x93NUMPY" if draw(st.integers(0, 9)) else draw(st.binary(min_size=6, max_size=6))
    payload = seed_x().tobytes()
    choice = draw(st.sampled_from(["whole", "whole", "cut", "more", "random"]))
    if choice == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif choice == "more":
        payload += draw(st.binary(min_size=1, max_size=64))
    elif choice == "random":
        payload = draw(st.binary(max_size=128))
    data = magic + bytes([major % 256, minor % 256]) + struct.pack(size_format, length)
    log = [f"magic {magic!r}", f"version {major}.{minor}", f"header length {length}"]
    log += [f"header {raw.rstrip()!r}", f"payload {choice} ({len(payload)} bytes)"]
    return Blob(data + raw + payload, log)


def _load_every_way(path: Path, key: str | None = None) -> None:
    """Every data entry point on *path*, then analyze(): each succeeds or is refused."""
    tolerated(load_data, path)
    tolerated(load_array, path)
    if key is not None:
        tolerated(load_array, path, key)
        tolerated(load_data, f"{path}:{key}")
    tolerated(open_data, path)
    tolerated(open_data, {"x": path})
    a = analyze_quietly(path)
    if a is not REFUSED:
        _use_analysis(a)
    a = analyze_quietly({"x": path})
    if a is not REFUSED:
        _use_analysis(a)


@fuzz(150)
@given(npy=npy_files())
def test_mutated_npy(npy):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(npy)
        _load_every_way(path)


@st.composite
def npz_files(draw: Any) -> Blob:
    """A zip of mutated .npy members (or not a zip at all), perhaps itself mutated."""
    kind = draw(st.sampled_from(["zip", "zip", "zip", "npy", "random", "empty"]))
    if kind == "npy":
        return draw(npy_files())
    if kind == "random":
        return Blob(draw(st.binary(max_size=256)), ["random bytes"])
    if kind == "empty":
        return Blob(b"", ["empty"])
    buf = io.BytesIO()
    member_names = st.sampled_from(["x.npy", "x.npy", "x", "y.npy", "a/x.npy", "x.npz"]) | texts
    members = draw(st.lists(st.tuples(member_names, npy_files()), max_size=3))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, content in members:
            z.writestr(name or "_", content)
    log = [f"zip {compression} of {[(name, c) for name, c in members]}"]
    data = Blob(buf.getvalue(), log)
    return draw(byte_edits(data)) if draw(st.booleans()) else data


@fuzz(150)
@given(npz=npz_files())
def test_mutated_npz(npz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        path.write_bytes(npz)
        _load_every_way(path, key="x")


@pytest.fixture(scope="module")
def seed_zarr(tmp_path_factory) -> Path:
    """Folders with a zarr array, a group of one array and a group of two."""
    import zarr

    root = tmp_path_factory.mktemp("zarr")
    x = seed_x()
    zarr.create_array(store=str(root / "array"), data=x, chunks=(5, 3, 8, 8))
    one = zarr.open_group(str(root / "group"), mode="w")
    one.create_array("x", data=x, chunks=(5, 3, 8, 8))
    two = zarr.open_group(str(root / "two"), mode="w")
    two.create_array("x", data=x, chunks=(5, 3, 8, 8))
    two.create_array("y", data=np.arange(N_SAMPLES) % 5)
    return root


ZARR_KEYS = [
    "shape", "data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value",
    "zarr_format", "node_type", "attributes", "dimension_names", "storage_transformers",
]  # fmt: skip
zarr_values = st.fixed_dictionaries(
    {},
    optional={
        "shape": st.lists(st.integers(-2, 13) | int64s, max_size=5) | json_values,
        "data_type": st.sampled_from(
            ["float32", "float64", "float16", "int8", "uint8", "bool", "complex64", "string",
             "bytes", "r16", "<f4", "|O", "object", "int64", "datetime64"]
        ) | json_values,
        "chunk_grid": st.fixed_dictionaries(
            {"name": st.sampled_from(["regular", "rectilinear"]) | texts},
            optional={"configuration": st.fixed_dictionaries(
                {"chunk_shape": st.lists(st.integers(-1, 13) | int64s, max_size=5)}
            ) | json_values},
        ) | json_values,
        "codecs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(
                    ["bytes", "zstd", "blosc", "gzip", "transpose", "crc32c",
                     "sharding_indexed", "vlen-utf8"]
                ) | texts},
                optional={"configuration": st.dictionaries(texts, json_values, max_size=3)
                          | st.fixed_dictionaries({"endian": st.sampled_from(["big", "x"])})
                          | st.fixed_dictionaries({"order": st.lists(small_ints, max_size=4)})},
            ),
            max_size=3,
        ) | json_values,
        "fill_value": json_values,
        "zarr_format": st.sampled_from([2, 3, 4, "3", None]),
        "node_type": st.sampled_from(["array", "group", "x", None]),
        "chunk_key_encoding": st.fixed_dictionaries(
            {"name": st.sampled_from(["default", "v2", "x"])},
            optional={"configuration": st.fixed_dictionaries(
                {"separator": st.sampled_from(["/", ".", "x", ""])}
            )},
        ) | json_values,
    },
)  # fmt: skip


def _read_json(path: Path) -> Any:
    """The JSON in *path*, or None when an earlier change left none there."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _mutate_zarr(draw: Any, folder: Path) -> None:
    """One change to a copied zarr folder: its metadata JSON, a chunk, a file gone."""
    metas = sorted(folder.rglob("zarr.json"))
    chunks = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")
    if not metas:
        return
    kind = draw(
        st.sampled_from(["keys", "keys", "keys", "edit", "edit", "bytes", "delete", "chunk", "v2"])
    )
    meta = draw(st.sampled_from(metas))
    if kind == "keys":
        doc = _read_json(meta)
        doc = doc if isinstance(doc, dict) else {}
        doc.update(draw(zarr_values))
        for key in draw(st.lists(st.sampled_from(ZARR_KEYS), max_size=2)):
            doc.pop(key, None)
        meta.write_text(json.dumps(doc))
    elif kind == "edit":
        meta.write_text(json.dumps(draw(json_edits(_read_json(meta)))))
    elif kind == "bytes":
        meta.write_bytes(draw(byte_edits(meta.read_bytes()) | st.binary(max_size=32)))
    elif kind == "delete":
        victim = draw(st.sampled_from(metas + chunks))
        victim.unlink()
    elif kind == "chunk" and chunks:
        chunk = draw(st.sampled_from(chunks))
        chunk.write_bytes(draw(byte_edits(chunk.read_bytes()) | st.binary(max_size=64)))
    elif kind == "v2":
        name = draw(st.sampled_from([".zarray", ".zgroup", ".zattrs"]))
        (meta.parent / name).write_text(json.dumps(draw(json_values)))
        if draw(st.booleans()):
            meta.unlink()


@fuzz(50)
@given(which=st.sampled_from(["array", "group", "two"]), data=st.data())
def test_mutated_zarr(seed_zarr, which, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.zarr"
        shutil.copytree(seed_zarr / which, path)
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_zarr(data.draw, path)
        _load_every_way(path, key="x")


# =============================================================================================
# The results store, and results read back from JSON
# =============================================================================================
def _use_analysis(a: onnx_state.Analysis) -> None:
    """What a caller does with an Analysis: every metric (finite), the table, the dict, a
    save and a load that reads it back unchanged."""
    for layer in a.layers:
        assert layer.n_unique == len(layer.state_counts) == len(layer.ids)
        assert int(layer.state_counts.sum()) == layer.state_count
        if layer.state_count:
            figures = [layer.entropy(), layer.efficiency(), layer.miller_madow()]
            figures += [layer.chao_shen(), layer.entropy(2), layer.entropy(0)]
            assert all(math.isfinite(f) for f in figures), figures
        assert a.layer(layer.name) is not None
        layer.summary()
    d = a.to_dict()
    a.table()
    if d["network_efficiency"] is not None:
        assert math.isfinite(d["network_efficiency"])
    with tempfile.TemporaryDirectory() as tmp:
        a.save(Path(tmp) / "again.zarr")
        back = onnx_state.Analysis.load(Path(tmp) / "again.zarr")
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def seed_store(tmp_path_factory) -> Path:
    """A valid results store of three layers (4, 144 and 5 neurons)."""
    a = onnx_state.analyze(
        seed_model(), seed_x(), attach_to=["Conv", "flat", "MatMul"],
        labels=np.arange(N_SAMPLES) % 5,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("store") / "results.zarr"
    a.save(path)
    return path


STORE_ATTRS = [
    "schema", "schema_version", "complete", "n_samples", "model_sha256", "data_fingerprint",
    "onnx_state_version", "accuracy", "parity_max_abs_diff", "network_efficiency", "aiq_beta2",
    "layer_order", "name", "tensor", "layer", "layer_type", "op_type", "kind", "neurons",
    "axis", "state_count", "nan_count",
]  # fmt: skip
stored_arrays = npst.arrays(
    st.sampled_from(["u1", "<i8", ">i8", "<i4", "<u8", "<f8", "?", "<u2"]).map(np.dtype),
    npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=20),
)


def _mutate_store(draw: Any, path: Path) -> None:
    """One change to a copied store: an attribute, an array, a file."""
    import zarr

    metas = sorted(path.rglob("zarr.json"))
    kind = draw(
        st.sampled_from(
            ["attr", "attr", "attr", "edit", "bytes", "array", "array", "cell", "cell",
             "delete", "chunk", "rename"]
        )
    )  # fmt: skip
    if kind in ("attr", "edit", "bytes"):
        if not metas:
            return
        meta = draw(st.sampled_from(metas))
        doc = _read_json(meta)
        if kind == "attr" and isinstance(doc, dict) and isinstance(doc.get("attributes"), dict):
            attrs = doc["attributes"]
            key = draw(st.sampled_from(sorted(attrs) or STORE_ATTRS) | st.sampled_from(STORE_ATTRS))
            action = draw(st.sampled_from(["near", "near", "random", "delete"]))
            if action == "delete":
                attrs.pop(key, None)
            elif action == "near" and key in attrs:
                attrs[key] = draw(near_misses(attrs[key]))
            else:
                attrs[key] = draw(json_values)
        elif kind == "edit":
            doc = draw(json_edits(doc))
        text = json.dumps(doc).encode()
        meta.write_bytes(text if kind != "bytes" else draw(byte_edits(text)))
    elif kind in ("array", "cell"):
        i, name = draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from(["state_ids", "counts"]))
        where = path / "layers" / str(i) / name
        if not (where / "zarr.json").exists():
            return
        if kind == "array":
            new = draw(stored_arrays)
        else:  # one value changed in place, dtype kept: the consistency checks
            try:
                new = np.array(zarr.open_array(str(where), mode="r")[...])
            except Exception:  # an earlier change broke it: nothing to change in place
                return
            if new.size and new.dtype.kind in "iu":
                flat = new.reshape(-1)
                info = np.iinfo(new.dtype)
                flat[draw(st.integers(0, flat.size - 1))] = draw(
                    st.integers(int(info.min), int(info.max))
                    | st.sampled_from([0, 1, -1, 2**8 - 1, 2**62]).filter(
                        lambda v: info.min <= v <= info.max
                    )
                )
        zarr.create_array(store=str(where), data=new, overwrite=True)
    elif kind == "delete" and any(path.iterdir()):
        victim = draw(st.sampled_from(sorted(path.rglob("*"))))
        if victim.is_dir():
            shutil.rmtree(victim)
        else:
            victim.unlink()
    elif kind == "chunk":
        chunks = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
        if chunks:
            chunk = draw(st.sampled_from(chunks))
            chunk.write_bytes(draw(byte_edits(chunk.read_bytes()) | st.binary(max_size=32)))
    elif kind == "rename":
        a, b = draw(st.sampled_from(["0", "1", "2"])), draw(st.sampled_from(["0", "3", "x", "-1"]))
        src, dst = path / "layers" / a, path / "layers" / b
        if src.exists() and not dst.exists():
            src.rename(dst)


@fuzz(50)
@given(data=st.data())
def test_mutated_store(seed_store, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.zarr"
        shutil.copytree(seed_store, path)
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_store(data.draw, path)
        a = tolerated(onnx_state.Analysis.load, path)
        if a is not REFUSED:
            _use_analysis(a)


@functools.cache
def seed_results() -> dict[str, dict[str, Any]]:
    """Valid JSON dicts of a separation (two splits), a comparison and two audits."""
    model, x = seed_model(), int_data(30)
    y = np.arange(len(x)) % 3
    sep = separation(
        model, x, labels=y, attach_to=["Conv", "MatMul"], samples_per_class=4,
        test_data=x[::-1], test_labels=y[::-1],
    )  # fmt: skip
    cmp = compare(model, model, x, attach_to=["Conv", "Relu"], labels=np.arange(len(x)) % 5)
    reference = onnx_state.analyze(model, x, attach_to=["Conv", "Relu"])
    plain = audit(model, x, attach_to=["Conv", "Relu"])
    against = audit(model, x[::2] * 2, reference=reference, attach_to=["Conv", "Relu"])
    out = {
        "separation": sep.to_dict(),
        "comparison": cmp.to_dict(),
        "audit": plain.to_dict(),
        "audit_reference": against.to_dict(),
    }
    return json.loads(json.dumps(out))  # what a JSON file holds


def _use_separation(r: SeparationResult) -> None:
    for split in r.cross:
        for layer in r.layers:
            for formula in FORMULAS:
                r.matrix(layer, split, formula)
                r.mean(layer, split, formula)
    r.table()
    SeparationResult.from_dict(json.loads(json.dumps(r.to_dict())))


def _use_comparison(c: Comparison) -> None:
    c.table()
    c.violations(0.5, 0.5, 0.5, 0.5)
    assert c.first_divergent is None or isinstance(c.first_divergent, str)
    Comparison.from_dict(json.loads(json.dumps(c.to_dict())))


def _use_audit(a: Audit) -> None:
    a.table()
    # the drift gates apply with a reference only (without one they are refused)
    a.violations(0.5, 0.5, *((0.5, 0.5, 0.5) if a.reference is not None else ()))
    Audit.from_dict(json.loads(json.dumps(a.to_dict())))


RESULT_KINDS = {
    "separation": (SeparationResult.from_dict, _use_separation),
    "comparison": (Comparison.from_dict, _use_comparison),
    "audit": (Audit.from_dict, _use_audit),
    "audit_reference": (Audit.from_dict, _use_audit),
}


@fuzz(600)
@given(kind=st.sampled_from(sorted(RESULT_KINDS)), data=st.data())
def test_mutated_result_dicts(kind, data):
    read, use = RESULT_KINDS[kind]
    d = data.draw(json_edits(seed_results()[kind]))
    result = tolerated(read, d)
    if result is not REFUSED:
        use(result)


# =============================================================================================
# The counter
# =============================================================================================
counted_dtypes = st.sampled_from(["<f2", "<f4", "<f8", "?", ">f4", ">f8", ">f2"]).map(np.dtype)
int_dtypes = npst.integer_dtypes(endianness="=") | npst.unsigned_integer_dtypes(endianness="=")
any_dtypes = st.one_of(
    counted_dtypes,
    counted_dtypes,
    int_dtypes,
    npst.scalar_dtypes(),
    npst.byte_string_dtypes(max_len=3),
    npst.unicode_string_dtypes(max_len=3),
)
any_arrays = npst.arrays(any_dtypes, npst.array_shapes(min_dims=0, max_dims=4, max_side=5))
not_arrays = st.one_of(
    st.recursive(st.floats() | st.booleans(), lambda c: st.lists(c, max_size=3), max_leaves=8),
    st.none(),
    texts,
    st.just({"x": 1}),
    st.just(object()),
)
axes = small_ints.map(lambda a: a - 8) | small_ints | st.integers() | small_ints.map(np.int64)


@st.composite
def views(draw: Any, x: np.ndarray) -> np.ndarray:
    """*x*, or a non-contiguous, read-only, broadcast or reordered view of it."""
    kind = draw(st.sampled_from(["same", "same", "T", "step", "swap", "fortran", "ro", "bcast"]))
    if kind == "T":
        return x.T
    if kind == "step" and x.ndim:
        return x[::2]
    if kind == "swap" and x.ndim >= 2:
        return np.swapaxes(x, 0, x.ndim - 1)
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "ro":
        y = x.view()
        y.flags.writeable = False
        return y
    if kind == "bcast":
        return np.broadcast_to(x, (2, *x.shape))
    return x


def _check_counts(counter: onnx_state.StateCounter, x: np.ndarray, axis: int) -> None:
    """The counter's table against the numpy reference of *x*."""
    ids, counts = counter.state_table()
    want_ids, want_counts = reference_counts(x, int(axis))
    assert counter.state_count == int(np.prod(x.shape)) // x.shape[axis]
    assert counter.n_unique == len(counts)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(counts, want_counts)
    assert counter.nan_count == (int(np.isnan(x).sum()) if x.dtype.kind == "f" else 0)


@fuzz(300)
@given(x=any_arrays | not_arrays, axis=axes, data=st.data())
def test_counter_update_and_count_states(x, axis, data):
    if isinstance(x, np.ndarray):
        x = data.draw(views(x))
    one = tolerated(onnx_state.StateCounter().update, x, axis)
    many = tolerated(onnx_state.count_states, x, axis, threads=2)
    assert (one is REFUSED) == (many is REFUSED), (one, many)
    if one is not REFUSED:
        assert one.state_table()[0].tobytes() == many.state_table()[0].tobytes()
        np.testing.assert_array_equal(one.counts(), many.counts())
        _check_counts(one, np.asarray(x), axis)


@fuzz(20)
@given(
    neurons=st.integers(1, 70),
    samples=st.integers(2, 3000),
    dtype=st.sampled_from(["<f2", "<f4", "<f8", "?", "i1", "u1", "<i4", "<i8"]).map(np.dtype),
    seed=st.integers(0, 2**32 - 1),
    threads=st.integers(1, 4),
)
def test_count_states_cut_into_shards(neurons, samples, dtype, seed, threads):
    """Arrays large enough that count_states cuts them into per-thread shards."""
    rows = max(samples, (2 << 17) // neurons + 1)
    x = np.random.default_rng(seed).standard_normal((rows, neurons)) * 3
    x = (np.abs(x) if dtype.kind == "u" else x).astype(dtype)
    if dtype.kind == "f":
        x[x > 2.5] = np.nan
    many = onnx_state.count_states(x, 1, threads=threads)
    one = onnx_state.StateCounter().update(x, 1)
    assert many.state_table()[0].tobytes() == one.state_table()[0].tobytes()
    np.testing.assert_array_equal(many.counts(), one.counts())
    assert many.nan_count == one.nan_count


int_arrays = npst.arrays(int_dtypes, npst.array_shapes(min_dims=2, max_dims=4, max_side=5))
likely_axes = st.integers(1, 3) | st.integers(1, 3) | axes  # mostly a neuron axis that fits
junk_zero_points = st.one_of(
    st.none(),
    st.integers(-(2**64), 2**64),
    npst.arrays(int_dtypes, st.integers(0, 6)),
    st.floats(),
    st.booleans(),
    texts,
    st.lists(st.integers(-300, 300), max_size=6),
)


@st.composite
def zero_points_for(draw: Any, x: np.ndarray, axis: Any) -> Any:
    """A zero point that fits *x* along *axis* (one value or one per neuron), or junk."""
    if x.ndim < 2 or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        return draw(junk_zero_points)
    scalar = npst.from_dtype(x.dtype)
    per_neuron = npst.arrays(x.dtype, x.shape[axis])
    return draw(st.one_of(scalar.map(int), per_neuron, junk_zero_points))


@fuzz(300)
@given(x=int_arrays, axis=likely_axes, threads=st.integers(1, 3), data=st.data())
def test_counter_with_any_zero_point(x, axis, threads, data):
    """Integer tensors and zero points of any kind: refused, or counted as numpy compares."""
    zero_point = data.draw(zero_points_for(x, axis))
    x = data.draw(views(x))
    counter = tolerated(onnx_state.StateCounter, zero_point=zero_point)
    if counter is REFUSED:
        return
    if tolerated(onnx_state.count_states, x, axis, threads=threads, counter=counter) is REFUSED:
        assert counter.state_count == 0
        return
    event("counted")
    ids, counts = counter.state_table()
    want_ids, want_counts = reference_counts(x, int(axis), counter.zero_point)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(counts, want_counts)


@fuzz(200)
@given(
    x=npst.arrays(np.uint8, npst.array_shapes(min_dims=2, max_dims=4, max_side=5)) | any_arrays,
    axis=likely_axes,
    pad=st.integers(-2, 9),
    threads=st.integers(1, 3),
    data=st.data(),
)
def test_packed_counter_on_any_input(x, axis, pad, threads, data):
    """Packed bytes: refused, or counted as the bits np.unpackbits gives back."""
    try:
        neurons = 8 * x.shape[axis] - pad  # mostly a width that fits; pad < 0 or >= 8 not
    except (IndexError, TypeError):
        neurons = pad
    x = data.draw(views(x))
    counter = tolerated(onnx_state.StateCounter, neurons, packed=True)
    if counter is REFUSED:
        return
    if tolerated(onnx_state.count_states, x, axis, threads=threads, counter=counter) is REFUSED:
        assert counter.state_count == 0
        return
    event("counted")
    bits = np.unpackbits(np.asarray(x), axis=int(axis), count=neurons, bitorder="little")
    _check_counts(counter, bits, axis)


small_batches = st.builds(
    np.ndarray.astype,
    npst.arrays(
        np.float16,
        st.tuples(st.integers(0, 6), st.integers(0, 24)),
        elements=st.floats(-1, 1, width=16) | st.just(math.nan),
    ),
    counted_dtypes,
)


@fuzz(250)
@given(
    neurons=st.none() | st.integers(-2, 30),
    record=st.booleans(),
    compressor=st.sampled_from(["blosc", "zstd"]) | texts,
    chunk_states=st.integers(-1, 5) | st.just(1 << 16),
    batches=st.lists(small_batches, max_size=3),
    others=st.lists(
        st.tuples(st.booleans(), st.lists(small_batches, max_size=2))
        | st.sampled_from([None, 0, "counter", np.zeros((2, 2), np.float32), "self"]),
        max_size=3,
    ),
    threads=st.none() | st.integers(-1, 3),
)
def test_counters_of_any_width_merge_or_refuse(
    neurons, record, compressor, chunk_states, batches, others, threads
):
    counter = tolerated(
        onnx_state.StateCounter,
        neurons,
        record=record,
        compressor=compressor,
        chunk_states=chunk_states,
    )
    if counter is REFUSED:
        return
    seen = 0
    for x in batches:
        if tolerated(counter.update, x, 1) is not REFUSED:
            seen += x.shape[0]
    for other in others:
        if isinstance(other, tuple):
            other_record, other_batches = other
            other = onnx_state.StateCounter(record=other_record)
            for x in other_batches:
                tolerated(other.update, x, 1)
        elif isinstance(other, str) and other == "self":
            other = counter
        before, added = counter.state_count, getattr(other, "state_count", 0)
        if tolerated(counter.merge, other) is not REFUSED:
            assert counter.state_count == before + added
            seen += added
        else:
            assert counter.state_count == before
    for x in batches:
        tolerated(onnx_state.count_states, x, 1, threads=threads, counter=counter)
    ids, counts = counter.state_table()
    assert int(counts.sum()) == counter.state_count and len(ids) == counter.n_unique
    assert counter.state_count >= seen
    if counter.records and counter.neurons:
        assert counter.states().shape == (counter.state_count, counter.neurons)


@pytest.mark.parametrize(
    "axis",
    [1.0, "1", None, 1.5, [1], np.float64(1)],
    ids=["1.0", "str", "None", "1.5", "list", "f64"],
)
def test_a_neuron_axis_that_is_no_integer(axis):
    x = np.ones((2, 3), np.float32)
    tolerated(onnx_state.StateCounter().update, x, axis)
    tolerated(onnx_state.count_states, x, axis, threads=2)
