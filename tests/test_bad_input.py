"""Bad input from the command line: one line on stderr, exit code 2, no traceback, nothing
written — one case per kind of mistake a user makes (and more)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.cli import run_cli
from tests.models import conv_net, int_data, make_model


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder of models, data and files to get wrong."""
    root = tmp_path_factory.mktemp("bad")
    model, _ = conv_net()  # x (N, 3, 8, 8) -> conv, relu, flat, fc -> y (N, 5)
    onnx.save(model, root / "m.onnx")
    x = int_data(40)
    np.save(root / "x.npy", x)
    np.save(root / "x64.npy", x.astype(np.float64))
    np.save(root / "x3.npy", x[:, 0])
    np.save(root / "x4.npy", x[:, :, :4])
    np.save(root / "x3_10.npy", x[:10])
    np.save(root / "empty.npy", x[:0])
    np.save(root / "scalar.npy", np.float32(1))
    np.save(root / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(root / "y.npy", np.arange(40) % 5)
    np.save(root / "y_half.npy", (np.arange(40) % 5) + 0.5)
    np.save(root / "y_neg.npy", -(np.arange(40) % 5))
    np.save(root / "y_big.npy", np.arange(40) % 5 + 7)
    np.save(root / "y_str.npy", np.array(["cat"] * 40))
    np.save(root / "y_3d.npy", np.zeros((40, 2, 2)))
    np.save(root / "y_short.npy", np.arange(30) % 5)
    np.save(root / "y_one.npy", np.zeros(40, int))
    np.savez(root / "xy.npz", x=x, y=np.arange(40) % 5)
    (root / "data.txt").write_text("1 2 3")
    (root / "empty.onnx").write_bytes(b"")
    (root / "folder.onnx").mkdir()
    (root / "junk.json").write_text("{not json")
    (root / "list.json").write_text("[1, 2]")
    (root / "rules.json").write_text(json.dumps({"max_dead": 0.1}))
    (root / "rules_text.json").write_text(json.dumps({"max_js": "high"}))
    (root / "map.json").write_text(json.dumps({"conv": 3}))
    (root / "keep").mkdir()
    (root / "keep" / "file.txt").write_text("keep me")
    nodes = [  # two inputs and a shared state: h = Relu(a @ W + s @ V) * k
        helper.make_node("MatMul", ["a", "W"], ["p"], name="pa"),
        helper.make_node("MatMul", ["s", "V"], ["q"], name="ps"),
        helper.make_node("Add", ["p", "q"], ["t"], name="add"),
        helper.make_node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t", "kf"], ["u"], name="mul"),
        helper.make_node("Relu", ["u"], ["h"], name="relu"),
    ]
    two = make_model(
        nodes,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 2])],
        [("W", np.ones((3, 2), np.float32)), ("V", np.ones((4, 2), np.float32))],
    )  # fmt: skip
    onnx.save(two, root / "two.onnx")
    np.save(root / "a.npy", np.ones((10, 3), np.float32))
    np.save(root / "s.npy", np.ones((1, 4), np.float32))
    np.save(root / "s2.npy", np.ones((2, 4), np.float32))
    np.save(root / "s_int.npy", np.ones((1, 4), np.int64))
    reshape = make_model(  # Reshape to (2, -1) fails inside onnxruntime on 3 samples
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs"),
         helper.make_node("Relu", ["r"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "M"])],
        [("shape", np.array([2, -1], np.int64))],
    )  # fmt: skip
    onnx.save(reshape, root / "reshape.onnx")
    np.save(root / "r3.npy", np.ones((3, 3), np.float32))
    fixed = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
    )
    onnx.save(fixed, root / "fixed.onnx")
    np.save(root / "f10.npy", np.ones((10, 3), np.float32))
    np.save(root / "f8.npy", np.ones((8, 3), np.float32))
    run_cli("analyze", root / "m.onnx", "--data", root / "x.npy", "--attach-to", "Relu", "-q",
            "-o", root / "relu.zarr")  # fmt: skip
    run_cli("separation", root / "m.onnx", "--data", root / "x.npy", "--labels",
            root / "y.npy", "--samples-per-class", "3", "-o", root / "sep.json")  # fmt: skip
    return root


