"""One self-contained HTML report of an analysis, and of compare, audit and separation results.

Plots are drawn by matplotlib (the ``plots`` extra) as SVG and written inline: text stays
text (``svg.fonttype = none``) and dense marks (one dot per neuron) are rasterized into the
SVG as small PNGs, so a report of 100 layers stays within a few hundred kilobytes. The file
loads nothing (no script, no stylesheet, no font from elsewhere) and holds no raw states:
only per-layer figures, downsampled rank–frequency curves and per-neuron firing rates.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_state.errors import InputError, MissingExtraError
from onnx_state.outputs import check_output, deferred_interrupts, progress_bar
from onnx_state.separation import FORMULAS
from onnx_state.views import (
    STYLE,
    audit_html,
    bar,
    comparison_html,
    esc,
    network_notes,
    number,
    percent,
    separation_html,
    table_html,
)

if TYPE_CHECKING:
    from onnx_state.audit import Audit
    from onnx_state.compare import Comparison
    from onnx_state.results import Analysis, LayerResult
    from onnx_state.separation import SeparationResult

__all__ = ["SECTIONS", "build_report", "check_report_path", "load_result", "save_report"]

# The sections a report can hold, by HTML id (the browser test looks for them).
SECTIONS = {
    "run-record": "Run record",
    "layers": "Layers",
    "efficiency": "Efficiency by layer",
    "entropy": "Entropy and its ceilings",
    "rank-frequency": "State rank–frequency",
    "firing": "Per-neuron firing rates",
    "compare": "Comparison",
    "audit": "Audit",
    "separation": "Class separation",
}
_RANK_POINTS = 120  # points per rank–frequency curve (log-spaced ranks)
_PAGE_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ccc} p.hint{color:#555;margin:.2em 0 .6em}
nav a{margin-right:.8em} figure{margin:.5em 0} svg{max-width:100%;height:auto}
.scroll{overflow-x:auto;max-height:32em;overflow-y:auto}
"""


# -- plotting -----------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError(
            "the HTML report needs matplotlib: pip install 'onnx-state[plots]'"
        ) from exc
    return plt


@contextmanager
def _style() -> Iterator[Any]:
    plt = _pyplot()
    rc = {
        "svg.fonttype": "none",
        "svg.hashsalt": "onnx_state",
        "font.size": 8,
        "font.sans-serif": ["DejaVu Sans", "Arial"],  # (named in every SVG text element)
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 7,
        "legend.frameon": False,
        "text.parse_math": False,
    }  # fmt: skip  (layer names are text, never mathtext)
    with plt.rc_context(rc):
        yield plt


def _svg(fig: Any) -> str:
    """*fig* as an inline <svg> element (no XML prolog, no date), the figure closed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None}, dpi=120)
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _layer_axis(ax: Any, names: Sequence[str]) -> None:
    """Layer names under the x axis (every k-th for many layers)."""
    step = max(1, math.ceil(len(names) / 40))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks, [names[i][:24] for i in ticks], rotation=60, ha="right", fontsize=6)
    ax.set_xlim(-0.6, len(names) - 0.4)


def _width(n: int) -> float:
    return min(11.0, max(5.5, 0.12 * n + 3))


def _efficiency_plot(layers: Sequence[LayerResult]) -> str:
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(_width(len(layers)), 2.6))
        eff = [100 * r.efficiency() if r.state_count else 0.0 for r in layers]
        ax.bar(range(len(layers)), eff, color="#4c78a8")
        ax.set(ylabel="efficiency (%)", ylim=(0, 100), title="efficiency = entropy / neurons")
        _layer_axis(ax, [r.name for r in layers])
        return _svg(fig)


def _entropy_plot(layers: Sequence[LayerResult], rows: Sequence[dict[str, Any]]) -> str:
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(_width(len(layers)), 3.0))
        x = np.arange(len(layers))
        h = np.array([r["entropy"] for r in rows], dtype=float)
        low = np.array([r["low"] for r in rows], dtype=float)
        high = np.array([r["high"] for r in rows], dtype=float)
        cap = np.log2(np.maximum([r.state_count for r in layers], 1))
        neurons = np.array([r.neurons for r in layers], dtype=float)
        ax.plot(x, cap, "--", color="#e45756", lw=1, marker="_", ms=12,
                label="ceiling: log2(states counted)")  # fmt: skip
        ax.plot(x, neurons, ":", color="#72b7b2", lw=1.2, marker="_", ms=12,
                label="ceiling: neurons (1 bit each)")  # fmt: skip
        # The percentile interval need not bracket the plug-in estimate (it is biased low):
        # draw it as it is, beside the point.
        ax.plot(x, h, "o-", color="#4c78a8", ms=3, lw=1, label="entropy (plug-in)")
        ax.vlines(x + 0.12, low, high, color="#4c78a8", lw=1.5, label="bootstrap interval")
        ax.plot(x, [r["miller_madow"] for r in rows], "^", color="#f58518", ms=4,
                label="Miller–Madow")  # fmt: skip
        ax.plot(x, [r["chao_shen"] for r in rows], "s", color="#54a24b", ms=3, label="Chao–Shen")
        # Log above 1 bit: entropies of ~10 bits and ceilings of thousands of neurons both show.
        ax.set_yscale("symlog", base=2, linthresh=1)
        ax.set(ylabel="bits (log scale above 1)", ylim=(0, 2 * max(cap.max(), neurons.max())))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        _layer_axis(ax, [r.name for r in layers])
        return _svg(fig)


def _rank_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, frequency) of the states, most frequent first, at <= _RANK_POINTS ranks."""
    freq = np.sort(counts)[::-1] / max(int(counts.sum()), 1)
    ranks = np.unique(np.geomspace(1, len(freq), num=min(len(freq), _RANK_POINTS)).astype(int))
    return ranks, freq[ranks - 1]


