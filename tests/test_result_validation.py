"""Results read back are fully checked: every corrupt store or separation JSON file is one
StoreError (one line naming the file, the layer and the attribute or array at fault, and
what was expected), from the API and from the command line (exit code 2, one line)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import onnx_state
from onnx_state.errors import StoreError
from onnx_state.separation import SeparationResult, separation
from tests.cli import run_cli

# The store below: layer 0 conv_post_states (4 neurons, 1908 states, 16 unique), layer 1
# flat_post_states (144 neurons: 18-byte rows), layer 2 fc_post_states (5 neurons).
L0 = "layer 0 (conv_post_states)"
L1 = "layer 1 (flat_post_states)"
L2 = "layer 2 (fc_post_states)"


@pytest.fixture(scope="module")
def pristine(net, tmp_path_factory):
    """(Analysis, path of its valid store, model path, data path)."""
    model, _, x, _ = net
    a = onnx_state.analyze(
        model, x, attach_to=["Conv", "flat", "MatMul"], labels=np.arange(len(x)) % 5
    )
    folder = tmp_path_factory.mktemp("valid")
    a.save(folder / "results.zarr")
    onnx.save(model, str(folder / "net.onnx"))
    np.save(folder / "x.npy", x)
    return a, folder / "results.zarr", folder / "net.onnx", folder / "x.npy"


def _corrupt(pristine, tmp_path: Path, change: Callable[[Any], None]) -> Path:
    import zarr

    path = tmp_path / "results.zarr"
    shutil.copytree(pristine[1], path)
    change(zarr.open_group(str(path), mode="r+"))
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(StoreError) as info:
        onnx_state.Analysis.load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# -- ways to corrupt a store -----------------------------------------------------------------
def set_attr(where: str, key: str, value: Any) -> Callable[[Any], None]:
    def change(g: Any) -> None:
        (g[where] if where else g).attrs[key] = value

    return change


def del_attr(where: str, key: str) -> Callable[[Any], None]:
    def change(g: Any) -> None:
        del (g[where] if where else g).attrs[key]

    return change


def replace_array(layer: int, name: str, make: Callable[[np.ndarray], Any]) -> Callable:
    """Replace layers/<layer>/<name> by make(old data)."""

    def change(g: Any) -> None:
        old = np.asarray(g[f"layers/{layer}/{name}"][...])
        del g[f"layers/{layer}/{name}"]
        g[f"layers/{layer}"].create_array(name, data=np.asarray(make(old)))

    return change


def replace_both(layer: int, make: Callable[[np.ndarray, np.ndarray], tuple]) -> Callable:
    """Replace state_ids and counts of a layer together by make(ids, counts)."""

    def change(g: Any) -> None:
        ids, counts = make(g[f"layers/{layer}/state_ids"][...], g[f"layers/{layer}/counts"][...])
        for name, data in (("state_ids", ids), ("counts", counts)):
            del g[f"layers/{layer}/{name}"]
            g[f"layers/{layer}"].create_array(name, data=np.asarray(data))

    return change


def delete(key: str) -> Callable[[Any], None]:
    def change(g: Any) -> None:
        del g[key]

    return change


def _swap_first_rows(ids: np.ndarray, counts: np.ndarray) -> tuple:
    order = np.r_[1, 0, 2 : len(ids)]
    return ids[order], counts[order]


def _repeat_row(ids: np.ndarray, counts: np.ndarray) -> tuple:
    ids = ids.copy()
    ids[1] = ids[0]
    return ids, counts


def _sorted_big_endian(ids: np.ndarray, counts: np.ndarray) -> tuple:
    order = np.lexsort(ids[:, ::-1].T)  # by the first byte first: the wrong order
    assert not np.array_equal(order, np.arange(len(ids)))
    return ids[order], counts[order]


def _stray_bit(ids: np.ndarray) -> np.ndarray:
    ids = ids.copy()
    ids[3, -1] |= 0x20  # bit 5 of a 4-neuron state
    return ids


def _zero(counts: np.ndarray) -> np.ndarray:
    counts = counts.copy()
    counts[2] = 0
    return counts


def _negative(counts: np.ndarray) -> np.ndarray:
    counts = counts.copy()
    counts[0], counts[1] = -counts[0], counts[1] + 2 * counts[0]  # the sum stays right
    return counts


def _plus_one(counts: np.ndarray) -> np.ndarray:
    return counts + np.eye(len(counts), dtype=np.int64)[0]


def _array_for_group(g: Any) -> None:
    del g["layers/1"]
    g.create_array("layers/1", data=np.zeros(3, np.uint8))


def _group_for_array(g: Any) -> None:
    del g["layers/2/counts"]
    g.create_group("layers/2/counts")


def _extra_layer(g: Any) -> None:
    g.create_group("layers/3")


def _lose_a_chunk(g: Any) -> None:
    shutil.rmtree(Path(g.store.root) / "layers" / "0" / "counts" / "c")  # reads as zeros


CASES = [
    # root attributes
    ("no n_samples", del_attr("", "n_samples"),
     "root attribute n_samples is missing; expected an integer >= 0"),
    ("n_samples a string", set_attr("", "n_samples", "53"),
     'root attribute n_samples is "53"; expected an integer >= 0'),
    ("n_samples negative", set_attr("", "n_samples", -1), "n_samples is -1; expected an integer"),
    ("n_samples a bool", set_attr("", "n_samples", True), "n_samples is true; expected an integer"),
    ("no model_sha256", del_attr("", "model_sha256"),
     "root attribute model_sha256 is missing; expected a string"),
    ("fingerprint a number", set_attr("", "data_fingerprint", 5),
     "root attribute data_fingerprint is 5; expected a string"),
    ("layer_order a string", set_attr("", "layer_order", "conv_post_states"),
     'layer_order is "conv_post_states"; expected a list of distinct strings'),
    ("layer_order with a number", set_attr("", "layer_order", ["conv_post_states", 1]),
     "root attribute layer_order[1] is 1; expected a string"),
    ("layer_order repeats", set_attr("", "layer_order", ["conv_post_states"] * 2),
     "layer_order[1] repeats entry 0"),
    ("no layer_order", del_attr("", "layer_order"), "layer_order is missing"),
    ("accuracy above 1", set_attr("", "accuracy", 1.5),
     "root attribute accuracy is 1.5; expected null or a number in [0, 1]"),
    ("accuracy a string", set_attr("", "accuracy", "high"), 'accuracy is "high"; expected null'),
    ("no accuracy", del_attr("", "accuracy"), "accuracy is missing; expected null or a number"),
    ("parity negative", set_attr("", "parity_max_abs_diff", -0.5),
     "parity_max_abs_diff is -0.5; expected null or a number >= 0"),
    ("version a string", set_attr("", "schema_version", "1"), 'has schema version "1"'),
    ("no complete", del_attr("", "complete"), "is incomplete"),
    # layer attributes
    ("no layer name", del_attr("layers/0", "name"),
     f'{L0}: attribute name is missing; expected "conv_post_states" (layer_order[0])'),
    ("layer name differs", set_attr("layers/1", "name", "fc_post_states"),
     f'{L1}: attribute name is "fc_post_states"; expected "flat_post_states" (layer_order[1])'),
    ("kind unknown", set_attr("layers/2", "kind", "middle"),
     f'{L2}: attribute kind is "middle"; expected "post" or "pre"'),
    ("neurons zero", set_attr("layers/0", "neurons", 0),
     f"{L0}: attribute neurons is 0 but state_count is 1908; expected >= 1"),
    ("neurons a float", set_attr("layers/0", "neurons", 4.0), f"{L0}: attribute neurons is 4.0"),
    ("no neurons", del_attr("layers/2", "neurons"), f"{L2}: attribute neurons is missing"),
    ("state_count negative", set_attr("layers/1", "state_count", -5),
     f"{L1}: attribute state_count is -5; expected an integer >= 0"),
    ("no op_type", del_attr("layers/0", "op_type"),
     f"{L0}: attribute op_type is missing; expected a string"),
    ("axis a string", set_attr("layers/0", "axis", "1"), f'{L0}: attribute axis is "1"'),
    ("no nan_count", del_attr("layers/2", "nan_count"), f"{L2}: attribute nan_count is missing"),
    # layer groups
    ("layer group missing", delete("layers/2"),
     f"{L2} is missing: no group layers/2 (layer_order names 3 layers)"),
    ("layer is an array", _array_for_group, f"{L1}: layers/1 is an array; expected a layer group"),
    ("extra layer group", _extra_layer, "layers/3 is not one of the 3 layers layer_order names"),
    # arrays
    ("no counts", delete("layers/0/counts"),
     f"{L0}: counts is missing; expected an int64 array [unique states]"),
    ("no state_ids", delete("layers/1/state_ids"),
     f"{L1}: state_ids is missing; expected a uint8 array [unique states, 18]"),
    ("counts a group", _group_for_array, f"{L2}: counts is a group; expected an int64 array"),
    ("counts short", replace_array(0, "counts", lambda c: c[:-1]),
     f"{L0}: counts has 15 entries but state_ids has 16 rows"),
    ("counts int32", replace_array(0, "counts", lambda c: c.astype(np.int32)),
     f"{L0}: counts has dtype int32; expected int64"),
    ("counts float", replace_array(2, "counts", lambda c: c.astype(np.float64)),
     f"{L2}: counts has dtype float64; expected int64"),
    ("counts 2-D", replace_array(0, "counts", lambda c: c[:, None]),
     f"{L0}: counts has shape (16, 1); expected 1 dimension [unique states]"),
    ("state_ids int16", replace_array(0, "state_ids", lambda s: s.astype(np.int16)),
     f"{L0}: state_ids has dtype int16; expected uint8"),
    ("state_ids too narrow", replace_array(1, "state_ids", lambda s: s[:, :17]),
     f"{L1}: state_ids has 17 bytes per row but 144 neurons need ceil(144 / 8) = 18"),
    ("state_ids too wide", replace_array(0, "state_ids", lambda s: np.c_[s, s]),
     f"{L0}: state_ids has 2 bytes per row but 4 neurons need ceil(4 / 8) = 1"),
    ("state_ids 1-D", replace_array(2, "state_ids", lambda s: s[:, 0]),
     f"{L2}: state_ids has shape (22,); expected 2 dimensions [unique states, 1]"),
    ("stray high bit", replace_array(0, "state_ids", _stray_bit),
     f"{L0}: state_ids row 3 sets bits above neuron 3 (the last) in its last byte"),
    ("ids unsorted", replace_both(2, _swap_first_rows),
     f"{L2}: state_ids row 1 is below row 0; expected rows ascending by their little-endian"),
    ("ids sorted big-endian", replace_both(1, _sorted_big_endian),
     f"{L1}: state_ids row"),
    ("ids repeated", replace_both(0, _repeat_row),
     f"{L0}: state_ids row 1 repeats row 0; expected unique states"),
    ("count zero", replace_array(0, "counts", _zero),
     f"{L0}: counts[2] is 0; expected every count >= 1"),
    ("count negative", replace_array(2, "counts", _negative), f"{L2}: counts[0] is -"),
    ("counts do not sum", replace_array(0, "counts", _plus_one),
     f"{L0}: counts sum to 1909 but attribute state_count is 1908"),
    ("state_count wrong", set_attr("layers/1", "state_count", 54),
     f"{L1}: counts sum to 53 but attribute state_count is 54"),
    ("lost chunk", _lose_a_chunk, f"{L0}: counts[0] is 0; expected every count >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_corrupt_store_is_one_store_error(pristine, tmp_path, change, expected):
    path = _corrupt(pristine, tmp_path, change)
    message = _load_error(path)
    assert expected in message, message


def test_a_valid_store_loads_unchanged(pristine):
    a, path, _, _ = pristine
    b = onnx_state.Analysis.load(path)
    assert b.layers == a.layers and b.to_dict() == a.to_dict()
    assert b.layers[1].ids.shape == (53, 18)  # several bytes (and words) per state


def test_a_store_with_no_state_and_an_empty_layer_list_loads(pristine, tmp_path):
    def empty(g: Any) -> None:
        g.attrs["layer_order"] = []
        del g["layers"]

    assert onnx_state.Analysis.load(_corrupt(pristine, tmp_path, empty)).layers == []


def test_the_error_names_the_store_layer_and_array_in_one_line(pristine, tmp_path):
    path = _corrupt(pristine, tmp_path, replace_array(0, "counts", lambda c: c[:-1]))
    assert _load_error(path) == (
        f"{path}: layer 0 (conv_post_states): counts has 15 entries but state_ids has 16 rows"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (delete("layers/0/counts"), "counts is missing"),
        (replace_array(1, "state_ids", lambda s: s[:, :17]), "17 bytes per row"),
        (del_attr("", "n_samples"), "n_samples is missing"),
        (delete("layers/2"), f"{L2} is missing"),
    ],
    ids=["no counts", "narrow ids", "no n_samples", "no layer"],
)
def test_audit_against_a_corrupt_reference_exits_2_with_one_line(
    pristine, tmp_path, change, expected
):
    _, _, model, x = pristine
    path = _corrupt(pristine, tmp_path, change)
    r = run_cli("audit", model, "--data", x, "--reference", path)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: ") and expected in lines[0]


def test_audit_against_the_valid_reference_runs(pristine):
    _, path, model, x = pristine
    r = run_cli("audit", model, "--data", x, "--reference", path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["reference"] == str(path)


# -- separation results ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def separated(net, tmp_path_factory):
    """(SeparationResult, its JSON file, its dict): classes 0-2, 5 samples each."""
    model, _, x, _ = net
    r = separation(
        model, x, labels=np.arange(len(x)) % 3, attach_to=["Conv", "MatMul"], samples_per_class=5
    )
    path = tmp_path_factory.mktemp("sep") / "a.json"
    r.save(path)
    return r, path, json.loads(path.read_text())


def _edit(d: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(d))
    change(d)
    return d


def _setter(keys: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return change


def _deleter(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        node: Any = d
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return change


def _asymmetric(d: dict[str, Any]) -> None:
    d["cross_edges"]["train"]["conv_post_states"][0][1] += 1


def _extra_split(d: dict[str, Any]) -> None:
    d["sizes"]["test"] = [5, 5, 5]


def _extra_layer_in_split(d: dict[str, Any]) -> None:
    d["cross_edges"]["train"]["other"] = d["cross_edges"]["train"]["input:x"]


def _both(i: int, j: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        m = d["cross_edges"]["train"]["fc_post_states"]
        m[i][j] = m[j][i] = value

    return change


CONV = 'cross_edges["train"]["conv_post_states"]'
FC = 'cross_edges["train"]["fc_post_states"]'
SEPARATION_CASES = [
    ("no schema at all", lambda d: d.clear() or d.update({"x": 1}),
     "not an onnx_state separation result of schema version 1"),
    ("other schema", _setter(("schema",), "onnx_state.audit"),
     'schema "onnx_state.audit", schema_version 1'),
    ("version a bool", _setter(("schema_version",), True), "schema_version true"),
    ("no classes", _deleter("classes"), "classes is missing; expected a list of distinct integers"),
    ("classes repeat", _setter(("classes",), [0, 1, 0]), "classes[2] repeats entry 0 (0)"),
    ("class a string", _setter(("classes",), [0, "1", 2]), 'classes[1] is "1"; expected an'),
    ("one class", _setter(("classes",), [0]), "classes is [0]; expected at least two"),
    ("layers a string", _setter(("layers",), "conv"), 'layers is "conv"; expected a list'),
    ("sizes short", _setter(("sizes", "train"), [5, 5]),
     'sizes["train"] has 2 entries but there are 3 classes'),
    ("size zero", _setter(("sizes", "train", 1), 0),
     'sizes["train"][1] is 0; expected an integer >= 1'),
    ("size a float", _setter(("sizes", "train", 0), 5.0), 'sizes["train"][0] is 5.0'),
    ("no sizes", _deleter("sizes"), "sizes is missing; expected an object"),
    ("splits differ", _extra_split, 'sizes has splits ["train", "test"] and cross_edges ["train"]'),
    ("layer missing in a split", _deleter("cross_edges", "train", "conv_post_states"),
     'cross_edges["train"] has no layer "conv_post_states"; expected every layer'),
    ("unlisted layer in a split", _extra_layer_in_split,
     'cross_edges["train"] has layer "other", which layers does not list'),
    ("matrix too small", _setter(("cross_edges", "train", "conv_post_states"), [[-1, 1], [1, -1]]),
     f"{CONV} has 2 rows; expected a 3 x 3 integer matrix"),
    ("matrix row short", _setter(("cross_edges", "train", "conv_post_states", 2), [3, 3]),
     f"{CONV}[2] has 2 entries; expected a row of 3 integers"),
    ("matrix not a list", _setter(("cross_edges", "train", "conv_post_states"), 7),
     f"{CONV} is 7; expected a 3 x 3 integer matrix"),
    ("diagonal not -1", _setter(("cross_edges", "train", "conv_post_states", 1, 1), 0),
     f"{CONV}[1][1] is 0; expected -1 on the diagonal"),
    ("asymmetric", _asymmetric, f"{CONV}[0][1] is 5 but [1][0] is 4; expected a symmetric"),
    ("too many cross edges", _both(0, 2, 10),
     f"{FC}[0][2] is 10; expected 0 to 9 cross edges (an MST over 5 + 5 samples)"),
    ("negative cross edges", _both(1, 2, -1), f"{FC}[1][2] is -1; expected 0 to 9"),
    ("float entry", _both(0, 1, 3.5), f"{FC}[0][1] is 3.5; expected an integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [c[1:] for c in SEPARATION_CASES],
    ids=[c[0] for c in SEPARATION_CASES],
)
def test_a_corrupt_separation_result_is_one_store_error(separated, tmp_path, change, expected):
    _, _, good = separated
    d = _edit(good, change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(StoreError) as info:
        SeparationResult.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert expected in message, message
    with pytest.raises(StoreError) as info:
        SeparationResult.from_dict(d)
    assert str(info.value).startswith("separation result: ") and expected in str(info.value)


def test_a_separation_result_that_is_no_object_or_no_json(separated, tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match=r"list\.json is \[1, 2\]; expected an object"):
        SeparationResult.load(tmp_path / "list.json")
    (tmp_path / "cut.json").write_text(separated[1].read_text()[:-20])
    with pytest.raises(StoreError, match="cannot read separation result"):
        SeparationResult.load(tmp_path / "cut.json")


def test_a_valid_separation_result_round_trips(separated):
    r, path, _ = separated
    for back in (SeparationResult.load(path), SeparationResult.from_dict(r.to_dict())):
        assert back.classes == r.classes and back.layers == r.layers and back.sizes == r.sizes
        assert set(back.cross) == set(r.cross)
        for split in r.cross:
            assert set(back.cross[split]) == set(r.cross[split])
            for la, m in r.cross[split].items():
                np.testing.assert_array_equal(back.cross[split][la], m)
                assert back.cross[split][la].dtype == np.int64
        assert back.table() == r.table()


@pytest.mark.parametrize(
    ("change", "expected"),
    [(_asymmetric, "expected a symmetric matrix"), (_setter(("sizes", "train"), [5]), "classes")],
    ids=["asymmetric", "sizes short"],
)
def test_separation_test_on_a_corrupt_file_exits_2_with_one_line(
    separated, tmp_path, change, expected
):
    _, good_path, good = separated
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(good, change)))
    r = run_cli("separation-test", good_path, bad, "-n", "20")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}: ") and expected in lines[0]
    ok = run_cli("separation-test", good_path, good_path, "-n", "20")
    assert ok.exit_code == 0, ok.output
