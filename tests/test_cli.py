"""The CLI: thin over the API, one-line errors with exit code 2, JSON with sorted keys, gates
that exit 1, and the export command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnx_state
from onnx_state.capture import list_layers
from onnx_state.errors import InputError
from tests.cli import run_cli
from tests.models import conv_net, int_data


@pytest.fixture
def files(tmp_path):
    model, _ = conv_net()
    onnx.save(model, tmp_path / "m.onnx")
    x = int_data(40)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(40) % 5)
    return tmp_path, x


def test_example_runs_and_prints_the_table():
    r = run_cli("analyze", "--example", "--quiet")
    assert r.exit_code == 0, r.output
    assert "conv_1_post_states" in r.output and "network efficiency" in r.output
    assert "accuracy" in r.output and "aIQ" in r.output


def test_analyze_json_equals_the_python_api(files):
    path, x = files
    r = run_cli(
        "analyze", path / "m.onnx", "--data", path / "x.npy", "--labels", path / "y.npy",
        "--attach-to", "Conv", "--attach-to", "fc", "--batch-size", "7", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = onnx_state.analyze(  # the same batch size: the run record holds it
        path / "m.onnx", x, attach_to=["Conv", "fc"], labels=np.arange(40) % 5, batch_size=7
    ).to_dict()
    assert got == json.loads(json.dumps(want))
    assert list(got) == sorted(got)


def test_output_store_is_written_and_loads(files):
    path, _ = files
    r = run_cli("analyze", path / "m.onnx", "--data", path / "x.npy", "-o", path / "r.zarr", "-q")
    assert r.exit_code == 0, r.output
    assert onnx_state.Analysis.load(path / "r.zarr").n_samples == 40


def test_inspect_lists_layers(files):
    path, _ = files
    r = run_cli("inspect", path / "m.onnx")
    assert r.exit_code == 0
    assert "x: float32 (N, 3, 8, 8)" in r.output and "fc" in r.output and "MatMul" in r.output
    info = json.loads(run_cli("inspect", path / "m.onnx", "--json").output)
    assert [la["name"] for la in info["layers"]] == ["conv", "relu", "flat", "fc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "{m}", "--data", "{x}", "--attach-to", "Cnv"], "Did you mean: Conv"),
        (["analyze", "{m}", "--data", "{d}/nope.npy"], "does not exist"),
        (["analyze", "{d}/nope.onnx", "--data", "{x}"], "does not exist"),
        (["analyze", "{m}"], "give MODEL and --data"),
        (["analyze", "{m}", "--data", "{x}", "--neuron-axis", "conv"], "LAYER=AXIS"),
        (["inspect", "{x}"], "not a readable ONNX model"),
    ],
)
def test_errors_are_one_line_exit_2_no_traceback(files, args, message):
    path, _ = files
    fill = {"m": path / "m.onnx", "x": path / "x.npy", "d": path}
    r = run_cli(*[a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1


def test_api_and_cli_input_errors_are_one_line(tmp_path, bundled):
    model, x, y = bundled
    net, _ = conv_net()
    with pytest.raises(InputError, match="batch_size"):
        onnx_state.analyze(net, int_data(4), attach_to="Conv", batch_size=0)
    from onnx_state.separation import separation

    with pytest.raises(InputError, match="pca_pair"):
        separation(model, x, labels=y, samples_per_class=3, pca_pair=(0, 42))
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    (tmp_path / "file").write_text("keep me")
    np.save(tmp_path / "x.npy", int_data(4))
    onnx.save(net, tmp_path / "m.onnx")
    for args, message in [
        (["export", str(tmp_path / "bad.keras"), str(tmp_path / "o.onnx")], "Keras"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "-q",
          "-o", str(tmp_path / "file"), "--overwrite"], "not an onnx_state results store"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"),
          "--neuron-axis", "conv"], "LAYER=AXIS"),
        (["analyze", str(tmp_path / "m.onnx"), "--data", f"{tmp_path / 'x.npy'}:k"], "drop"),
    ]:  # fmt: skip
        if args[0] == "export":
            pytest.importorskip("keras")
        r = run_cli(*args)
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    assert (tmp_path / "file").read_text() == "keep me"
    assert not (tmp_path / "o.onnx").exists()


def test_existing_output_is_not_overwritten(files):
    path, _ = files
    (path / "r.zarr").mkdir()
    r = run_cli("analyze", path / "m.onnx", "--data", path / "x.npy", "-o", path / "r.zarr", "-q")
    assert r.exit_code == 2 and "already exists" in r.output


def test_module_entry_point_and_help_without_frameworks():
    """python -m onnx_state works, and the core never imports torch or tensorflow."""
    code = (
        "import sys, runpy; sys.argv=['onnx-state', 'analyze', '--example', '-q'];\n"
        "try:\n    runpy.run_module('onnx_state', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = [m for m in ('torch', 'tensorflow', 'tf2onnx', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "conv_1_post_states" in r.stdout
    h = subprocess.run(
        [sys.executable, "-m", "onnx_state", "--help"], capture_output=True, text=True
    )
    assert h.returncode == 0 and "analyze" in h.stdout and "inspect" in h.stdout


def test_out_of_memory_is_one_line_with_a_hint(files, monkeypatch):
    import onnx_state.cli.analyze as analyze_cli

    def exhausted(*args, **kwargs):
        raise MemoryError("out of memory (or over 4 billion distinct states) in the state table")

    monkeypatch.setattr(analyze_cli, "analyze", exhausted)
    tmp, _ = files
    r = run_cli("analyze", tmp / "m.onnx", "--data", tmp / "x.npy")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "smaller --batch-size" in lines[0] and "Traceback" not in r.output


# -- audit and compare: gates that exit 1 -----------------------------------------------------
def test_cli_gates_exit_1_and_bad_input_exits_2(bundled, tmp_path):
    model, x, _ = bundled
    np.save(tmp_path / "x.npy", x[:200])
    r = run_cli("audit", model, "--data", tmp_path / "x.npy", "--min-coverage", "1.01")
    assert r.exit_code == 1 and "rule(s) violated" in r.output
    (tmp_path / "rules.json").write_text(json.dumps({"max_dead_fraction": 0.5}))
    r = run_cli(
        "audit", model, "--data", tmp_path / "x.npy", "--rules", tmp_path / "rules.json", "--json"
    )
    assert r.exit_code == 0 and json.loads(r.output)["violations"] == []
    (tmp_path / "bad.json").write_text(json.dumps({"max_deadness": 0.5}))
    r = run_cli("audit", model, "--data", tmp_path / "x.npy", "--rules", tmp_path / "bad.json")
    assert r.exit_code == 2 and "unknown rule(s) max_deadness" in r.output
    r = run_cli("compare", model, model, "--data", tmp_path / "x.npy",
                "--min-state-agreement", "1", "--json")  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.output)["first_divergent"] is None
    a, _ = conv_net()
    onnx.save(a, tmp_path / "a.onnx")
    r = run_cli("compare", tmp_path / "a.onnx", model, "--data", tmp_path / "x.npy")
    assert r.exit_code == 2 and "Traceback" not in r.output


# -- export (needs torch and Keras) -----------------------------------------------------------
@pytest.mark.tensorflow
def test_export_cli_for_keras_and_torch(tmp_path, keras_pair, torch_net, monkeypatch):
    import torch

    model, _ = keras_pair
    model.save(tmp_path / "m.keras")
    r = run_cli("export", tmp_path / "m.keras", tmp_path / "k.onnx")
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(str(tmp_path / "k.onnx"))
    torch.save(torch_net.state_dict(), tmp_path / "w.pt")
    args = ["export", "examples.lenet:torch_lenet5", str(tmp_path / "t.onnx"),
            "--weights", str(tmp_path / "w.pt"), "--input-shape", "1,28,28"]  # fmt: skip
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    assert next(la.name for la in list_layers(onnx.load(tmp_path / "t.onnx"))) == "conv_1"
    bad = run_cli(*args[:3], "--input-shape", "1,28,28", "--weights", tmp_path / "m.keras",
                  "--overwrite")  # fmt: skip
    assert bad.exit_code == 2 and "cannot load" in bad.output
    assert not (tmp_path / "t.onnx.partial").exists()
    assert next(la.name for la in list_layers(onnx.load(tmp_path / "t.onnx"))) == "conv_1"
    again = run_cli(*args)  # an existing output is replaced only with --overwrite
    assert again.exit_code == 2 and "already exists" in again.output