def _rank_plot(layers: Sequence[LayerResult]) -> str:
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(7.0, 3.6))
        cmap = plt.get_cmap("viridis")
        many = len(layers) > 12
        for i, r in enumerate(layers):
            if not r.state_count:
                continue
            ranks, freq = _rank_curve(r._counts_any_order())
            color = cmap(i / max(len(layers) - 1, 1))
            ax.loglog(ranks, freq, lw=1, color=color, label=None if many else r.name[:28])
        ax.set(xlabel="rank of the state (most frequent first)", ylabel="fraction of states",
               title="state rank–frequency per layer")  # fmt: skip
        if many:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(layers) - 1))
            fig.colorbar(sm, ax=ax, label="layer index (depth)")
        else:
            ax.legend(loc="lower left")
        return _svg(fig)


def _firing_plot(layers: Sequence[LayerResult]) -> str:
    """Each neuron's firing rate as a dot per layer; dead (rate 0) and always-on (rate 1)
    neurons drawn in their own colors and counted above each layer."""
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(_width(len(layers)), 3.2))
        rng = np.random.default_rng(0)  # jitter only: the same picture every time
        for i, r in enumerate(layers):
            if not r.state_count:
                continue
            rate = r.firing_rates()
            fired = r.firing_counts()
            dead, on = fired == 0, (fired == r.state_count) & (r.state_count > 0)
            x = i + rng.uniform(-0.3, 0.3, len(rate))
            live = ~(dead | on)
            ax.scatter(x[live], rate[live], s=5, color="#4c78a8", alpha=0.6, lw=0,
                       rasterized=True)  # fmt: skip
            ax.scatter(x[dead], rate[dead], s=9, color="#e45756", lw=0, rasterized=True)
            ax.scatter(x[on], rate[on], s=9, color="#f58518", lw=0, rasterized=True)
            if dead.any() or on.any():
                ax.annotate(f"{int(dead.sum())}/{int(on.sum())}", (i, 1.02), ha="center",
                            fontsize=5, annotation_clip=False)  # fmt: skip
        ax.scatter([], [], s=9, color="#e45756", label="dead (never fires)")
        ax.scatter([], [], s=9, color="#f58518", label="always on")
        ax.set(ylabel="firing rate", ylim=(-0.03, 1.08),
               title="firing rate of every neuron (numbers: dead / always-on)")  # fmt: skip
        ax.legend(loc="lower right", ncol=2)
        _layer_axis(ax, [r.name for r in layers])
        return _svg(fig)


