"""capture.load: every external-data reference, wherever its tensor sits, must be a regular
file inside the model's folder; bad model paths and files are one clear error each."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import onnx_state
from onnx_state import capture
from onnx_state.capture import load
from onnx_state.errors import InputError, ModelError, OnnxStateError
from tests.cli import run_cli
from tests.models import OPSET, conv_net, int_data

F32 = np.float32


# -- models with a tensor in every place onnx or onnxruntime loads one from -------------------
def _value(name: str, shape: list[object]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def every_site_model(function_default: bool = False) -> onnx.ModelProto:
    """x(N,3) + C (Constant) + S (sparse) + T (If branch initializer) + K (function's
    Constant); with *function_default*, K is the default of a function attribute."""
    c = numpy_helper.from_array(np.array([1, 2, 3], F32), "C")
    t = numpy_helper.from_array(np.array([10, 20, 30], F32), "T")
    k = numpy_helper.from_array(np.array([100, 200, 300], F32), "K")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5, 7], F32), "S"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "S_indices"),
        [3],
    )
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["a2", "T"], ["t_out"], name="then_add")],
        "then",
        [],
        [_value("t_out", ["N", 3])],
        [t],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["a2"], ["e_out"], name="else_id")],
        "else",
        [],
        [_value("e_out", ["N", 3])],
    )
    if function_default:
        body_const = helper.make_node("Constant", [], ["kk"], name="f_const")
        ref = AttributeProto(name="value", ref_attr_name="k", type=AttributeProto.TENSOR)
        body_const.attribute.append(ref)
        defaults = [helper.make_attribute("k", k)]
    else:
        body_const = helper.make_node("Constant", [], ["kk"], name="f_const", value=k)
        defaults = []
    function = helper.make_function(
        "local",
        "AddK",
        ["fx"],
        ["fy"],
        [body_const, helper.make_node("Add", ["fx", "kk"], ["fy"], name="f_add")],
        OPSET,
        attributes=[],
    )
    function.attribute_proto.extend(defaults)
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const", value=c),
        helper.make_node("Add", ["x", "c"], ["a1"], name="add_c"),
        helper.make_node("Add", ["a1", "S"], ["a2"], name="add_s"),
        helper.make_node(
            "If", ["cond"], ["a3"], name="branch", then_branch=then_branch, else_branch=else_branch
        ),
        helper.make_node("AddK", ["a3"], ["y"], name="call_k", domain="local"),
    ]
    graph = helper.make_graph(
        nodes,
        "sites",
        [_value("x", ["N", 3])],
        [_value("y", ["N", 3])],
        [numpy_helper.from_array(np.array(True), "cond")],
        sparse_initializer=[sparse],
    )
    return helper.make_model(
        graph, opset_imports=[*OPSET, helper.make_opsetid("local", 1)], functions=[function]
    )


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)


SITES: dict[str, Callable[[onnx.ModelProto], TensorProto]] = {
    "constant": lambda m: _attr(m.graph.node[0], "value").t,
    "sparse values": lambda m: m.graph.sparse_initializer[0].values,
    "sparse indices": lambda m: m.graph.sparse_initializer[0].indices,
    "if branch initializer": lambda m: _attr(m.graph.node[3], "then_branch").g.initializer[0],
    "function node attribute": lambda m: _attr(m.functions[0].node[0], "value").t,
}


def externalize(tensor: TensorProto, folder: Path, location: str = "d.bin") -> None:
    """Move *tensor*'s bytes to the end of *folder*/*location* and refer to them there."""
    data = tensor.raw_data
    with open(folder / location, "ab") as f:
        offset = f.tell()
        f.write(data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", len(data))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write the proto as it is (onnx.save would try to write its external data)."""
    path.write_bytes(model.SerializeToString())
    return path


def set_entries(tensor: TensorProto, *pairs: tuple[str, str]) -> None:
    del tensor.external_data[:]
    for key, value in pairs:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def edit(tensor: TensorProto, **changes: str) -> None:
    """Change (or, with None, drop) some of *tensor*'s external-data entries."""
    pairs = {e.key: e.value for e in tensor.external_data} | changes
    set_entries(tensor, *((k, v) for k, v in pairs.items() if v is not None))


@pytest.fixture
def ext_net(tmp_path):
    """conv_net saved by onnx with every initializer in w.bin: (model, path, folder)."""
    model, _ = conv_net()
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)
    onnx.save_model(saved, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return model, path, folder


def reload(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def bad_initializer(path: Path, **changes: str) -> Path:
    proto = reload(path)
    edit(proto.graph.initializer[0], **changes)
    return save(proto, path)


# -- every place a tensor can sit, pointing outside the folder --------------------------------
@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.parametrize(
    ("location", "fragment"),
    [("../secret.bin", "outside the model's folder"), ("/etc/hostname", "absolute path")],
)
def test_every_tensor_site_is_checked(tmp_path, site, location, fragment):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    model = every_site_model()
    tensor = SITES[site](model)
    externalize(tensor, folder)
    edit(tensor, location=location)
    path = save(model, folder / "m.onnx")
    with pytest.raises(ModelError, match=fragment) as err:
        capture.load_model(path)
    assert repr(location) in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ModelError, match=fragment):  # inspect does not load the data
        capture.load_model(path, load_external=False)


def test_a_tensor_attribute_not_declared_tensor_is_still_checked(tmp_path):
    model = every_site_model()
    attr = _attr(model.graph.node[0], "value")
    attr.type = AttributeProto.FLOAT  # declared a float, still carries t
    externalize(attr.t, tmp_path)
    edit(attr.t, location="../x.bin")
    with pytest.raises(ModelError, match=r"attribute 'value' of node 'const'.*outside"):
        capture.load_model(save(model, tmp_path / "m.onnx"))


def test_a_function_attribute_default_is_checked(tmp_path):
    model = every_site_model(function_default=True)
    default = model.functions[0].attribute_proto[0].t
    externalize(default, tmp_path)
    edit(default, location="../x.bin")
    with pytest.raises(ModelError, match=r"default attribute 'k' in function 'local\.AddK'"):
        capture.load_model(save(model, tmp_path / "m.onnx"))


def test_an_initializer_outside_the_folder(ext_net):
    _, path, _ = ext_net
    bad_initializer(path, location="../w.bin")
    with pytest.raises(ModelError, match=r"initializer 'W' of .*m\.onnx.*'\.\./w\.bin'.*outside"):
        capture.load_model(path)


def test_an_escape_through_a_subfolder(ext_net):
    _, path, folder = ext_net
    (folder / "sub").mkdir()
    bad_initializer(path, location="sub/../../w.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        capture.load_model(path)


# -- what the location names --------------------------------------------------------------------
def _symlink_outside(folder: Path) -> str:
    outside = folder.parent / "elsewhere.bin"
    outside.write_bytes((folder / "w.bin").read_bytes())
    (folder / "link.bin").symlink_to(outside)
    return "link.bin"


def _symlink_inside(folder: Path) -> str:
    (folder / "link.bin").symlink_to(folder / "w.bin")
    return "link.bin"


def _symlinked_folder(folder: Path) -> str:
    (folder / "real").mkdir()
    os.replace(folder / "w.bin", folder / "real" / "w.bin")
    (folder / "sub").symlink_to(folder / "real")
    return "sub/w.bin"


def _fifo(folder: Path) -> str:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(folder / "pipe.bin")
    return "pipe.bin"


def _folder(folder: Path) -> str:
    (folder / "data").mkdir()
    return "data"


def _through_a_file(folder: Path) -> str:
    return "w.bin/inner.bin"


def _memory_tag(folder: Path) -> str:
    (folder / "*" / "_ORT_MEM_ADDR_").mkdir(parents=True)
    (folder / "*" / "_ORT_MEM_ADDR_" / "*").write_bytes(b"\0" * 4096)
    return "*/_ORT_MEM_ADDR_/*"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_symlink_outside, "symbolic link 'link.bin': links are refused"),
        (_symlink_inside, "symbolic link 'link.bin': links are refused, even to a file inside"),
        (_symlinked_folder, "symbolic link 'sub'"),
        (_fifo, r"is not a regular file \(a FIFO\)"),
        (_folder, "is a folder, not a file"),
        (lambda folder: ".", "is the model's folder itself"),
        (lambda folder: "./", "ends with a slash"),
        (lambda folder: "missing.bin", "does not exist in the model's folder"),
        (_through_a_file, "'w.bin' is not a folder"),
        (_memory_tag, "raw memory address"),
        (lambda folder: "", "names no file"),
    ],
    ids=[
        "symlink outside",
        "symlink inside",
        "symlinked folder",
        "fifo",
        "folder",
        "dot",
        "dot slash",
        "missing",
        "through a file",
        "ort memory tag",
        "empty location",
    ],
)
def test_locations_that_are_not_a_plain_file_in_the_folder(ext_net, make, fragment):
    _, path, folder = ext_net
    bad_initializer(path, location=make(folder))
    with pytest.raises(ModelError, match=fragment) as err:
        capture.load_model(path)
    assert "initializer 'W'" in str(err.value)
    assert "\n" not in str(err.value)


