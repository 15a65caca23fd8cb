"""Henze–Penrose separation: formulas, permutation tests, the API, save/load, CLI, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_state.errors import InputError
from onnx_state.mst import cross_edges
from onnx_state.separation import (
    SeparationResult,
    henze_penrose,
    permutation_test,
    separation,
    separation_tests,
)
from tests.cli import run_cli


def test_formulas_by_hand():
    # N = 10, n_i = n_j = 5
    assert henze_penrose(1, 5, 5, "source") == pytest.approx(1 - 2 / 10)
    assert henze_penrose(7, 5, 5, "source") == pytest.approx(0.0)
    assert henze_penrose(1, 5, 5) == pytest.approx(1.0)
    assert henze_penrose(5, 5, 5) == pytest.approx(1 - 10 / 50 * 4)
    assert henze_penrose(9, 5, 5) == 0.0
    with pytest.raises(InputError, match="formula"):
        henze_penrose(1, 5, 5, "other")


def test_blobs_separate_and_one_distribution_does_not():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((100, 10))
    far = rng.standard_normal((100, 10)) + 20
    same = rng.standard_normal((100, 10))
    assert henze_penrose(cross_edges(a, far), 100, 100) == pytest.approx(1.0)
    assert henze_penrose(cross_edges(a, same), 100, 100) < 0.2


def test_permutation_p_values_are_uniform_under_the_null_and_small_otherwise():
    from scipy.stats import kstest

    rng = np.random.default_rng(4)
    ps = [permutation_test(rng.normal(size=15), rng.normal(size=15), n=199, seed=i)[1]
          for i in range(300)]  # fmt: skip
    assert 0.03 < np.mean(np.array(ps) < 0.1) < 0.18
    assert kstest(ps, "uniform").pvalue > 0.001
    diff, p = permutation_test(rng.normal(size=20) + 2, rng.normal(size=20), n=999, seed=0)
    assert diff > 1 and p == pytest.approx(1 / 1000)
    assert permutation_test([1, 2], [3, 4], n=50, seed=7) == permutation_test(
        [1, 2], [3, 4], n=50, seed=7
    )


def test_separation_on_the_bundled_model_equals_an_independent_mst(bundled):
    import networkx as nx

    from onnx_state.capture import Instrumented

    model, x, y = bundled
    r = separation(model, x, labels=y, attach_to=["Conv2d"], samples_per_class=12,
                   draw="random", seed=3, test_data=x[1000:], test_labels=y[1000:])  # fmt: skip
    assert r.layers == ["input:x", "conv_1_post_states", "conv_2_post_states", "conv_3_post_states"]
    # class 3 vs class 8 at conv_2, recomputed from scratch
    rng = np.random.default_rng(3)
    pick = [np.sort(rng.choice(np.flatnonzero(y == c), 12, replace=False)) for c in range(10)]
    inst = Instrumented(model, attach_to=["Conv2d"])
    cap = next(c for c in inst.captures if c.name == "conv_2_post_states")
    feats = [inst.run({"x": x[pick[c]]}).captured[cap.tensor].reshape(12, -1) for c in (3, 8)]
    pts = np.concatenate(feats).astype(np.float64)
    g = nx.Graph()
    for i in range(24):
        for j in range(i + 1, 24):
            g.add_edge(i, j, weight=float(np.linalg.norm(pts[i] - pts[j])))
    s = sum((i < 12) != (j < 12) for i, j in nx.minimum_spanning_tree(g).edges())
    assert r.cross["train"]["conv_2_post_states"][3, 8] == s
    assert r.matrix("conv_2_post_states")[3, 8] == pytest.approx(henze_penrose(s, 12, 12))
    assert set(r.cross) == {"train", "test"}
    small = separation(model, x, labels=y, attach_to=["Conv2d"], samples_per_class=12,
                       draw="random", seed=3, max_matrix_bytes=0, include_input=False)  # fmt: skip
    for layer in small.layers:
        np.testing.assert_array_equal(small.cross["train"][layer], r.cross["train"][layer])


def test_save_load_tests_cli_and_plots(bundled, tmp_path):
    model, x, y = bundled
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = [
        "separation", model, "--data", str(tmp_path / "x.npy"), "--labels",
        str(tmp_path / "y.npy"), "--attach-to", "Conv2d", "--samples-per-class", "8",
    ]  # fmt: skip
    r = run_cli(*args, "-o", tmp_path / "a.json", "--plots", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert "conv_3_post_states" in r.output
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert "mean_per_layer.png" in files and "heatmap_conv_1_post_states.png" in files
    assert "pca_conv_1_post_states.png" in files and "hist_conv_2_post_states.png" in files
    a = SeparationResult.load(tmp_path / "a.json")
    r2 = run_cli(*args, "--draw", "random", "-o", tmp_path / "b.json")
    assert r2.exit_code == 0
    t = run_cli("separation-test", tmp_path / "a.json", tmp_path / "b.json", "-n", "200", "--json")
    rows = json.loads(t.output)
    assert [row["a"] for row in rows] == a.layers
    t = run_cli("separation-test", tmp_path / "a.json", "--layers")
    assert t.exit_code == 0 and "not independent" in t.output
    assert len(separation_tests(a, layers=True, n=50)) == len(a.layers) - 1
    bad = run_cli("separation-test", tmp_path / "x.npy")
    assert bad.exit_code == 2 and "cannot read separation result" in bad.output


def test_separation_error_paths(bundled):
    model, x, y = bundled
    with pytest.raises(InputError, match="fewer than samples_per_class"):
        separation(model, x, labels=y, samples_per_class=1000)
    with pytest.raises(InputError, match="at least two classes"):
        separation(model, x[y == 1], labels=y[y == 1], samples_per_class=5)
    with pytest.raises(InputError, match="labels for"):
        separation(model, x, labels=y[:-1], samples_per_class=5)
    with pytest.raises(InputError, match="needs test_labels"):
        separation(model, x, labels=y, samples_per_class=5, test_data=x)


def test_per_pair_separations_for_both_formulas_in_the_result_json_and_table(tmp_path, capsys):
    import onnx

    from tests.models import conv_net, int_data

    model, _ = conv_net()
    x = int_data(60)
    y = np.arange(60) % 3
    r = separation(model, x, labels=y, attach_to="Conv", samples_per_class=12, progress=True)
    assert "MSTs (train)" in capsys.readouterr().err  # a bar over the layers' MSTs
    d = r.to_dict()
    for layer in r.layers:
        s = r.cross["train"][layer]
        for formula in ("friedman_rafsky", "source"):
            m = r.pairs(formula)["train"][layer]
            written = d["pairs"][formula]["train"][layer]
            for i in range(3):
                assert np.isnan(m[i, i]) and written[i][i] is None
                for j in range(3):
                    if i == j:
                        continue
                    n_i = n_j = 12  # by hand, from the cross-edge count
                    if formula == "source":
                        want = 1 - 2 * min((n_i + n_j) / 2, s[i, j]) / (n_i + n_j)
                    else:
                        want = max(0.0, 1 - (n_i + n_j) / (2 * n_i * n_j) * (s[i, j] - 1))
                    assert m[i, j] == pytest.approx(want, abs=1e-12)
                    assert written[i][j] == pytest.approx(want, abs=1e-12)
    back = SeparationResult.from_dict(json.loads(json.dumps(d)))
    for layer in r.layers:
        np.testing.assert_array_equal(back.matrix(layer), r.matrix(layer))
    assert back.run == r.run and r.run is not None and r.run["batch_size"] == 36
    text = r.table(pairs=True)
    m = r.matrix("conv_post_states")
    assert "conv_post_states (train): class x class separation" in text
    assert f"{m[0, 1]:7.4f}" in text and f"{m[1, 2]:7.4f}" in text
    assert "class x class" not in r.table()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = run_cli("separation", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", "--labels",
                  tmp_path / "y.npy", "--attach-to", "Conv", "--samples-per-class", "12",
                  "--pairs", "--formula", "source")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"{r.matrix('conv_post_states', formula='source')[0, 2]:7.4f}" in out.output