def _compare_plot(c: Comparison) -> str:
    pairs = c.compared
    with _style() as plt:
        fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(_width(len(pairs)), 4.0))
        x = np.arange(len(pairs))
        top.plot(x, [100 * p.state_agreement for p in pairs], "o-", ms=3, label="state agreement")
        top.plot(x, [100 * p.neuron_agreement_mean for p in pairs], "s-", ms=3,
                 label="neuron agreement (mean)")  # fmt: skip
        top.axhline(100 * c.threshold, color="#999", ls=":", lw=1, label="threshold")
        bottom.bar(x, [p.mean_hamming for p in pairs], color="#72b7b2")
        first = c.first_divergent
        names = [p.a for p in pairs]
        if first in names:
            k = names.index(first)
            for ax in (top, bottom):
                ax.axvline(k, color="#e45756", lw=1.2)
            top.annotate("first divergent", (k, 100 * c.threshold), xytext=(4, -12),
                         textcoords="offset points", color="#e45756", fontsize=7)  # fmt: skip
        top.set(ylabel="agreement (%)", title="A vs B by layer")
        top.legend(loc="lower left")
        bottom.set(ylabel="mean Hamming (bits)")
        _layer_axis(bottom, names)
        return _svg(fig)


def _audit_plot(a: Audit) -> str:
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(_width(len(a.layers)), 2.8))
        x = np.arange(len(a.layers))
        if a.reference is not None:
            ax.bar(x, [100 * (la.novelty or 0) for la in a.layers], color="#b279a2",
                   label="novelty (states unseen in the reference)")  # fmt: skip
        ax.plot(x, [100 * la.dead_fraction for la in a.layers], "v-", color="#e45756", ms=3,
                label="dead neurons")  # fmt: skip
        ax.plot(x, [100 * la.coverage for la in a.layers], "o-", color="#4c78a8", ms=3,
                label="neuron coverage")  # fmt: skip
        ax.set(ylabel="%", ylim=(0, 105), title="audit by layer")
        ax.legend(loc="upper left", ncol=3)
        _layer_axis(ax, [la.name for la in a.layers])
        return _svg(fig)


def _matrix_mosaic(plt: Any, s: SeparationResult, split: str) -> Any:
    """Every layer's class x class matrix, tiled into one image (one small PNG in the SVG,
    drawn at its own resolution: a cell per class pair), the layer named above each."""
    k = len(s.classes)
    cols = min(5, len(s.layers))
    rows = math.ceil(len(s.layers) / cols)
    step_x, step_y = k + 1, k + 2  # a blank column between tiles, two blank rows for names
    mosaic = np.full((rows * step_y, cols * step_x - 1), np.nan)
    for i, layer in enumerate(s.layers):
        r, c = divmod(i, cols)
        y, x = r * step_y + 2, c * step_x
        mosaic[y : y + k, x : x + k] = s.matrix(layer, split)
    fig, ax = plt.subplots(figsize=(min(11.0, 1.9 * cols + 1.2), 1.9 * rows + 0.4))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(mosaic, vmin=0, vmax=1, cmap=cmap, interpolation="none")
    for i, layer in enumerate(s.layers):
        r, c = divmod(i, cols)
        ax.text(c * step_x + (k - 1) / 2, r * step_y + 1.2, layer[:26], ha="center",
                va="bottom", fontsize=6)  # fmt: skip
    ax.set_axis_off()
    ax.set_title(f"class x class separation ({split}, friedman_rafsky); rows and columns: "
                 f"classes {s.classes[0]} to {s.classes[-1]} in order", fontsize=7)  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=min(1.0, 4 / rows), label="separation")
    return fig


def _separation_plots(s: SeparationResult) -> list[str]:
    figures = []
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(_width(len(s.layers)), 2.8))
        for split in s.cross:
            for formula, ls in zip(FORMULAS, ("-", "--")):
                ax.plot(range(len(s.layers)), [s.mean(la, split, formula) for la in s.layers],
                        ls, marker="o", ms=3, label=f"{split}, {formula}")  # fmt: skip
        ax.set(ylabel="mean separation", ylim=(0, 1.02), title="mean class separation by layer")
        ax.legend(loc="lower right", ncol=2)
        _layer_axis(ax, s.layers)
        figures.append(_svg(fig))
        for split in s.cross:
            figures.append(_svg(_matrix_mosaic(plt, s, split)))
    return figures


# -- sections -----------------------------------------------------------------------------------
_HINTS = {
    "layers": "Entropies in bits; the interval is a percentile bootstrap of the plug-in "
    "entropy. An entropy near log2(states counted) is capped by the sample size: the "
    "bias-corrected estimates say how far the truth may lie above it.",
    "entropy": "Two ceilings: no estimate from N states can exceed log2(N) (samples × "
    "positions; log2(samples) for dense layers), and no layer can carry more than one bit "
    "per neuron.",
    "rank-frequency": "How often each distinct state occurs, most frequent first (log-log).",
    "firing": "Fraction of states in which each neuron fires, from the stored per-neuron "
    "firing counts.",
    "separation": "Henze–Penrose separation of every class pair, from the exact Euclidean "
    "MST (1: perfectly separated classes).",
}