# -- offsets, lengths and the entries themselves -----------------------------------------------
@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"offset": "100000"}, "offset 100000, past the end of 'w.bin'"),
        ({"offset": "-1"}, "offset '-1'.*not a non-negative whole number"),
        ({"offset": "abc"}, "offset 'abc'.*not a non-negative whole number"),
        ({"offset": " 1"}, "offset ' 1'"),
        ({"length": "100000"}, "100000 bytes of external data at offset 0 of 'w.bin', past"),
        ({"length": "-4"}, "length '-4'"),
        ({"length": "1e3"}, "length '1e3'"),
        ({"checksum": "x", "color": "red"}, "unknown external-data key 'color'"),
        ({"location": None}, "names no file"),
    ],
    ids=[
        "offset past end",
        "negative offset",
        "non-numeric offset",
        "offset with a space",
        "length past end",
        "negative length",
        "float length",
        "unknown key",
        "no location",
    ],
)
def test_offsets_lengths_and_keys(ext_net, changes, fragment):
    _, path, _ = ext_net
    bad_initializer(path, **changes)
    with pytest.raises(ModelError, match=fragment):
        capture.load_model(path)


def test_a_duplicate_location_is_refused(ext_net):
    # onnx reads the last location: a check that read the first would be bypassed
    _, path, _ = ext_net
    proto = reload(path)
    set_entries(proto.graph.initializer[0], ("location", "w.bin"), ("location", "/etc/hostname"))
    save(proto, path)
    with pytest.raises(ModelError, match="'location' twice"):
        capture.load_model(path)


