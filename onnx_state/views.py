"""HTML tables of results, shared by the notebook views (``_repr_html_``) and the report.

The tables hold the same columns as the CLI's text tables. Results are read through their
attributes only (no import of the result modules), so every result module can use these.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "analysis_html",
    "audit_html",
    "bar",
    "comparison_html",
    "esc",
    "number",
    "percent",
    "separation_html",
    "table_html",
]

STYLE = """
table.onnx-state{border-collapse:collapse;font:12px/1.35 system-ui,sans-serif;margin:.4em 0}
table.onnx-state th,table.onnx-state td{padding:2px 6px;border-bottom:1px solid #ddd;
text-align:right;white-space:nowrap}
table.onnx-state th{background:#f3f3f3;position:sticky;top:0}
table.onnx-state td.l,table.onnx-state th.l{text-align:left}
table.onnx-state tr.mark td{background:#fff1e6}
.onnx-state .bar{display:inline-block;height:9px;background:#4c78a8;vertical-align:middle;
margin-right:4px}
.onnx-state .bar.warn{background:#e45756}
"""


def esc(value: Any) -> str:
    """*value* as HTML text."""
    return html.escape(str(value), quote=True)


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage, or a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}%"


def number(value: float | None, spec: str = ".3f") -> str:
    """A number by *spec*, or a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def bar(fraction: float | None, text: str, warn: bool = False) -> str:
    """A table cell's content: a horizontal bar of *fraction* (0..1) of 60 px, then *text*."""
    if fraction is None or math.isnan(fraction):
        return esc(text)
    width = round(60 * min(max(fraction, 0.0), 1.0))
    kind = "bar warn" if warn else "bar"
    return f'<span class="{kind}" style="width:{width}px"></span>{esc(text)}'


def table_html(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: int = 1,
    marked: Sequence[int] = (),
    raw: Sequence[int] = (),
    css_id: str | None = None,
) -> str:
    """An HTML table; the first *left* columns align left, rows in *marked* are highlighted,
    and the cells of columns in *raw* are HTML already (bars), the rest is escaped."""
    ident = f' id="{esc(css_id)}"' if css_id else ""
    head = "".join(
        f"<th{' class=l' if i < left else ''}>{esc(h)}</th>" for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f"<td{' class=l' if i < left else ''}>{c if i in raw else esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{' class=mark' if r in marked else ''}>{cells}</tr>")
    return (
        f'<table class="onnx-state"{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _notes(lines: Sequence[str]) -> str:
    return "".join(f"<div>{esc(line)}</div>" for line in lines)


def _wrap(body: str) -> str:
    """A notebook cell's HTML: the table's style, then the content."""
    return f'<div class="onnx-state"><style>{STYLE}</style>{body}</div>'


# -- one function per result; the report calls them with standalone=False -----------------------
def network_notes(a: Any) -> list[str]:
    """The network figures under an Analysis's table (``Analysis.network_notes``)."""
    return list(a.network_notes())


def analysis_html(a: Any, standalone: bool = True) -> str:
    """The per-layer table of an Analysis (as ``Analysis.table``), then the network figures."""
    header = ["layer", "type", "neurons", "states", "unique", "entropy", "efficiency"]
    rows = []
    for r in a.layers:
        observed = r.state_count > 0
        eff = r.efficiency() if observed else None
        rows.append([
            r.name, r.layer_type, str(r.neurons), str(r.state_count), str(r.n_unique),
            number(r.entropy() if observed else None), bar(eff, percent(eff)),
        ])  # fmt: skip
    body = table_html(header, rows, left=2, raw=(6,)) + _notes(network_notes(a))
    return _wrap(body) if standalone else body


def comparison_html(c: Any, standalone: bool = True) -> str:
    """The per-pair table of a Comparison (as ``Comparison.table``); the first divergent
    layer's row is highlighted."""
    header = ["layer A", "layer B", "rule", "states", "same", "hamming", "cosine", "max|d|",
              "eff A", "eff B", "JS"]  # fmt: skip
    rows, marked = [], []
    first = c.first_divergent
    for i, p in enumerate(c.pairs):
        if getattr(p, "refused", None):
            rows.append([p.a, p.b, p.rule, f"refused: {p.refused}", *[""] * 7])
            continue
        if p.a == first:
            marked.append(i)
        rows.append([
            p.a, p.b, p.rule, str(p.states),
            bar(p.state_agreement, percent(p.state_agreement, 3),
                warn=p.state_agreement < c.threshold),
            f"{p.mean_hamming:.4f}", f"{p.cosine:.5f}", f"{p.max_abs_diff:.3g}",
            percent(p.efficiency_a), percent(p.efficiency_b), f"{p.js_divergence:.4f}",
        ])  # fmt: skip
    notes = [
        f"samples: {c.n_samples}",
        f"outputs: max |diff| {c.output_max_abs_diff:.3g}, top-1 agreement "
        f"{percent(c.top1_agreement)}",
    ]
    if c.accuracy_a is not None:
        notes.append(f"accuracy A {percent(c.accuracy_a)}, B {percent(c.accuracy_b)}")
    if c.unmatched_a or c.unmatched_b:
        notes.append(f"unmatched in A: {', '.join(c.unmatched_a) or '-'}")
        notes.append(f"unmatched in B: {', '.join(c.unmatched_b) or '-'}")
    if first:
        notes.append(f"first layer below {100 * c.threshold:g}% state agreement: {first}")
    body = table_html(header, rows, left=3, marked=marked, raw=(4,)) + _notes(notes)
    return _wrap(body) if standalone else body


def _short(items: Sequence[int], n: int = 20) -> str:
    text = ", ".join(str(i) for i in items[:n])
    return text + (f", … ({len(items)} in all)" if len(items) > n else "")


def audit_html(a: Any, standalone: bool = True) -> str:
    """The per-layer table of an Audit (as ``Audit.table``), then dead, always-on and the
    most novel samples."""
    ref = a.reference is not None
    header = ["layer", "neurons", "dead", "on", "cover", "top-k"]
    header += ["novelty", "JS", "Δeff"] if ref else []
    rows = []
    for la in a.layers:
        row = [la.name, str(la.neurons), str(len(la.dead)), str(len(la.always_on)),
               bar(la.coverage, percent(la.coverage)), percent(la.topk_coverage)]  # fmt: skip
        if ref:
            row += [
                bar(la.novelty, percent(la.novelty, 3)),
                number(la.js_divergence, ".4f"),
                number(la.efficiency_drift, "+.4f"),
            ]
        rows.append(row)
    notes = [f"samples: {a.n_samples}, top-k coverage with k={a.k}"]
    for la in a.layers:
        if la.dead:
            notes.append(f"{la.name}: dead neurons {_short(la.dead)}")
        if la.always_on:
            notes.append(f"{la.name}: always-on neurons {_short(la.always_on)}")
        if ref and la.most_novel_samples:
            notes.append(f"{la.name}: most novel samples {_short(la.most_novel_samples)}")
    if a.accuracy is not None:
        notes.append(f"accuracy: {percent(a.accuracy)}")
    raw = (4, 6) if ref else (4,)
    body = table_html(header, rows, raw=raw) + _notes(notes)
    return _wrap(body) if standalone else body


def separation_html(
    s: Any, formula: str = "friedman_rafsky", pairs: bool = False, standalone: bool = True
) -> str:
    """Mean separation per layer and split (as ``SeparationResult.table``); with *pairs*,
    each layer's class x class matrix too."""
    splits = list(s.cross)
    header = ["layer", *(f"mean {sp}" for sp in splits)]
    rows = []
    for layer in s.layers:
        means = [s.mean(layer, sp, formula) for sp in splits]
        rows.append([layer, *(bar(m, f"{m:.4f}") for m in means)])
    sizes = ", ".join(f"{sp}: {min(n)}-{max(n)} per class" for sp, n in s.sizes.items())
    body = table_html(header, rows, raw=tuple(range(1, len(splits) + 1)))
    body += _notes([f"classes: {s.classes}; samples {sizes}; formula: {formula}"])
    if pairs:
        for sp in splits:
            for layer in s.layers:
                m = s.matrix(layer, sp, formula)
                head = [f"{layer} ({sp})", *(str(c) for c in s.classes)]
                cells = [
                    [str(ci), *("-" if i == j else f"{m[i, j]:.3f}" for j in range(len(m)))]
                    for i, ci in enumerate(s.classes)
                ]
                body += table_html(head, cells)
    return _wrap(body) if standalone else body
