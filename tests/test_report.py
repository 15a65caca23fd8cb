"""The HTML report: its sections and figures, offline and small, and rendered in Chromium."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest

import onnx_state
from onnx_state.report import SECTIONS, build_report, save_report
from onnx_state.results import Analysis, LayerResult, RunRecord, States
from tests.browser import find_chromium, open_page
from tests.cli import run_cli
from tests.models import conv_net, int_data
from tests.reference import reference_renyi, unique_rows

pytest.importorskip("matplotlib")

ANALYSIS_SECTIONS = ("run-record", "layers", "efficiency", "entropy", "rank-frequency", "firing")
# Anything that would make a browser fetch: a URL in src/href/url(), a script, a stylesheet.
_FETCH = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?!data:|#)[a-z]+:|url\(\s*["']?(?!data:|#)|<script|<link""", re.I
)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(results store, HTML report) of the bundled example, written by the CLI."""
    folder = tmp_path_factory.mktemp("example")
    store, html = folder / "example.zarr", folder / "example.html"
    result = run_cli("analyze", "--example", "-o", store, "--report", html, "-q")
    assert result.exit_code == 0, result.output
    return store, html


def _layer(name: str, neurons: int, unique: int, seed: int, total: int = 0) -> LayerResult:
    """A layer of *unique* random distinct states with random counts (no model needed)."""
    rng = np.random.default_rng(seed)
    width = (neurons + 7) // 8
    bits = rng.random((unique * 2, neurons)) < rng.uniform(0.05, 0.95, neurons)
    bits[:, : min(2, neurons)] = False  # two dead neurons
    ids, _ = unique_rows(np.packbits(bits, axis=1, bitorder="little"))  # sorted, distinct
    ids = ids[:unique].reshape(-1, width)
    counts = rng.integers(1, 50, len(ids)).astype(np.int64)
    return LayerResult(
        name=name, tensor=name, layer=name, layer_type="Conv2d", op_type="Conv", kind="post",
        neurons=neurons, axis=1, state_count=int(counts.sum()), nan_count=0,
        states=States(ids, counts),
    )  # fmt: skip


def synthetic(n_layers: int, classes: int = 10) -> dict[str, Any]:
    """``build_report`` keywords for a synthetic model of *n_layers* layers: an analysis,
    a comparison, an audit and a separation result (no model is run)."""
    from onnx_state.audit import Audit, LayerAudit
    from onnx_state.compare import Comparison, PairResult
    from onnx_state.separation import SeparationResult

    layers = [
        _layer(f"block{i}.conv", [16, 64, 128, 512][i % 4], [50, 2000, 500, 3000][i % 4], i)
        for i in range(n_layers)
    ]
    run = RunRecord.now(["CPUExecutionProvider"], None, "all", 200)
    analysis = Analysis(
        layers=layers, n_samples=10_000, model_sha256="0" * 64, data_fingerprint="xxh3_128:0",
        accuracy=0.9, parity_max_abs_diff=0.0, run=run,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    agree = np.clip(1 - np.cumsum(rng.uniform(0, 0.01, n_layers)), 0, 1)
    pairs: list[Any] = [
        PairResult(r.name, r.name, "name", r.neurons, r.state_count, float(a), float(a),
                   float(a), float((1 - a) * r.neurons), 0.1, 0.01, 0.999, 0.3, 0.3, 0.01)
        for r, a in zip(layers, agree)
    ]  # fmt: skip
    comparison = Comparison(pairs, [], [], 10_000, 0.2, 0.99, 0.9, 0.9, run=run.to_dict())
    audited = [
        LayerAudit(r.name, r.neurons, r.state_count, r.efficiency(), [0, 1], [], 0.9, 0.8,
                   float(rng.uniform()), 0.1, 0.01, [3, 1, 4])
        for r in layers
    ]  # fmt: skip
    audit = Audit(audited, 10_000, 2, 0.9, "reference.zarr", run=run.to_dict())
    cross = {}
    for r in layers:
        s = rng.integers(1, 40, (classes, classes))
        s = np.triu(s, 1) + np.triu(s, 1).T
        np.fill_diagonal(s, -1)
        cross[r.name] = s
    separation = SeparationResult(list(range(classes)), [r.name for r in layers],
                                  {"train": cross}, {"train": [100] * classes},
                                  run=run.to_dict())  # fmt: skip
    return {"analysis": analysis, "comparison": comparison, "audit": audit,
            "separation": separation}  # fmt: skip


def test_example_report_holds_every_analysis_section_and_the_right_figures(example):
    store, html = example
    text = html.read_text()
    a = Analysis.load(store)
    for ident in ANALYSIS_SECTIONS:
        assert f'<section id="{ident}">' in text
    for ident in ("compare", "audit", "separation"):
        assert f'<section id="{ident}">' not in text
    assert text.count("<svg") == 4  # efficiency, entropy, rank-frequency, firing
    cells = re.findall(r"<td[^>]*>(.*?)</td>", text)
    for r in a.layers:
        counts = r.counts().astype(float)
        n, k = counts.sum(), len(counts)
        plug_in = reference_renyi(counts, 1)
        miller_madow = plug_in + (k - 1) / (2 * n * math.log(2))
        assert f"{plug_in:.3f}" in cells and f"{miller_madow:.3f}" in cells
        assert any(c.startswith(f"{math.log2(r.state_count):.3f}") for c in cells)
    assert "onnxruntime" in text and a.run is not None and a.run.onnxruntime in text
    assert len(text.encode()) < 300_000


def test_the_report_command_rebuilds_the_same_report_from_the_store(example, tmp_path):
    store, html = example
    out = tmp_path / "again.html"
    result = run_cli("report", store, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert out.read_text() == html.read_text()  # deterministic: same store, same bytes
    again = run_cli("report", store, "-o", out, "-q")
    assert again.exit_code == 2 and "already exists" in again.output
    assert run_cli("report", store, "-o", out, "-q", "--overwrite").exit_code == 0
    nothing = run_cli("report", "-o", tmp_path / "x.html")
    assert nothing.exit_code == 2 and "give a results STORE" in nothing.output
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "onnx_state.comparison"}))
    bad = run_cli("report", "--compare", tmp_path / "bad.json", "-o", tmp_path / "y.html")
    assert bad.exit_code == 2 and "bad.json" in bad.output and len(bad.output.splitlines()) == 1
    assert not (tmp_path / "y.html").exists()


def test_a_report_is_offline_and_holds_no_raw_states():
    marker = b"RAWSTATE"  # one 64-neuron state whose bytes spell a word
    ids = np.frombuffer(marker, dtype=np.uint8).reshape(1, 8)
    layer = LayerResult(
        "m", "m", "m", "Dense", "Gemm", "post", 64, 1, 5, 0, States(ids, np.array([5]))
    )
    a = Analysis([layer], 5, "0" * 64, "xxh3_128:0")
    text = build_report(a)
    assert "RAWSTATE" not in text and marker.hex() not in text
    assert "UkFXU1RBVEU" not in text  # base64 of the marker
    assert _FETCH.findall(text) == []
    assert "not recorded (a schema version 1 store)" in text


def test_a_100_layer_report_fits_its_size_budget(tmp_path):
    results = synthetic(100)
    a = results["analysis"]
    path = save_report(tmp_path / "big.html", **results)
    size = path.stat().st_size
    print(f"100-layer report, every section: {size / 1e6:.2f} MB")
    assert size <= 2_000_000
    text = path.read_text()
    assert all(f'<section id="{ident}">' in text for ident in SECTIONS)
    # every layer is in the table, with its dead neurons counted from the raw bits
    rows = re.findall(r"<tr><td class=l>block\d+\.conv</td><td class=l>Conv2d</td>.*?</tr>", text)
    assert len(rows) == 100
    for row, r in zip(rows, a.layers):
        bits = np.unpackbits(r.state_ids(), axis=1, bitorder="little")[:, : r.neurons]
        dead = int(np.sum(r.counts() @ bits == 0))
        assert dead >= 2 and f"</span>{dead}</td>" in row
    assert _FETCH.findall(text) == []


def test_compare_audit_and_separation_sections(tmp_path):
    model, _ = conv_net()
    other, _ = conv_net(seed=1)  # other weights: states diverge from the first layer on
    x = int_data(53)
    y = np.arange(53) % 2
    from onnx_state.audit import audit
    from onnx_state.compare import compare
    from onnx_state.separation import separation

    compared = compare(model, other, x, attach_to=["Conv", "MatMul"])
    assert compared.first_divergent == "conv_post_states"
    reference = onnx_state.analyze(model, x[:30], attach_to=["Conv", "MatMul"])
    audited = audit(model, x[30:], reference=reference, attach_to=["Conv", "MatMul"])
    separated = separation(model, x, labels=y, attach_to="Conv", samples_per_class=10)
    text = build_report(comparison=compared, audit=audited, separation=separated)
    for ident in ("run-record", "compare", "audit", "separation"):
        assert f'<section id="{ident}">' in text
    assert '<section id="layers">' not in text
    assert "first divergent" in text  # the plot's mark (text stays text in the SVG)
    assert "<tr class=mark><td class=l>conv_post_states" in text  # and the table's
    for la in audited.layers:
        assert f"{100 * la.novelty:.3f}%" in text
    heads = re.search(r'<section id="run-record">.*?<thead>(.*?)</thead>', text).group(1)
    assert re.findall(r"<th[^>]*>([^<]*)</th>", heads) == ["", "compare", "audit", "separation"]
    batch = re.search(r"<td class=l>batch size</td>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", batch) == ["53", "23", "20"]
    n_sep = len(separated.cross)
    assert text.count("<svg") == 1 + 1 + 1 + n_sep  # compare, audit, mean, a grid per split


def test_the_commands_write_reports_and_read_them_back_from_json(tmp_path):
    import onnx

    model, _ = conv_net()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", int_data(40))
    np.save(tmp_path / "y.npy", np.arange(40) % 2)
    m, x, y = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npy"
    result = run_cli("compare", m, m, "--data", x, "--json", "--report", tmp_path / "c.html", "-q")
    assert result.exit_code == 0, result.output
    assert '<section id="compare">' in (tmp_path / "c.html").read_text()
    (tmp_path / "c.json").write_text(result.stdout)
    assert json.loads(result.stdout)["run"]["providers"] == ["CPUExecutionProvider"]
    result = run_cli("audit", m, "--data", x, "--json", "--report", tmp_path / "a.html", "-q")
    assert result.exit_code == 0, result.output
    (tmp_path / "a.json").write_text(result.stdout)
    result = run_cli("separation", m, "--data", x, "--labels", y, "--samples-per-class", "5",
                     "-o", tmp_path / "s.json", "--report", tmp_path / "s.html")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run_cli("report", "--compare", tmp_path / "c.json", "--audit", tmp_path / "a.json",
                     "--separation", tmp_path / "s.json", "-o", tmp_path / "all.html")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (tmp_path / "all.html").read_text()
    assert all(f'<section id="{i}">' in text for i in ("compare", "audit", "separation"))
    again = run_cli("compare", m, m, "--data", x, "--report", tmp_path / "c.html")
    assert again.exit_code == 2 and "already exists" in again.output


def test_report_building_shows_progress_when_asked(capsys):
    build_report(synthetic(3)["analysis"], progress=True)
    assert "report" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------------
def _chromium() -> str:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/run installs it)")
    return chromium


def test_the_browser_check_catches_errors_and_requests(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<p id="p">x</p><script>console.error("boom"); nope();</script>'
                   '<img src="https://example.invalid/a.png">')  # fmt: skip
    page = open_page(_chromium(), bad.as_uri(), ('document.getElementById("p").textContent',))
    assert any("boom" in e for e in page.errors)
    assert any("nope" in e for e in page.errors)
    assert "https://example.invalid/a.png" in page.requests
    assert page.values['document.getElementById("p").textContent'] == "x"


def test_the_example_report_renders_in_chromium(example, tmp_path):
    _, html = example
    ids = "Array.from(document.querySelectorAll('section')).map(s => s.id)"
    figures = "document.querySelectorAll('section figure svg').length"
    rows = "document.querySelectorAll('#layers tbody tr').length"
    width = "Math.round(document.querySelector('#entropy svg').getBoundingClientRect().width)"
    page = open_page(_chromium(), html.as_uri(), (ids, figures, rows, width))
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("file:", "data:"))] == []
    assert page.values[ids] == list(ANALYSIS_SECTIONS)
    assert set(page.values[ids]) <= set(SECTIONS)
    assert page.values[figures] == 4
    assert page.values[rows] == 4  # the four layers of LeNet-5
    assert page.values[width] > 200  # the plot is laid out, not collapsed
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot.startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_a_layer_name_with_dollars_is_drawn_as_text():
    """matplotlib would read `$...$` in a label as mathtext (and fail on `a$\\foo$b`)."""
    pytest.importorskip("matplotlib")
    states = States(np.array([[1], [2]], np.uint8), np.array([2, 3]))
    name = "a$\\foo$b"
    layer = LayerResult(name, "t", name, "T", "Op", "post", 3, 1, 5, 0, states)
    html = build_report(Analysis([layer], 5, "0" * 64, "xxh3_128:" + "0" * 32))
    assert name in html
