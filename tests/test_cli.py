"""The CLI: thin over the API, one-line errors with exit code 2, JSON with sorted keys."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnx_state
from onnx_state.cli import main
from tests.models import conv_net, int_data


@pytest.fixture
def files(tmp_path):
    model, _ = conv_net()
    onnx.save(model, tmp_path / "m.onnx")
    x = int_data(40)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(40) % 5)
    return tmp_path, x


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_example_runs_and_prints_the_table():
    r = run("analyze", "--example", "--quiet")
    assert r.exit_code == 0, r.output
    assert "conv_1_post_states" in r.output and "network efficiency" in r.output
    assert "accuracy" in r.output and "aIQ" in r.output


def test_analyze_json_equals_the_python_api(files):
    path, x = files
    r = run(
        "analyze", path / "m.onnx", "--data", path / "x.npy", "--labels", path / "y.npy",
        "--attach-to", "Conv", "--attach-to", "fc", "--batch-size", "7", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = onnx_state.analyze(
        path / "m.onnx", x, attach_to=["Conv", "fc"], labels=np.arange(40) % 5
    ).to_dict()
    assert got == json.loads(json.dumps(want))
    assert list(got) == sorted(got)


def test_output_store_is_written_and_loads(files):
    path, _ = files
    r = run("analyze", path / "m.onnx", "--data", path / "x.npy", "-o", path / "r.zarr", "-q")
    assert r.exit_code == 0, r.output
    assert onnx_state.Analysis.load(path / "r.zarr").n_samples == 40


def test_inspect_lists_layers(files):
    path, _ = files
    r = run("inspect", path / "m.onnx")
    assert r.exit_code == 0
    assert "x: float32 (N, 3, 8, 8)" in r.output and "fc" in r.output and "MatMul" in r.output
    info = json.loads(run("inspect", path / "m.onnx", "--json").output)
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
    r = run(*[a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1


def test_existing_output_is_not_overwritten(files):
    path, _ = files
    (path / "r.zarr").mkdir()
    r = run("analyze", path / "m.onnx", "--data", path / "x.npy", "-o", path / "r.zarr", "-q")
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
    r = run("analyze", tmp / "m.onnx", "--data", tmp / "x.npy")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "smaller --batch-size" in lines[0] and "Traceback" not in r.output
