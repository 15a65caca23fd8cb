"""Notebook views: ``_repr_html_`` of every result holds the CLI table's rows and figures."""

from __future__ import annotations

import re

import numpy as np

import onnx_state
from onnx_state.audit import audit
from onnx_state.compare import compare
from onnx_state.separation import separation
from tests.models import conv_net, int_data


def _cells(html: str) -> list[str]:
    """The text of every table cell (bars dropped)."""
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", html)]


def test_every_result_shows_its_cli_table_as_html(net):
    model, _, x, _ = net
    other, _ = conv_net(seed=1)
    a = onnx_state.analyze(model, x, attach_to=["Conv", "MatMul"], labels=np.arange(53) % 5)
    html = a._repr_html_()
    cells = _cells(html)
    for r in a.layers:  # the same figures as Analysis.table prints
        assert r.name in cells and str(r.state_count) in cells and str(r.n_unique) in cells
        assert f"{r.entropy():.3f}" in cells and f"{100 * r.efficiency():.2f}%" in cells
    assert f"network efficiency: {100 * a.network_efficiency():.2f}%" in html
    assert "<script" not in html and "<style>" in html

    c = compare(model, other, x, attach_to=["Conv", "MatMul"])
    cells = _cells(c._repr_html_())
    for p in c.compared:
        assert f"{100 * p.state_agreement:.3f}%" in cells and f"{p.mean_hamming:.4f}" in cells
    assert f"first layer below 99% state agreement: {c.first_divergent}" in c._repr_html_()
    assert "class=mark" in c._repr_html_()

    ref = onnx_state.analyze(model, x[:30], attach_to=["Conv", "MatMul"])
    au = audit(model, x[30:], reference=ref, attach_to=["Conv", "MatMul"])
    cells = _cells(au._repr_html_())
    for la in au.layers:
        assert la.name in cells and str(len(la.dead)) in cells
        assert f"{100 * la.novelty:.3f}%" in cells

    s = separation(model, int_data(40), labels=np.arange(40) % 2, attach_to="Conv",
                   samples_per_class=8)  # fmt: skip
    cells = _cells(s._repr_html_())
    for layer in s.layers:
        assert layer in cells and f"{s.mean(layer):.4f}" in cells