def _section(ident: str, body: str) -> str:
    hint = _HINTS.get(ident, "")
    text = f'<p class="hint">{esc(hint)}</p>' if hint else ""
    return f'<section id="{ident}"><h2>{esc(SECTIONS[ident])}</h2>{text}{body}</section>'


def _figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _run_record(a: Analysis | None, others: Sequence[tuple[str, Any]]) -> str:
    """One table: a row per field, a column per result (analysis, compare, audit, ...),
    then the tensor each layer captured."""
    columns: dict[str, dict[str, str]] = {}
    if a is not None:
        col = {
            "schema version": str(a.schema_version), "model sha256": a.model_sha256,
            "data fingerprint": a.data_fingerprint, "samples": str(a.n_samples),
            "accuracy": percent(a.accuracy),
            "parity (instrumented vs original, max |diff|)": number(a.parity_max_abs_diff, ".3g"),
        }  # fmt: skip
        if a.run is None:
            col["run"] = "not recorded (a schema version 1 store)"
        else:
            col.update({k.replace("_", " "): _shown(v) for k, v in a.run.to_dict().items()})
        columns["analysis"] = col
    for what, result in others:
        run = getattr(result, "run", None)
        col = {"samples": str(result.n_samples)} if hasattr(result, "n_samples") else {}
        col.update({k.replace("_", " "): _shown(v) for k, v in (run or {}).items()})
        columns[what] = col if run else {**col, "run": "not recorded"}
    fields = list(dict.fromkeys(f for col in columns.values() for f in col))
    rows = [[f, *(col.get(f, "") for col in columns.values())] for f in fields]
    body = '<div class="scroll">' + table_html(["", *columns], rows, left=len(columns) + 1)
    body += "</div>"
    if a is not None and a.layers:
        captured = [
            [r.name, r.layer, r.kind, r.op_type, r.tensor, r.captured or "(the same)",
             str(r.axis), r.axis_rule or "-"]
            for r in a.layers
        ]  # fmt: skip
        body += '<div class="scroll">' + table_html(
            ["capture", "layer", "kind", "op", "tensor", "tensor read", "neuron axis",
             "axis rule"], captured, left=8) + "</div>"  # fmt: skip
    return body