def test_offset_at_the_end_with_no_length_is_an_empty_tensor(tmp_path):
    empty = numpy_helper.from_array(np.zeros((0,), F32), "E")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["E"], ["y"])], "e", [], [_value("y", [0])], [empty]
        ),
        opset_imports=OPSET,
    )
    (tmp_path / "d.bin").write_bytes(b"\0" * 8)
    set_entries(model.graph.initializer[0], ("location", "d.bin"), ("offset", "8"))
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    proto = capture.load_model(save(model, tmp_path / "m.onnx"))
    assert numpy_helper.to_array(proto.graph.initializer[0]).shape == (0,)


# -- the model path itself -----------------------------------------------------------------------
def test_an_empty_model_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match=r"m\.onnx' is empty \(0 bytes\)"):
        capture.load_model(tmp_path / "m.onnx")


def test_a_model_that_parses_without_a_graph(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\n\x00")  # an empty ir_version field: a valid message
    with pytest.raises(ModelError, match=r"not a readable ONNX model \(it has no graph"):
        capture.load_model(tmp_path / "m.onnx")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_as_the_model():
    with pytest.raises(InputError, match=r"is not a regular file \(a character device\)"):
        capture.load_model("/dev/zero")


def test_a_folder_as_the_model(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file"):
        capture.load_model(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_the_model_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"not a regular file \(a FIFO\)"):
        capture.load_model(tmp_path / "m.onnx")


def test_a_missing_model_and_one_under_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    for path in (tmp_path / "none.onnx", tmp_path / "f" / "m.onnx"):
        with pytest.raises(InputError, match="does not exist"):
            capture.load_model(path)


# -- through the command line: exit 2, one line ----------------------------------------------------
CLI_CASES = {
    "outside": (lambda folder: "../w.bin", "outside the model's folder"),
    "symlink": (_symlink_inside, "symbolic link"),
    "fifo": (_fifo, "not a regular file"),
    "missing": (lambda folder: "gone.bin", "does not exist"),
}


@pytest.mark.parametrize("command", ["inspect", "analyze"])
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_reports_bad_external_data_on_one_line(ext_net, command, case):
    _, path, folder = ext_net
    make, fragment = CLI_CASES[case]
    bad_initializer(path, location=make(folder))
    x = folder.parent / "x.npy"
    np.save(x, int_data(4))
    args = ("inspect", path) if command == "inspect" else ("analyze", path, "--data", x, "-q")
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    assert len(r.output.splitlines()) == 1, r.output
    assert r.output.startswith("Error: initializer 'W'") and fragment in r.output


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "empty.onnx", "is empty"),
        (lambda d: d, "is a (folder|directory)"),  # click's own check may come first
        (lambda d: Path("/dev/zero"), "not a regular file"),
        (lambda d: d / "offset.onnx", "past the end"),
    ],
    ids=["empty", "folder", "dev zero", "offset past end"],
)
@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_cli_reports_bad_model_paths_on_one_line(ext_net, command, make, fragment):
    _, path, folder = ext_net
    target = make(folder)
    if target == Path("/dev/zero") and not target.exists():
        pytest.skip("no /dev/zero")
    (folder / "empty.onnx").write_bytes(b"")
    proto = reload(path)
    edit(proto.graph.initializer[1], offset="99999999")
    save(proto, folder / "offset.onnx")
    x = folder.parent / "x.npy"
    np.save(x, int_data(4))
    args = ("inspect", target) if command == "inspect" else ("analyze", target, "--data", x)
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    assert len(r.output.splitlines()) == 1, r.output
    assert re.search(fragment, r.output) and "Traceback" not in r.output