M, X, Y = "{d}/m.onnx", "{d}/x.npy", "{d}/y.npy"
ANALYZE = ["analyze", M, "--data", X, "-q"]
CASES = {
    # -- usage: click's own errors are one line too
    "unknown option": (["analyze", M, "--nope"], "No such option '--nope'"),
    "unknown command": (["analyse"], "No such command 'analyse'"),
    "missing argument": (["compare", M], "Missing argument 'MODEL_B'"),
    "missing option": (["audit", M], "Missing option '--data'"),
    "bad method": ([*ANALYZE, "--method", "around"], "'around' is not one of"),
    "bad optimization": ([*ANALYZE, "--optimization", "max"], "'max' is not one of"),
    "batch size 0": ([*ANALYZE, "--batch-size", "0"], "0 is not in the range"),
    "threads 0": ([*ANALYZE, "--threads", "0"], "0 is not in the range"),
    "threshold above 1": (["compare", M, M, "--data", X, "--threshold", "2"], "not in the range"),
    "top-k 0": (["audit", M, "--data", X, "--top-k", "0"], "0 is not in the range"),
    "samples per class 1": (["separation", M, "--data", X, "--labels", Y,
                             "--samples-per-class", "1"], "1 is not in the range"),
    "no model and no data": (["analyze"], "give MODEL and --data"),
    "example with a model": (["analyze", "--example", M], "--example brings its own"),
    # -- model files
    "model missing": (["analyze", "{d}/nope.onnx", "--data", X], "does not exist"),
    "model not onnx": (["inspect", X], "ONNX model"),
    "model empty": (["inspect", "{d}/empty.onnx"], "empty"),
    "model is a folder": (["inspect", "{d}/folder.onnx"], "folder.onnx"),
    # -- data
    "data missing": (["analyze", M, "--data", "{d}/nope.npy"], "does not exist"),
    "npy with a key": (["analyze", M, "--data", "{d}/x.npy:x"], "drop ':x'"),
    "npz key missing": (["analyze", M, "--data", "{d}/xy.npz:z"], "has no array 'z'"),
    "npz with an extra array": (["analyze", M, "--data", "{d}/xy.npz"], "unknown input(s) y"),
    "pickled npy": (["analyze", M, "--data", "{d}/obj.npy"], "object arrays are refused"),
    "float64 data": (["analyze", M, "--data", "{d}/x64.npy"], "float64 but the model expects"),
    "wrong rank": (["analyze", M, "--data", "{d}/x3.npy"], "has rank 3"),
    "wrong sample shape": (["analyze", M, "--data", "{d}/x4.npy"], "samples of shape (3, 4, 8)"),
    "no samples": (["analyze", M, "--data", "{d}/empty.npy"], "no samples"),
    "0-d data": (["analyze", M, "--data", "{d}/scalar.npy"], "0-d"),
    "unsupported file": (["analyze", M, "--data", "{d}/data.txt"], "unsupported data file"),
    "one array for two inputs": (["analyze", "{d}/two.onnx", "--data", "{d}/a.npy"],
                                 "the model has 3 inputs"),
    "unknown input name": (["analyze", M, "--data", "image={d}/x.npy"], "unknown input(s) image"),
    "input named twice": (["analyze", M, "--data", "x={d}/x.npy", "--data", "x={d}/x.npy"],
                          "names input 'x' twice"),
    "path and name mixed": (["analyze", M, "--data", X, "--data", "x={d}/x.npy"],
                            "once per model input as NAME=PATH"),
    # -- constants
    "const not a pair": ([*ANALYZE, "--const", "state"], "is not NAME=PATH[:KEY] or NAME=NUMBER"),
    "const unknown input": ([*ANALYZE, "--const", "xx=1"], "constant 'xx' is not a model input"),
    "const named twice": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy", "--const",
                           "s={d}/s.npy", "--const", "s={d}/s.npy"], "names input 's' twice"),
    "const wrong shape": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy", "--const",
                           "s={d}/s2.npy", "--const", "k=2"], "constant 's' has shape (2, 4)"),
    "const wrong dtype": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy", "--const",
                           "s={d}/s_int.npy", "--const", "k=2"], "constant 's' is int64"),
    "const number for a tensor": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy",
                                   "--const", "s=2", "--const", "k=2"],
                                  "constant 's' has shape ()"),
    "const number not an int": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy", "--const",
                                 "s={d}/s.npy", "--const", "k=2.5"], "does not fit the model's"),
    "missing constant": (["analyze", "{d}/two.onnx", "--data", "a={d}/a.npy", "--const",
                          "k=2"], "missing input(s) s"),
    "onnxruntime fails": (["analyze", "{d}/reshape.onnx", "--data", "{d}/r3.npy",
                           "--attach-to", "Relu"], "requested shape:{2,-1}"),
    # -- batch sizes
    "batch size against a fixed one": (["analyze", "{d}/fixed.onnx", "--data", "{d}/f8.npy",
                                        "--attach-to", "Relu", "--batch-size", "3"],
                                       "fixed batch dimension of 4"),
    "last batch of another size": (["analyze", "{d}/fixed.onnx", "--data", "{d}/f10.npy",
                                    "--attach-to", "Relu"], "leave a last batch of 2"),
    "output batch axis wrong": ([*ANALYZE, "--labels", Y, "--output-batch-axis", "1"],
                                "class scores"),
    # -- labels
    "labels not integers": ([*ANALYZE, "--labels", "{d}/y_half.npy"], "integer class indices"),
    "labels negative": ([*ANALYZE, "--labels", "{d}/y_neg.npy"], ">= 0"),
    "labels out of range": ([*ANALYZE, "--labels", "{d}/y_big.npy"], "out of range"),
    "labels strings": ([*ANALYZE, "--labels", "{d}/y_str.npy"], "integer class indices"),
    "labels 3-d": ([*ANALYZE, "--labels", "{d}/y_3d.npy"], "class indices or one-hot rows"),
    "labels too few": ([*ANALYZE, "--labels", "{d}/y_short.npy"], "30 labels"),
    "labels missing": ([*ANALYZE, "--labels", "{d}/nope.npy"], "does not exist"),
    # -- selection
    "attach-to typo": ([*ANALYZE, "--attach-to", "Cnv"], "Did you mean: Conv"),
    "exclude unknown": ([*ANALYZE, "--exclude", "fcc"], "exclude 'fcc' names no layer"),
    "exclude everything": ([*ANALYZE, "--attach-to", "Conv", "--exclude", "conv"],
                           "removed them all"),
    "neuron axis format": ([*ANALYZE, "--neuron-axis", "conv"], "LAYER=AXIS"),
    "neuron axis not an int": ([*ANALYZE, "--neuron-axis", "conv=x"], "is not an integer"),
    "neuron axis unknown layer": ([*ANALYZE, "--neuron-axis", "nope=1"], "not captured"),
    "neuron axis out of range": ([*ANALYZE, "--neuron-axis", "conv=7"], "out of range"),
    "neuron axis 0": ([*ANALYZE, "--attach-to", "Conv", "--neuron-axis", "conv=0"], "axis 0"),
    # -- sessions and outputs
    "unknown provider": ([*ANALYZE, "--provider", "NopeExecutionProvider"], "not available"),
    "output exists": ([*ANALYZE, "-o", "{d}/relu.zarr"], "already exists"),
    "overwrite a foreign folder": ([*ANALYZE, "-o", "{d}/keep", "--overwrite"],
                                   "not an onnx_state results store"),
    "separation output exists": (["separation", M, "--data", X, "--labels", Y,
                                  "--samples-per-class", "3", "-o", "{d}/sep.json"],
                                 "already exists"),
    "separation output folder missing": (["separation", M, "--data", X, "--labels", Y,
                                          "-o", "{d}/no/such/s.json"], "does not exist"),
    "plots folder exists": (["separation", M, "--data", X, "--labels", Y, "--plots",
                             "{d}/keep"], "already exists"),
    "export output exists": (["export", "{d}/nope.keras", "{d}/sep.json"], "already exists"),
    "export output folder missing": (["export", "{d}/nope.keras", "{d}/no/o.onnx"],
                                     "does not exist"),
    # -- compare
    "mapping missing": (["compare", M, M, "--data", X, "--mapping", "{d}/nope.json"],
                        "cannot read the mapping file"),
    "mapping not JSON": (["compare", M, M, "--data", X, "--mapping", "{d}/junk.json"],
                         "cannot read the mapping file"),
    "mapping not names": (["compare", M, M, "--data", X, "--mapping", "{d}/map.json"],
                          "JSON object of layer-name strings"),
    "data-b of another shape": (["compare", M, M, "--data", X, "--data-b", "{d}/x4.npy"],
                                "samples of shape (3, 4, 8)"),
    "data-b too short": (["compare", M, M, "--data", X, "--data-b", "{d}/x3_10.npy"],
                         "data_b holds fewer samples"),
    "no layers match": (["compare", M, M, "--data", X, "--attach-to", "Relu", "--attach-to-b",
                         "Conv"], "match layers of B"),
    # -- audit
    "rules unknown": (["audit", M, "--data", X, "--rules", "{d}/rules.json"],
                      "unknown rule(s) max_dead"),
    "rules not JSON": (["audit", M, "--data", X, "--rules", "{d}/junk.json"],
                       "cannot read the rules file"),
    "rules not an object": (["audit", M, "--data", X, "--rules", "{d}/list.json"],
                            "JSON object of thresholds"),
    "rules not numbers": (["audit", M, "--data", X, "--rules", "{d}/rules_text.json"],
                          "must be numbers"),
    "reference missing": (["audit", M, "--data", X, "--reference", "{d}/nope.zarr"],
                          "does not exist"),
    "reference of other layers": (["audit", M, "--data", X, "--attach-to", "Conv",
                                   "--reference", "{d}/relu.zarr"], "has no layer(s)"),
    "reference not a store": (["audit", M, "--data", X, "--reference", "{d}/keep"],
                              "results store"),
    # -- separation
    "one class": (["separation", M, "--data", X, "--labels", "{d}/y_one.npy"],
                  "at least two classes"),
    "neuron axis in separation": (["separation", M, "--data", X, "--labels", Y,
                                   "--neuron-axis", "conv=1"], "does not apply"),
    "test data without labels": (["separation", M, "--data", X, "--labels", Y, "--test-data",
                                  X, "--samples-per-class", "3"], "test_data needs test_labels"),
    "separation-test of junk": (["separation-test", "{d}/junk.json"], "cannot read separation"),
    "separation-test alone": (["separation-test", "{d}/sep.json"], "give a second result"),
    # -- export
    "export without input shape": (["export", "examples.lenet:torch_lenet5", "{d}/o.onnx"],
                                   "needs --input-shape"),
    "export bad spec": (["export", "nope.nope:Net", "{d}/o.onnx", "--input-shape", "1,2"],
                        "cannot import"),
    "export missing path": (["export", "{d}/nope.keras", "{d}/o.onnx"], "does not exist"),
    "export bad shape": (["export", "examples.lenet:torch_lenet5", "{d}/o.onnx",
                          "--input-shape", "1,a"], "is not a list of integers"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_and_exit_2(d, case):
    args, message = CASES[case]
    if case.startswith("export") and ":" in args[1]:  # a torch module spec
        pytest.importorskip("torch")
    before = sorted(p.name for p in d.iterdir())
    r = run_cli(*[a.format(d=d) for a in args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0], lines[0]
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written
    assert (d / "keep" / "file.txt").read_text() == "keep me"


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_malformed_exporter_metadata_and_a_factory_that_builds_no_module(tmp_path):
    import sys

    from onnx_state.capture.metadata import META_NEURON_AXIS
    from tests.models import tag

    model, _ = conv_net()
    tag(model.graph.node[0], "conv", "Conv2d")
    p = model.graph.node[0].metadata_props.add()
    p.key, p.value = META_NEURON_AXIS, "channels"
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", int_data(4))
    r = run_cli("analyze", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", "-q")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "'channels', which is not an integer" in r.output
    pytest.importorskip("torch")
    (tmp_path / "factories.py").write_text("def make():\n    return 42\n")
    sys.path.insert(0, str(tmp_path))
    try:
        r = run_cli("export", "factories:make", tmp_path / "o.onnx", "--input-shape", "1,2")
    finally:
        sys.path.remove(str(tmp_path))
    assert r.exit_code == 2 and "returned a int, not a torch.nn.Module" in r.output, r.output