def _shown(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _estimates(r: LayerResult, n_boot: int) -> dict[str, Any]:
    if not r.state_count:
        return dict.fromkeys(("entropy", "miller_madow", "chao_shen", "low", "high"), math.nan)
    interval = r.entropy_interval(n_boot=n_boot)
    return {"entropy": r.entropy(), "miller_madow": r.miller_madow(),
            "chao_shen": r.chao_shen(), "low": interval.low, "high": interval.high}  # fmt: skip


def _layer_table(a: Analysis, rows: Sequence[dict[str, Any]]) -> str:
    header = ["layer", "type", "neurons", "states", "unique", "entropy", "Miller–Madow",
              "Chao–Shen", "95% interval", "log2(states)", "efficiency", "dead",
              "always on"]  # fmt: skip
    cells = []
    for r, e in zip(a.layers, rows):
        fired = r.firing_counts()
        dead = int(np.sum(fired == 0))
        on = int(np.sum(fired == r.state_count)) if r.state_count else 0
        eff = r.efficiency() if r.state_count else None
        cap = math.log2(r.state_count) if r.state_count else None
        capped = cap is not None and e["entropy"] > 0.95 * cap
        cells.append([
            r.name, r.layer_type, str(r.neurons), str(r.state_count),
            str(r.n_unique), number(e["entropy"]), number(e["miller_madow"]),
            number(e["chao_shen"]), f"{number(e['low'])} – {number(e['high'])}",
            number(cap) + (" (caps it)" if capped else ""),
            bar(eff, percent(eff)), bar(dead / r.neurons, str(dead), warn=True),
            str(on),
        ])  # fmt: skip
    table = table_html(header, cells, left=2, raw=(10, 11))
    return f'<div class="scroll">{table}</div>{_network_notes(a)}'


def _network_notes(a: Analysis) -> str:
    """The network figures under the table (as the notebook view shows them)."""
    return "".join(f"<div>{esc(n)}</div>" for n in network_notes(a))


def build_report(
    analysis: Analysis | None = None,
    *,
    comparison: Comparison | None = None,
    audit: Audit | None = None,
    separation: SeparationResult | None = None,
    title: str | None = None,
    n_boot: int = 200,
    progress: bool | None = False,
) -> str:
    """The report as one HTML document (a string); see ``save_report``.

    Parameters
    ----------
    analysis:
        An Analysis (e.g. ``Analysis.load(store)``): run record, per-layer table,
        efficiency, entropy against its ceilings, rank–frequency curves, firing rates.
    comparison, audit, separation:
        Results of ``compare``, ``audit`` and ``separation`` to add as sections.
    title:
        The page title; by default it names what the report holds.
    n_boot:
        Bootstrap resamples for each layer's entropy interval.
    progress:
        Show a progress bar over the layers; None shows one when stderr is a terminal.
    """
    if analysis is None and comparison is None and audit is None and separation is None:
        raise InputError("a report needs a result: an analysis, comparison, audit or separation")
    others = [(k, v) for k, v in (("compare", comparison), ("audit", audit),
                                  ("separation", separation)) if v is not None]  # fmt: skip
    parts = [_section("run-record", _run_record(analysis, others))]
    if analysis is not None:
        layers = analysis.layers
        rows: list[dict[str, Any]] = []
        with progress_bar(len(layers), progress, "layer", "report") as bar_:
            for r in layers:
                rows.append(_estimates(r, n_boot))
                r.firing_counts()
                bar_.update(1)
        parts.append(_section("layers", _layer_table(analysis, rows)))
        if layers:
            parts.append(_section("efficiency", _figure(_efficiency_plot(layers))))
            parts.append(_section("entropy", _figure(_entropy_plot(layers, rows))))
            parts.append(_section("rank-frequency", _figure(_rank_plot(layers))))
            parts.append(_section("firing", _figure(_firing_plot(layers))))
    if comparison is not None:
        body = comparison_html(comparison, standalone=False)
        if comparison.compared:
            body = _figure(_compare_plot(comparison)) + body
        parts.append(_section("compare", body))
    if audit is not None:
        body = audit_html(audit, standalone=False)
        if audit.layers:
            body = _figure(_audit_plot(audit)) + body
        parts.append(_section("audit", body))
    if separation is not None:
        body = "".join(_figure(f) for f in _separation_plots(separation))
        body += separation_html(separation, standalone=False)
        parts.append(_section("separation", body))
    return _page(title or _title(analysis, others), parts)


def _title(a: Analysis | None, others: Sequence[tuple[str, Any]]) -> str:
    what = (["analysis"] if a is not None else []) + [k for k, _ in others]
    return "onnx_state report: " + ", ".join(what)


def _page(title: str, parts: Sequence[str]) -> str:
    found = re.findall(r'<section id="([a-z-]+)">', "".join(parts))
    nav = " ".join(f'<a href="#{i}">{esc(SECTIONS[i])}</a>' for i in found)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_PAGE_STYLE}{STYLE}</style></head>"
        f'<body class="onnx-state"><h1>{esc(title)}</h1><nav>{nav}</nav>'
        + "".join(parts)
        + "</body></html>\n"
    )


def save_report(
    path: str | os.PathLike[str],
    analysis: Analysis | None = None,
    *,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """Write ``build_report(analysis, **kwargs)`` to *path* atomically; return the path.

    An existing file is replaced only with *overwrite* (see ``outputs.check_output``).
    """
    target = check_output(path, overwrite=overwrite, kind="file")
    text = build_report(analysis, **kwargs)
    tmp = target.with_name(f".{target.name}.partial")
    with deferred_interrupts():
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def check_report_path(path: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Check a ``--report`` path, and that matplotlib is there, before a run (so a long run
    does not fail at its end)."""
    if path is not None:
        check_output(path, overwrite=overwrite, kind="file")
        _pyplot()


def load_result(path: str | os.PathLike[str], kind: str) -> Any:
    """A compare, audit or separation result read back from its JSON (what ``--json`` prints
    or ``save`` writes): *kind* is ``compare``, ``audit`` or ``separation``."""
    import json

    from onnx_state.errors import StoreError

    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the {kind} result {path}: {exc}") from None
    try:
        if kind == "compare":
            from onnx_state.compare import Comparison

            return Comparison.from_dict(d)
        if kind == "audit":
            from onnx_state.audit import Audit

            return Audit.from_dict(d)
        if kind == "separation":
            from onnx_state.separation import SeparationResult

            return SeparationResult.from_dict(d)
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from None
    raise InputError(f"unknown result kind {kind!r}; use compare, audit or separation")