# -- models that are fine -------------------------------------------------------------------------
def test_a_valid_external_data_model_loads_and_analyzes_like_the_embedded_one(ext_net):
    model, path, folder = ext_net
    loaded = capture.load_model(path)
    assert loaded.SerializeToString() == model.SerializeToString()
    assert not load.has_external_data(loaded)
    x = int_data(12)
    a = onnx_state.analyze(path, x, attach_to=["Conv", "Relu"])
    b = onnx_state.analyze(model, x, attach_to=["Conv", "Relu"])
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.counts(), lb.counts())
    np.save(folder.parent / "x.npy", x)
    r = run_cli("analyze", path, "--data", folder.parent / "x.npy", "-q")
    assert r.exit_code == 0, r.output


def test_every_site_external_loads_identically_and_runs(tmp_path):
    model = every_site_model()
    folder = tmp_path / "model"
    folder.mkdir()
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    for site in sorted(SITES):
        externalize(SITES[site](stored), folder)
    externalize(stored.graph.initializer[0], folder, "cond.bin")
    path = save(stored, folder / "m.onnx")
    assert load.has_external_data(stored)
    assert len(capture.check_external_data(stored, folder)) == len(SITES) + 1
    assert load.external_bytes(stored, folder) == sum(
        p.stat().st_size for p in (folder / "d.bin", folder / "cond.bin")
    )
    loaded = capture.load_model(path)
    assert loaded.SerializeToString() == model.SerializeToString()
    x = np.arange(12, dtype=F32).reshape(4, 3)
    a = onnx_state.analyze(path, x, attach_to="Add")
    b = onnx_state.analyze(model, x, attach_to="Add")
    assert [la.name for la in a.layers] == [lb.name for lb in b.layers]
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.counts(), lb.counts())


def test_a_large_model_keeps_only_its_initializer_references(tmp_path):
    # Only the main graph's initializers travel by path; the rest is loaded, so that
    # onnxruntime never resolves a reference from another folder.
    model = every_site_model()
    for site in sorted(SITES):
        externalize(SITES[site](model), tmp_path)
    externalize(model.graph.initializer[0], tmp_path, "cond.bin")
    path = save(model, tmp_path / "m.onnx")
    proto = capture.load_model(path, max_bytes=10)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert not any(load.is_external(SITES[site](proto)) for site in SITES)
    untouched = capture.load_model(path, load_external=False)
    assert all(load.is_external(SITES[site](untouched)) for site in SITES)


def test_a_proto_in_memory_is_checked_against_the_current_folder(ext_net, monkeypatch):
    model, path, folder = ext_net
    proto = reload(path)
    monkeypatch.chdir(folder)
    assert capture.load_model(proto) is proto  # returned as it is, references kept
    a = onnx_state.analyze(proto, int_data(6), attach_to="Conv")
    b = onnx_state.analyze(model, int_data(6), attach_to="Conv")
    np.testing.assert_array_equal(a.layers[0].counts(), b.layers[0].counts())
    monkeypatch.chdir(folder.parent)
    with pytest.raises(ModelError, match=r"given in memory.*does not exist in the current folder"):
        capture.load_model(proto)
    edit(proto.graph.initializer[0], location="../w.bin")
    monkeypatch.chdir(folder)
    with pytest.raises(ModelError, match="outside the current folder"):
        capture.load_model(proto)


def test_a_file_replaced_after_the_check_is_not_read(ext_net):
    _, path, folder = ext_net
    proto = reload(path)
    checked = capture.check_external_data(proto, folder)
    (folder / "new.bin").write_bytes((folder / "w.bin").read_bytes())
    os.replace(folder / "new.bin", folder / "w.bin")  # another file of the same name
    with pytest.raises(ModelError, match="was replaced since it was checked"):
        load._load_external(checked)


def test_errors_are_onnx_state_errors_with_no_foreign_cause(ext_net):
    _, path, folder = ext_net
    bad_initializer(path, offset="x")
    with pytest.raises(OnnxStateError) as err:
        capture.load_model(path)
    assert err.value.__cause__ is None
    assert stat.S_ISREG(os.stat(folder / "w.bin").st_mode)  # nothing was touched
