"""audit(): dead, always-on and redundant neurons, coverage, class information, and novelty
and drift against a stored reference.

Neuron coverage is DeepXplore's criterion at threshold 0 (the fraction of neurons that fire
on some input); top-k neuron coverage is DeepGauge's (the fraction of neurons that are among
the k most active of their layer for some input; a conv neuron's activity on an input is the
mean of its feature map). Against a reference results store: exact novelty (the fraction of
states never seen in the reference, per layer and per sample), Hamming-tolerant novelty
(``onnx_state.novelty``), the Jensen–Shannon divergence of the state distributions and the
change of efficiency; with out-of-distribution data, detection figures (AUROC, FPR at 95 %
TPR) next to the max-softmax baseline; with a window, all of it per window of samples.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnx_state import distributed, metrics
from onnx_state.analysis import instrument_on_worker, layer_result
from onnx_state.capture import BatchRun, Capture, Instrumented, Method, Optimization
from onnx_state.capture.data import data_specs, resolve_batch_size
from onnx_state.capture.session import did_not_run, fires, new_counter
from onnx_state.count import StateCounter
from onnx_state.distributed import Table
from onnx_state.errors import InputError, StoreError, did_you_mean
from onnx_state.labels import accuracy_of, predicted_classes
from onnx_state.novelty import ReferenceLayer, combine
from onnx_state.results import Analysis, LayerResult, RunRecord
from onnx_state.store import (
    MISSING,
    SLACK,
    check_dict,
    check_int,
    check_list,
    check_number,
    check_run,
    check_schema,
    check_str,
    label,
    shown,
)

__all__ = [
    "CLASSES",
    "NOVELTY",
    "RULES",
    "Audit",
    "Detection",
    "LayerAudit",
    "Window",
    "audit",
    "load_rules",
]

SCHEMA = "onnx_state.audit"
SCHEMA_VERSION = 1
# The thresholds Audit.violations takes, by name (also the keys of a rules file).
RULES = (
    "max_dead_fraction", "min_coverage", "max_novelty", "max_js", "max_efficiency_drift",
    "max_ood_fraction", "min_auroc", "max_fpr95",
)  # fmt: skip


def load_rules(path: str | os.PathLike[str]) -> dict[str, float]:
    """Thresholds from a JSON file: ``{"max_dead_fraction": 0.1, ...}`` (keys from RULES)."""
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the rules file {path}: {exc}") from None
    if not isinstance(rules, dict):
        raise InputError(f"{path} must hold a JSON object of thresholds")
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise InputError(f"unknown rule(s) {', '.join(unknown)} in {path}; use {', '.join(RULES)}")
    bad = [k for k, v in rules.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise InputError(
            f"rule(s) {', '.join(bad)} in {path} must be numbers, got "
            + ", ".join(repr(rules[k]) for k in bad)
        )
    return {k: float(v) for k, v in rules.items()}


# Figures that only an audit against a reference has: (field, lowest, highest).
_REFERENCE_FIGURES = (
    ("novelty", 0.0, 1.0),
    ("js_divergence", 0.0, 1.0),
    ("efficiency_drift", -1 - SLACK, 1 + SLACK),
)


def _check_audit(d: dict[str, Any]) -> None:
    """StoreError (one line: the field, what it is, what was expected) unless *d* holds
    every field ``Audit.to_dict`` writes, of the right JSON type, in range and consistent."""
    n_samples = check_int(d.get("n_samples", MISSING), "audit: n_samples", minimum=0)
    check_int(d.get("top_k", MISSING), "audit: top_k", minimum=1)
    check_number(d.get("accuracy", MISSING), "audit: accuracy", 0, 1, null=True)
    reference = d.get("reference", MISSING)
    if reference is not None:
        check_str(reference, "audit: reference")
    layers = d.get("layers", MISSING)
    if not isinstance(layers, list):
        raise StoreError(f"audit: layers is {shown(layers)}; expected a list of layers")
    first: dict[str, int] = {}
    for i, la in enumerate(layers):
        check_dict(la, f"audit: layers[{i}]")
        name = check_str(la.get("name", MISSING), f"audit: layers[{i}] name")
        at = f"audit: layers[{i}] ({label(name)})"
        if name in first:
            raise StoreError(f"{at}: name repeats layers[{first[name]}]; expected distinct layers")
        first[name] = i
        neurons = check_int(la.get("neurons", MISSING), f"{at}: neurons", minimum=1)
        state_count = check_int(la.get("state_count", MISSING), f"{at}: state_count", 0)
        check_number(la.get("efficiency", MISSING), f"{at}: efficiency", 0, 1 + SLACK)
        dead = _neuron_indices(la.get("dead", MISSING), f"{at}: dead", neurons)
        always_on = _neuron_indices(la.get("always_on", MISSING), f"{at}: always_on", neurons)
        coverage = check_number(la.get("coverage", MISSING), f"{at}: coverage", 0, 1)
        check_number(la.get("topk_coverage", MISSING), f"{at}: topk_coverage", 0, 1)
        live = 1 - len(dead) / neurons
        if not math.isclose(coverage or 0.0, live, rel_tol=0, abs_tol=1e-9):
            raise StoreError(
                f"{at}: coverage is {coverage} but {len(dead)} of {neurons} neurons are dead; "
                f"expected {live:.6g}"
            )
        both = sorted(set(dead) & set(always_on))
        if state_count and both:
            raise StoreError(f"{at}: neuron {both[0]} is both dead and always on")
        fraction = la.get("dead_fraction")  # derived again from dead; checked if present
        if fraction is not None and not (
            isinstance(fraction, (int, float))
            and math.isclose(fraction, len(dead) / neurons, rel_tol=0, abs_tol=1e-9)
        ):
            raise StoreError(
                f"{at}: dead_fraction is {shown(fraction)}; expected {len(dead)} / {neurons}"
            )
        for key, low, high in _REFERENCE_FIGURES:
            value = la.get(key, MISSING)
            if reference is not None:
                check_number(value, f"{at}: {key}", low, high)
            elif value is not None:
                raise StoreError(
                    f"{at}: {key} is {shown(value)}; expected null (the audit has no reference)"
                )
        novel = check_list(
            la.get("most_novel_samples", MISSING), f"{at}: most_novel_samples", "int", True
        )
        outside = [s for s in novel if not 0 <= s < n_samples]
        if outside:
            raise StoreError(
                f"{at}: most_novel_samples has sample {outside[0]}; expected indices below "
                f"n_samples ({n_samples})"
            )
        if novel and reference is None:
            raise StoreError(
                f"{at}: most_novel_samples is {shown(novel)}; expected [] (no reference)"
            )
        _check_added_layer_fields(la, at, neurons)
    _check_added_fields(d, layers)


def _check_added_layer_fields(la: dict[str, Any], at: str, neurons: int) -> None:
    """The layer fields added after the first version: absent, null, or valid."""
    groups = la.get("redundant_groups", [])
    if not isinstance(groups, list):
        raise StoreError(f"{at}: redundant_groups is {shown(groups)}; expected a list of lists")
    for j, g in enumerate(groups):
        members = _neuron_indices(g, f"{at}: redundant_groups[{j}]", neurons)
        if len(members) < 2:
            raise StoreError(f"{at}: redundant_groups[{j}] has {len(members)} neuron(s); "
                             "expected 2 or more")  # fmt: skip
    _neuron_indices(la.get("complementary", []), f"{at}: complementary", neurons)
    effective = la.get("effective_neurons")
    if effective is not None:
        check_int(effective, f"{at}: effective_neurons", minimum=0)
        if effective > neurons:
            raise StoreError(f"{at}: effective_neurons is {effective}; expected <= {neurons}")
    for key, low, high in (
        ("effective_efficiency", 0.0, 1 + SLACK),
        ("hamming_distance", 0.0, float(neurons)),
        ("hamming_threshold", 0.0, float(neurons)),
        ("vote_fraction", 0.0, 1.0),
        ("mutual_information", 0.0, None),
        ("mutual_information_mm", None, None),
    ):
        value = la.get(key)
        if value is not None:
            check_number(value, f"{at}: {key}", low, high)
    states = la.get("class_states")
    if states is not None:
        for j, v in enumerate(check_list(states, f"{at}: class_states", "int")):
            check_int(v, f"{at}: class_states[{j}]", minimum=0)
    entropies = la.get("class_entropy")
    if entropies is not None:
        if not isinstance(entropies, list):
            raise StoreError(f"{at}: class_entropy is {shown(entropies)}; expected a list")
        for j, v in enumerate(entropies):
            if v is not None:
                check_number(v, f"{at}: class_entropy[{j}]", 0.0, float(neurons) + SLACK)


def _check_added_fields(d: dict[str, Any], layers: list[Any]) -> None:
    """The audit fields added after the first version: absent, null, or valid."""
    mode = d.get("novelty_mode")
    if mode is not None:
        check_str(mode, "audit: novelty_mode", NOVELTY)
    votes = d.get("min_votes")
    if votes is not None:
        check_int(votes, "audit: min_votes", minimum=0)
    if d.get("ood_fraction") is not None:
        check_number(d["ood_fraction"], "audit: ood_fraction", 0.0, 1.0)
    det = d.get("detection")
    if det is not None:
        check_dict(det, "audit: detection")
        check_str(det.get("score", MISSING), "audit: detection score", NOVELTY)
        for key in ("n_in", "n_out"):
            check_int(det.get(key, MISSING), f"audit: detection {key}", minimum=1)
        for key in ("auroc", "fpr95", "msp_auroc", "msp_fpr95"):
            check_number(det.get(key, MISSING), f"audit: detection {key}", 0.0, 1.0)
        if det.get("ood_fraction") is not None:
            check_number(det["ood_fraction"], "audit: detection ood_fraction", 0.0, 1.0)
        extra = sorted(set(det) - {f.name for f in fields(Detection)})
        if extra:
            raise StoreError(f"audit: detection has unknown field {extra[0]}")
    window = d.get("window")
    if window is not None:
        check_int(window, "audit: window", minimum=1)
    windows = d.get("windows", [])
    if not isinstance(windows, list):
        raise StoreError(f"audit: windows is {shown(windows)}; expected a list")
    names = {la["name"] for la in layers}
    for i, w in enumerate(windows):
        at = f"audit: windows[{i}]"
        check_dict(w, at)
        start = check_int(w.get("start", MISSING), f"{at} start", minimum=0)
        stop = check_int(w.get("stop", MISSING), f"{at} stop", minimum=start + 1)
        if stop > d["n_samples"]:
            raise StoreError(f"{at}: stop is {stop}; expected at most n_samples")
        for key, high in (("novelty", 1.0), ("js_divergence", 1.0), ("efficiency", 1 + SLACK)):
            figures = check_dict(w.get(key, MISSING), f"{at} {key}")
            if set(figures) != names:
                raise StoreError(f"{at}: {key} must name every layer")
            for name, v in figures.items():
                check_number(v, f"{at} {key} {label(name)}", 0.0, high)
        if w.get("ood_fraction") is not None:
            check_number(w["ood_fraction"], f"{at} ood_fraction", 0.0, 1.0)


def _neuron_indices(value: Any, what: str, neurons: int) -> list[int]:
    """Ascending neuron indices below *neurons* (dead, always-on), else a StoreError."""
    indices = check_list(value, what, "int")
    for j, v in enumerate(indices):
        if not 0 <= v < neurons or (j and v <= indices[j - 1]):
            raise StoreError(
                f"{what}[{j}] is {v}; expected ascending neuron indices in [0, {neurons - 1}]"
            )
    return indices


@dataclass
class LayerAudit:
    """Audit figures of one captured layer.

    Beside dead/always-on neurons and coverage: ``redundant_groups`` (neurons whose firing is
    identical or, for those in ``complementary``, exactly opposite on every sample),
    ``effective_neurons`` (one per group, constant ones dropped) and the efficiency on them;
    with a reference, exact novelty, JS divergence and efficiency drift, and the Hamming
    figures (mean per-sample distance, the vote threshold, the fraction of samples voting);
    with labels, per-class distinct states and entropies and the mutual information between
    the layer's state and the class (plug-in and Miller–Madow), in bits.
    """

    name: str
    neurons: int
    state_count: int
    efficiency: float
    dead: list[int]
    always_on: list[int]
    coverage: float
    topk_coverage: float
    novelty: float | None = None
    js_divergence: float | None = None
    efficiency_drift: float | None = None
    most_novel_samples: list[int] = field(default_factory=list)
    redundant_groups: list[list[int]] = field(default_factory=list)
    complementary: list[int] = field(default_factory=list)
    effective_neurons: int | None = None
    effective_efficiency: float | None = None
    hamming_distance: float | None = None
    hamming_threshold: float | None = None
    vote_fraction: float | None = None
    class_states: list[int] | None = None
    class_entropy: list[float | None] | None = None
    mutual_information: float | None = None
    mutual_information_mm: float | None = None

    @property
    def dead_fraction(self) -> float:
        """The fraction of neurons that never fired."""
        return len(self.dead) / self.neurons


@dataclass
class Detection:
    """How well the novelty score separates the audited (in-distribution) data from
    out-of-distribution data, next to the max-softmax-probability baseline of the same
    model's outputs. AUROC: OOD as the positive class, a higher score meaning more novel;
    FPR at 95 % TPR: the fraction of OOD samples accepted at the threshold that accepts 95 %
    of the in-distribution samples (``metrics.fpr_at_tpr``)."""

    score: str  # "hamming" or "exact"
    n_in: int
    n_out: int
    auroc: float
    fpr95: float
    msp_auroc: float
    msp_fpr95: float
    ood_fraction: float | None = None  # OOD samples flagged by the Hamming votes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dict(vars(self))


@dataclass
class Window:
    """One window of consecutive samples [start, stop) of a drift audit."""

    start: int
    stop: int
    novelty: dict[str, float]
    js_divergence: dict[str, float]
    efficiency: dict[str, float]
    ood_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dict(vars(self))


@dataclass
class Audit:
    """Per-layer audit of a model on a data set, optionally against a reference.

    ``sample_novelty`` holds per-layer, per-sample exact novelty (the fraction of a sample's
    states unseen in the reference), ``sample_distance`` the per-layer, per-sample mean
    Hamming distance, ``sample_scores`` the combined novelty score per sample (see
    ``onnx_state.novelty``) and ``sample_votes`` the layers voting per sample; none of them
    goes into the JSON (they grow with the data).
    """

    layers: list[LayerAudit]
    n_samples: int
    k: int
    accuracy: float | None = None
    reference: str | None = None
    sample_novelty: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    novelty_mode: str | None = None
    min_votes: int | None = None
    ood_fraction: float | None = None
    detection: Detection | None = None
    window: int | None = None
    windows: list[Window] = field(default_factory=list)
    sample_distance: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    sample_scores: np.ndarray | None = field(default=None, repr=False)
    sample_votes: np.ndarray | None = field(default=None, repr=False)
    run: dict[str, Any] | None = None  # the run record (``results.RunRecord.to_dict``)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (schema ``onnx_state.audit``); ``from_dict`` reads it back.

        Per-sample figures stay out (they grow with the data).
        """
        layers = []
        for la in self.layers:
            d = dict(vars(la))
            d["dead_fraction"] = la.dead_fraction
            layers.append(d)
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "layers": layers,
            "n_samples": self.n_samples,
            "top_k": self.k,
            "accuracy": self.accuracy,
            "reference": self.reference,
            "novelty_mode": self.novelty_mode,
            "min_votes": self.min_votes,
            "ood_fraction": self.ood_fraction,
            "detection": None if self.detection is None else self.detection.to_dict(),
            "window": self.window,
            "windows": [w.to_dict() for w in self.windows],
            "run": self.run,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Audit:
        """An Audit from ``to_dict``'s output, every field checked (the fields added after
        the first version may be absent).

        Raises StoreError, one line naming the field at fault and what was expected.
        """
        check_schema(d, "audit", SCHEMA, SCHEMA_VERSION, "audit")
        _check_audit(d)
        names = [f.name for f in fields(LayerAudit)]
        layers = [LayerAudit(**{k: la[k] for k in names if k in la}) for la in d["layers"]]
        det = d.get("detection")
        run = d.get("run")
        return cls(
            layers, d["n_samples"], d["top_k"], d["accuracy"], d["reference"],
            novelty_mode=d.get("novelty_mode"), min_votes=d.get("min_votes"),
            ood_fraction=d.get("ood_fraction"),
            detection=None if det is None else Detection(**det),
            window=d.get("window"), windows=[Window(**w) for w in d.get("windows", [])],
            run=None if run is None else check_run(run, "audit:"),
        )  # fmt: skip

    def _repr_html_(self) -> str:
        from onnx_state.views import audit_html

        return audit_html(self)

    def violations(
        self,
        max_dead_fraction: float | None = None,
        min_coverage: float | None = None,
        max_novelty: float | None = None,
        max_js: float | None = None,
        max_efficiency_drift: float | None = None,
        max_ood_fraction: float | None = None,
        min_auroc: float | None = None,
        max_fpr95: float | None = None,
    ) -> list[str]:
        """Rules broken, one line each, for CI gating.

        With windows, the novelty, JS, efficiency-drift and OOD-fraction gates also apply
        to each window; the first window that crosses one is reported (one line).
        """
        needs = []  # a gate whose figure this audit did not compute can never fail: refuse it
        if self.reference is None:
            needs += [f"--{flag} needs --reference" for flag, v in (
                ("max-novelty", max_novelty), ("max-js", max_js),
                ("max-efficiency-drift", max_efficiency_drift),
                ("max-ood-fraction", max_ood_fraction)) if v is not None]  # fmt: skip
        elif max_ood_fraction is not None and self.ood_fraction is None:
            needs.append("--max-ood-fraction needs Hamming novelty (not --novelty exact)")
        if self.detection is None:
            needs += [f"--{flag} needs --ood-data" for flag, v in (
                ("min-auroc", min_auroc), ("max-fpr95", max_fpr95)) if v is not None]  # fmt: skip
        if needs:
            raise InputError("; ".join(needs) + ": this gate would never fail without it")
        out = []
        for la in self.layers:
            if max_dead_fraction is not None and la.dead_fraction > max_dead_fraction:
                out.append(f"{la.name}: dead fraction {la.dead_fraction:.4f} > {max_dead_fraction}")
            if min_coverage is not None and la.coverage < min_coverage:
                out.append(f"{la.name}: neuron coverage {la.coverage:.4f} < {min_coverage}")
            out += _drift_violations(
                la.name, la.novelty, la.js_divergence, la.efficiency_drift,
                max_novelty, max_js, max_efficiency_drift,
            )  # fmt: skip
        fraction = self.ood_fraction
        if max_ood_fraction is not None and fraction is not None and fraction > max_ood_fraction:
            out.append(f"OOD fraction {self.ood_fraction:.4f} > {max_ood_fraction}")
        det = self.detection
        if min_auroc is not None and det is not None and det.auroc < min_auroc:
            out.append(f"novelty AUROC {det.auroc:.4f} < {min_auroc}")
        if max_fpr95 is not None and det is not None and det.fpr95 > max_fpr95:
            out.append(f"novelty FPR at 95% TPR {det.fpr95:.4f} > {max_fpr95}")
        first = self.first_window(max_novelty, max_js, max_efficiency_drift, max_ood_fraction)
        if first is not None:
            i, why = first
            w = self.windows[i]
            out.append(f"window {i} (samples {w.start}-{w.stop - 1}) is the first to cross a "
                       f"gate: {'; '.join(why)}")  # fmt: skip
        return out

    def first_window(
        self,
        max_novelty: float | None = None,
        max_js: float | None = None,
        max_efficiency_drift: float | None = None,
        max_ood_fraction: float | None = None,
    ) -> tuple[int, list[str]] | None:
        """(index, reasons) of the first window crossing one of the gates, or None."""
        drift0 = {la.name: la.efficiency - (la.efficiency_drift or 0.0) for la in self.layers}
        for i, w in enumerate(self.windows):
            why: list[str] = []
            for name in w.novelty:
                why += _drift_violations(
                    name, w.novelty[name], w.js_divergence[name],
                    w.efficiency[name] - drift0[name], max_novelty, max_js,
                    max_efficiency_drift,
                )  # fmt: skip
            flagged = w.ood_fraction
            if max_ood_fraction is not None and flagged is not None and flagged > max_ood_fraction:
                why.append(f"OOD fraction {flagged:.4f} > {max_ood_fraction}")
            if why:
                return i, why
        return None

    def table(self) -> str:
        """The per-layer table the CLI prints, then neurons, class information, detection
        and windows."""
        ref = self.reference is not None
        ham = self.novelty_mode == "hamming"
        head = f"{'layer':28s} {'neurons':>7s} {'dead':>5s} {'on':>5s} {'cover':>7s} {'top-k':>7s}"
        head += f" {'eff.n':>6s} {'eff.eff':>8s}"
        if ref:
            head += f" {'novelty':>8s} {'JS':>7s} {'Δeff':>8s}"
        if ham:
            head += f" {'hamming':>8s} {'thresh':>7s} {'votes':>7s}"
        lines = [head, "-" * len(head)]
        for la in self.layers:
            row = (
                f"{la.name[:28]:28s} {la.neurons:7d} {len(la.dead):5d} {len(la.always_on):5d} "
                f"{100 * la.coverage:6.2f}% {100 * la.topk_coverage:6.2f}%"
            )
            row += f" {_figure(la.effective_neurons, '6d')} "
            row += f"{_figure(la.effective_efficiency, '7.2f', 100)}%"
            if ref:
                row += f" {_figure(la.novelty, '7.3f', 100)}% {_figure(la.js_divergence, '7.4f')}"
                row += f" {_figure(la.efficiency_drift, '+8.4f')}"
            if ham:
                row += f" {_figure(la.hamming_distance, '8.3f')}"
                row += f" {_figure(la.hamming_threshold, '7.2f')}"
                row += f" {_figure(la.vote_fraction, '6.2f', 100)}%"
            lines.append(row)
        lines.append("")
        lines.append(f"samples: {self.n_samples}, top-k coverage with k={self.k}")
        for la in self.layers:
            if la.dead:
                lines.append(f"{la.name}: dead neurons {_short(la.dead)}")
            if la.always_on:
                lines.append(f"{la.name}: always-on neurons {_short(la.always_on)}")
            if la.redundant_groups:
                groups = "; ".join(
                    ", ".join(f"{m}{'~' if m in la.complementary else ''}" for m in g)
                    for g in la.redundant_groups[:10]
                )
                more = len(la.redundant_groups) - 10
                lines.append(f"{la.name}: redundant neurons (~ complementary) {groups}"
                             + (f"; … ({more} more groups)" if more > 0 else ""))  # fmt: skip
            if ref and la.most_novel_samples:
                lines.append(f"{la.name}: most novel samples {_short(la.most_novel_samples)}")
        if self.accuracy is not None:
            lines.append(f"accuracy: {100 * self.accuracy:.2f}%")
        if any(la.mutual_information is not None for la in self.layers):
            lines.append("")
            lines.append(
                f"{'class information':28s} {'I(S;C)':>8s} {'I_MM':>8s} {'H(S|c) per class (bits)'}"
            )
            for la in self.layers:
                ents = " ".join(_figure(h, "5.2f") for h in (la.class_entropy or []))
                lines.append(f"{la.name[:28]:28s} {_figure(la.mutual_information, '8.3f')} "
                             f"{_figure(la.mutual_information_mm, '8.3f')} {ents}")  # fmt: skip
        if ham and self.ood_fraction is not None:
            lines.append(f"flagged as novel (>= {self.min_votes} layer votes): "
                         f"{100 * self.ood_fraction:.2f}% of samples")  # fmt: skip
        det = self.detection
        if det is not None:
            lines.append("")
            lines.append(f"detection ({det.n_in} in-distribution vs {det.n_out} OOD samples)"
                         f"{'':4s}{'AUROC':>8s} {'FPR@95%TPR':>11s}")  # fmt: skip
            lines.append(f"  {det.score + ' novelty':44s}  {det.auroc:8.4f} {det.fpr95:11.4f}")
            lines.append(f"  {'max softmax probability':44s}  {det.msp_auroc:8.4f} "
                         f"{det.msp_fpr95:11.4f}")  # fmt: skip
            if det.ood_fraction is not None:
                lines.append(f"  OOD samples flagged: {100 * det.ood_fraction:.2f}%")
        if self.windows:
            lines.append("")
            names = [la.name for la in self.layers]
            lines.append(f"windows of {self.window} samples: novelty / JS / efficiency per layer"
                         " (" + ", ".join(names) + "), flagged fraction")  # fmt: skip
            for i, w in enumerate(self.windows):
                cells = "  ".join(
                    f"{100 * w.novelty[n]:5.1f}% {w.js_divergence[n]:.3f} "
                    f"{100 * w.efficiency[n]:5.1f}%"
                    for n in names
                )
                flagged = "" if w.ood_fraction is None else f"  {100 * w.ood_fraction:5.1f}%"
                lines.append(f"  {i:3d} [{w.start:>6d}, {w.stop:>6d})  {cells}{flagged}")
        return "\n".join(lines)


def _drift_violations(
    name: str,
    novelty: float | None,
    js: float | None,
    drift: float | None,
    max_novelty: float | None,
    max_js: float | None,
    max_efficiency_drift: float | None,
) -> list[str]:
    out = []
    if max_novelty is not None and novelty is not None and novelty > max_novelty:
        out.append(f"{name}: novelty {novelty:.4f} > {max_novelty}")
    if max_js is not None and js is not None and js > max_js:
        out.append(f"{name}: JS divergence {js:.4f} > {max_js}")
    if max_efficiency_drift is not None and drift is not None and abs(drift) > max_efficiency_drift:
        out.append(f"{name}: efficiency drift {drift:+.4f} beyond ±{max_efficiency_drift}")
    return out


def _figure(value: float | None, spec: str, scale: float = 1) -> str:
    """*value* (times *scale*) formatted by *spec*, or a dash of its width when missing."""
    if value is None:
        return "-".rjust(int(spec.strip("+").rstrip("dfe").split(".")[0]))
    return format(scale * value if scale != 1 else value, spec)


def _short(items: Sequence[int], n: int = 20) -> str:
    text = ", ".join(str(i) for i in items[:n])
    return text + (f", … ({len(items)} in all)" if len(items) > n else "")


class _LayerWatch:
    """Per-layer streaming state: counter, top-k coverage, per-sample novelty and distance,
    per-class and per-window counters."""

    def __init__(
        self,
        capture: Capture,
        k: int,
        reference: LayerResult | None,
        hamming: ReferenceLayer | None = None,
        window: int | None = None,
    ) -> None:
        self.capture = capture
        self.k = k
        self.counter = new_counter(capture)
        self.topk: np.ndarray | None = None
        self.reference_ids = None if reference is None else reference.state_ids()
        self.hamming = hamming
        self.window = window
        self.novel_per_sample: list[np.ndarray] = []
        self.distance_per_sample: list[np.ndarray] = []
        self.by_class: dict[int, StateCounter] = {}
        self.windows: list[StateCounter] = []

    def skip(self, x: np.ndarray, start: int, samples: int) -> None:
        """A batch of *samples* (from *start*) in which the layer did not run (*x* empty, an
        If branch not taken): no state; no novelty for these samples (NaN)."""
        axis = self.capture.axis
        if not self.counter.neurons and x.shape[axis]:
            self.counter.update(x, axis=axis)  # (its width, where *x* has one)
        if self.window is not None:  # its windows exist, empty where the layer never ran
            while len(self.windows) <= (start + samples - 1) // self.window:
                self.windows.append(new_counter(self.capture))
        if self.hamming is not None:
            raise InputError(
                f"{self.capture.name} did not run on samples {start}..{start + samples} (it "
                "sits in an If branch not taken): Hamming novelty needs its states for every "
                f"sample; exclude layer {self.capture.layer!r}"
            )
        if self.reference_ids is not None:
            self.novel_per_sample.append(np.full(samples, np.nan))

    def update(
        self,
        x: np.ndarray,
        batch_axis: int,
        start: int = 0,
        predicted: np.ndarray | None = None,
        truth: np.ndarray | None = None,
    ) -> None:
        """Count one batch of the capture whose samples lie along *batch_axis*; *start* is
        the index of its first sample, *predicted* / *truth* its classes (or None)."""
        axis = self.capture.axis
        self.counter.update(x, axis=axis)
        if batch_axis == axis % x.ndim:
            raise InputError(f"{self.capture.name}: its neuron axis {axis} is its batch axis")
        moved = np.moveaxis(x, (batch_axis, axis), (0, -1))
        n, neurons = moved.shape[0], moved.shape[-1]
        rows = moved.reshape(n, -1, neurons)  # (samples, positions, neurons)
        activity = rows.mean(axis=1, dtype=np.float64)
        k = min(self.k, neurons)
        top = np.argpartition(-activity, k - 1, axis=1)[:, :k]
        if self.topk is None:
            self.topk = np.zeros(neurons, dtype=bool)
        self.topk[np.unique(top)] = True
        if self.reference_ids is not None:
            positions = rows.shape[1]
            packed = np.packbits(fires(self.capture, rows), axis=-1, bitorder="little").reshape(
                -1, (neurons + 7) // 8
            )
            novel = ~metrics.seen_in(packed, self.reference_ids)
            self.novel_per_sample.append(novel.reshape(n, -1).mean(axis=1))
            if self.hamming is not None:
                classes = None if predicted is None else np.repeat(predicted, positions)
                d = self.hamming.distances(packed, classes)
                self.distance_per_sample.append(d.reshape(n, -1).mean(axis=1))
        if truth is not None:
            for c in np.unique(truth):
                part = np.take(x, np.flatnonzero(truth == c), axis=batch_axis)
                counter = self.by_class.setdefault(int(c), new_counter(self.capture))
                counter.update(part, axis=axis)
        if self.window is not None:
            w = self.window
            for k_w in range(start // w, (start + n - 1) // w + 1):
                lo, hi = max(start, k_w * w) - start, min(start + n, (k_w + 1) * w) - start
                while len(self.windows) <= k_w:
                    self.windows.append(new_counter(self.capture))
                part = np.take(x, np.arange(lo, hi), axis=batch_axis)
                self.windows[k_w].update(part, axis=axis)


def _check_reference(reference: Analysis, captures: Sequence[Capture]) -> dict[str, LayerResult]:
    by_name = {r.name: r for r in reference.layers}
    missing = [c.name for c in captures if c.name not in by_name]
    if missing:
        raise StoreError(
            f"the reference store has no layer(s) {', '.join(missing)} (it holds "
            f"{', '.join(by_name) or 'none'}); analyse the reference with the same attach_to"
        )
    for c in captures:
        r = by_name[c.name]
        if r.axis != c.axis:
            raise StoreError(f"{c.name} has neuron axis {c.axis} here but {r.axis} in the "
                             "reference")  # fmt: skip
        plain = c.shape is not None and c.merge_axis is None and not c.path
        width = c.shape[c.axis] if plain else None  # type: ignore[index]
        if isinstance(width, int) and width > 0 and r.neurons and width != r.neurons:
            raise StoreError(
                f"{c.name} has {width} neurons here but {r.neurons} in the reference; is it "
                "the same model?"
            )
    return by_name


NOVELTY = ("hamming", "exact")
CLASSES = ("predicted", "labels")  # the class whose reference states a sample is compared with


@dataclass
class _Pass:
    """What one pass of a data set through the watched layers collected."""

    n: int
    accuracy: float | None
    msp: np.ndarray | None
    size: int = 0  # samples of the first run (the run record's batch size)


def _run_pass(
    inst: Instrumented,
    data: Any,
    watches: Sequence[_LayerWatch],
    *,
    batch_size: int | None,
    constants: Mapping[str, Any] | None,
    progress: bool | None,
    labels: Any = None,
    per_class: bool = False,
    predicted: bool = False,
    given: bool = False,
    msp: bool = False,
) -> _Pass:
    """Stream *data* through the model once, feeding every watch; distances per class of
    the *predicted* class, or of the *given* class (the labels)."""
    accuracy = accuracy_of(labels)
    seen = [0]
    probabilities: list[np.ndarray] = []

    def consume(run: BatchRun) -> None:
        start = seen[0]
        seen[0] += run.samples
        scores = inst.class_scores(run) if (predicted or msp) else None
        pred = None
        if scores is not None and predicted:
            try:
                pred = predicted_classes(scores)
            except InputError:
                raise InputError(
                    f"per-class novelty needs class scores (N, K) as the model's first output, "
                    f"got {scores.shape}; pass by_class=False (--any-class)"
                ) from None
        if scores is not None and msp:
            probabilities.append(metrics.max_softmax(scores))
        truth = None
        if (per_class or given) and accuracy is not None:
            truth = accuracy.labels[start : start + run.samples]
            pred = truth if given else pred
            truth = truth if per_class else None
        for w in watches:
            x = run.captured[w.capture.key]
            if did_not_run(x):
                w.skip(x, start, run.samples)
                continue
            w.update(x, inst.batch_axis(w.capture.key, x, run.samples), start, pred, truth)

    n = size = 0
    for run in inst.stream(data, batch_size, consume, progress, constants=constants):
        size = size or run.samples
        if accuracy is not None:
            accuracy.update(inst.class_scores(run), run.samples)
        n += run.samples
    top1 = None if accuracy is None else accuracy.result(n)
    msp_all = np.concatenate(probabilities) if msp and probabilities else None
    return _Pass(n, top1, msp_all, size)


def audit(
    model: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    reference: str | os.PathLike[str] | Analysis | None = None,
    labels: Any = None,
    ood_data: Any = None,
    calibration: Any = None,
    window: int | None = None,
    novelty: str = "hamming",
    by_class: bool = True,
    class_from: str = "predicted",
    quantile: float = 0.95,
    min_votes: int | None = None,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
    literal: bool = False,
    quantized: bool = False,
    batch_size: int | None = None,
    constants: Mapping[str, Any] | None = None,
    output_batch_axis: int | None = None,
    top_k: int = 2,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: Optimization = "all",
    progress: bool | None = False,
    cluster: Any = None,
) -> Audit:
    """Audit the chosen layers of *model* on *data*, optionally against a reference store.

    Parameters
    ----------
    model, data:
        As for ``analyze``; *data* in time order when *window* is given.
    reference:
        A results store (path or Analysis) of the same layers, e.g. from the training data:
        enables novelty, JS divergence, efficiency drift and Hamming novelty (per class when
        the store was analysed with labels).
    labels:
        Class labels of *data*: accuracy, per-class states and entropies, mutual information.
    ood_data:
        Out-of-distribution data (with *reference*): the detection figures (AUROC, FPR at
        95 % TPR) of the novelty score, *data* being in distribution, next to the
        max-softmax-probability baseline.
    calibration:
        Held-out in-distribution data (from the reference's distribution, not in the
        reference store) whose per-sample Hamming distances give each layer's vote
        threshold and rank; without it they come from the reference store itself (leave
        one out, see ``onnx_state.novelty``), which is optimistic for conv layers.
    window:
        Cut *data* into consecutive windows of this many samples and report novelty, JS
        divergence and efficiency per window (and the flagged fraction with Hamming
        novelty); ``Audit.first_window`` finds the first that crosses a gate.
    novelty:
        ``hamming`` (default): per-sample scores from minimum Hamming distances to the
        reference's states, layers combined by votes (``onnx_state.novelty``); ``exact``:
        the strict mode, the mean over layers of the fraction of a sample's states never
        seen in the reference.
    by_class:
        With Hamming novelty, compare each sample only with the reference states of its
        predicted class (the argmax of the model's first output) when the reference has
        per-class states.
    class_from:
        ``predicted`` (default): the class a sample is compared under is the model's
        prediction; ``labels``: its given label (needs *labels*; not with *ood_data* or
        *calibration*, which have none).
    quantile:
        A layer votes when a sample's distance exceeds this quantile of the reference's
        held-out distances.
    min_votes:
        Votes that flag a sample as novel; None means half the layers, rounded up.
    attach_to, exclude, method, neuron_axes, literal, quantized:
        The layers to audit and how their tensors are read (as for ``analyze``).
    batch_size, constants, output_batch_axis:
        Batching and constant inputs (as for ``analyze``).
    top_k:
        k of DeepGauge's top-k neuron coverage, which ranks neurons by their mean value in
        the tensor read (post-activation by default; the layer's own with *literal*).
    providers, threads, optimization:
        The onnxruntime session (as for ``analyze``); *threads* also bounds the distance
        kernel's threads.
    progress:
        Show a progress bar; None shows one when stderr is a terminal.
    cluster:
        Run on Dask (as for ``analyze``); the result is identical.
    """
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if novelty not in NOVELTY:
        raise InputError(
            f"unknown novelty mode {novelty!r} (use {' or '.join(NOVELTY)})."
            + did_you_mean(novelty, NOVELTY)
        )
    if class_from not in CLASSES:
        raise InputError(f"class_from must be one of {', '.join(CLASSES)}, got {class_from!r}")
    if class_from == "labels" and (
        labels is None or ood_data is not None or calibration is not None
    ):
        raise InputError(
            "class_from='labels' compares each sample with its labelled class: it needs "
            "labels= and takes no ood_data or calibration (they have no labels)"
        )
    if window is not None and window < 1:
        raise InputError(f"window must be at least 1 sample, got {window}")
    for given, what in ((ood_data, "ood_data (--ood-data)"), (calibration, "calibration"),
                        (window, "window (--window)")):  # fmt: skip
        if given is not None and reference is None:
            raise InputError(f"{what} needs a reference store: give reference= (--reference)")
    if novelty == "exact" and (calibration is not None or min_votes is not None):
        raise InputError(
            "calibration and min_votes set Hamming novelty's thresholds and votes; exact "
            "novelty has none (drop them, or use novelty='hamming')"
        )
    ref = Analysis.load(reference) if isinstance(reference, (str, os.PathLike)) else reference
    inst = Instrumented(
        model, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=literal, quantized=quantized, providers=providers, threads=threads,
        optimization=optimization,
        output_batch_axis=output_batch_axis,
    )  # fmt: skip
    if min_votes is not None and not 1 <= min_votes <= len(inst.captures):
        raise InputError(
            f"min_votes must be between 1 and the {len(inst.captures)} audited layers, "
            f"got {min_votes}"
        )
    ref_layers = _check_reference(ref, inst.captures) if ref is not None else {}
    hamming = {
        name: ReferenceLayer(r, by_class=by_class, quantile=quantile, threads=threads)
        for name, r in ref_layers.items()
    } if ref is not None and novelty == "hamming" else {}  # fmt: skip
    per_class = any(h.by_class for h in hamming.values())
    by_label = per_class and class_from == "labels"

    def watches_for(win: int | None) -> list[_LayerWatch]:
        return [
            _LayerWatch(c, top_k, ref_layers.get(c.name), hamming.get(c.name), win)
            for c in inst.captures
        ]

    feed: dict[str, Any] = {"batch_size": batch_size, "constants": constants, "progress": progress}
    run_pass: Any = _run_pass
    if cluster is not None:  # the same passes, from ranges run on Dask
        settings = ((attach_to, exclude, method, neuron_axes, literal, quantized),
                    (providers, threads, optimization), output_batch_axis, top_k)  # fmt: skip
        run_pass = functools.partial(_run_pass_on, cluster, model, settings)
    if calibration is not None and hamming:
        held = watches_for(None)
        run_pass(inst, calibration, held, **feed, predicted=per_class)
        for w in held:
            hamming[w.capture.name].calibrate(np.concatenate(w.distance_per_sample))
    watches = watches_for(window)
    main = run_pass(inst, data, watches, **feed, labels=labels, per_class=labels is not None,
                     predicted=per_class and not by_label, given=by_label,
                     msp=ood_data is not None)  # fmt: skip
    layers = [_layer_audit(w, ref_layers.get(w.capture.name)) for w in watches]
    result = Audit(
        layers=layers,
        n_samples=main.n,
        k=top_k,
        accuracy=main.accuracy,
        reference=None if reference is None else _describe(reference),
        sample_novelty={
            w.capture.name: np.concatenate(w.novel_per_sample) for w in watches
            if w.novel_per_sample
        },
        novelty_mode=None if ref is None else novelty,
        window=window,
        run=RunRecord.of_session(inst, providers, threads, optimization, main.size or None)
        .to_dict(),
    )  # fmt: skip
    if ref is None:
        return result
    refs = [hamming[w.capture.name] for w in watches] if hamming else []
    votes_needed = min_votes if min_votes is not None else -(-len(watches) // 2)
    if refs:
        result.min_votes = votes_needed
        result.sample_distance = {
            w.capture.name: np.concatenate(w.distance_per_sample) for w in watches
            if w.distance_per_sample
        }  # fmt: skip
        result.sample_scores, result.sample_votes = combine(result.sample_distance, refs)
        result.ood_fraction = float(np.mean(result.sample_votes >= votes_needed))
        for la, h in zip(layers, refs):
            d = result.sample_distance[la.name]
            la.hamming_distance = float(d.mean())
            la.hamming_threshold = h.threshold
            la.vote_fraction = float(np.mean(d > h.threshold))
    else:
        result.sample_scores = _exact_scores(result.sample_novelty, watches)
    if window is not None:
        result.windows = _windows(watches, ref_layers, window, main.n, result)
    if ood_data is not None:
        out_watches = watches_for(None)
        out = run_pass(inst, ood_data, out_watches, **feed, predicted=per_class, msp=True)
        result.detection = _detection(result, main, out, out_watches, refs, votes_needed)
    return result


def _exact_scores(novel: Mapping[str, np.ndarray], watches: Sequence[_LayerWatch]) -> np.ndarray:
    """The strict score: the mean over layers of each sample's fraction of unseen states
    (over the layers that ran on it: one in an If branch not taken gives NaN)."""
    table = np.array([novel[w.capture.name] for w in watches], dtype=np.float64)
    ran = ~np.isnan(table)
    sums = np.where(ran, table, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(sums / ran.sum(axis=0))


def _layer_audit(w: _LayerWatch, ref_layer: LayerResult | None) -> LayerAudit:
    """The figures of one watched layer (against its reference layer, if any)."""
    res = layer_result(w.capture, w.counter)
    fired = metrics.firing_counts(res.state_ids(), res.counts(), res.neurons)
    entry = LayerAudit(
        name=res.name,
        neurons=res.neurons,
        state_count=res.state_count,
        efficiency=res.efficiency() if res.state_count else 0.0,
        dead=np.flatnonzero(fired == 0).tolist(),
        always_on=np.flatnonzero(fired == res.state_count).tolist() if res.state_count else [],
        coverage=float(np.mean(fired > 0)),
        topk_coverage=float(np.mean(w.topk)) if w.topk is not None else 0.0,
    )
    if res.state_count:
        groups = metrics.redundant_neurons(res.state_ids(), res.neurons)
        entry.redundant_groups, entry.complementary = groups.groups, groups.complementary
        entry.effective_neurons = groups.effective
        entry.effective_efficiency = res.entropy() / groups.effective if groups.effective else 0.0
    if w.by_class:
        top = max(w.by_class) + 1
        entry.class_states = [w.by_class[c].n_unique if c in w.by_class else 0
                              for c in range(top)]  # fmt: skip
        entry.class_entropy = [
            metrics.entropy(w.by_class[c].counts(), 1) if c in w.by_class else None
            for c in range(top)
        ]
        entry.mutual_information, entry.mutual_information_mm = metrics.class_information(
            res.counts(), [v.counts() for v in w.by_class.values()]
        )
    if ref_layer is not None:
        if ref_layer.neurons != res.neurons:
            raise StoreError(
                f"{res.name} has {res.neurons} neurons here but {ref_layer.neurons} in the "
                "reference; is it the same model?"
            )
        if not (res.state_count and ref_layer.state_count):
            return entry  # a layer that never ran (an If branch) on one side: nothing to compare
        seen = metrics.seen_in(res.state_ids(), ref_layer.state_ids())
        per_sample = np.concatenate(w.novel_per_sample)
        entry.novelty = float(res.counts()[~seen].sum() / res.state_count)
        entry.js_divergence = metrics.js_divergence(
            res.state_ids(), res.counts(), ref_layer.state_ids(), ref_layer.counts()
        )
        entry.efficiency_drift = entry.efficiency - ref_layer.efficiency()
        top_novel = np.argsort(-per_sample, kind="stable")[:10]
        entry.most_novel_samples = top_novel[per_sample[top_novel] > 0].tolist()
    return entry


def _windows(
    watches: Sequence[_LayerWatch],
    ref_layers: Mapping[str, LayerResult],
    window: int,
    n: int,
    result: Audit,
) -> list[Window]:
    """Novelty, JS divergence and efficiency of each window (and its flagged fraction)."""
    out = []
    for k in range(-(-n // window)):
        start, stop = k * window, min(n, (k + 1) * window)
        nov, js, eff = {}, {}, {}
        for w in watches:
            name = w.capture.name
            counter = w.windows[k]
            ref = ref_layers[name]
            if not (counter.state_count and ref.state_count):
                continue  # the layer did not run here (an If branch), or in the reference
            ids, counts = counter.state_ids(), counter.counts()
            seen = metrics.seen_in(ids, ref.state_ids())
            nov[name] = float(counts[~seen].sum() / counts.sum())
            js[name] = metrics.js_divergence(ids, counts, ref.state_ids(), ref.counts())
            eff[name] = metrics.efficiency(counts, counter.neurons)
        flagged = None
        if result.sample_votes is not None and result.min_votes is not None:
            flagged = float(np.mean(result.sample_votes[start:stop] >= result.min_votes))
        out.append(Window(start, stop, nov, js, eff, flagged))
    return out


def _detection(
    result: Audit,
    main: _Pass,
    out: _Pass,
    out_watches: Sequence[_LayerWatch],
    refs: Sequence[ReferenceLayer],
    votes_needed: int,
) -> Detection:
    """AUROC and FPR at 95 % TPR of the novelty score and of 1 - max softmax probability."""
    assert result.sample_scores is not None and main.msp is not None and out.msp is not None
    flagged = None
    if refs:
        distances = {
            w.capture.name: np.concatenate(w.distance_per_sample) for w in out_watches
        }  # fmt: skip
        scores_out, votes_out = combine(distances, refs)
        flagged = float(np.mean(votes_out >= votes_needed))
    else:
        novel = {w.capture.name: np.concatenate(w.novel_per_sample) for w in out_watches}
        scores_out = _exact_scores(novel, out_watches)
    s_in = result.sample_scores
    return Detection(
        score="hamming" if refs else "exact",
        n_in=len(s_in),
        n_out=len(scores_out),
        auroc=metrics.auroc(s_in, scores_out),
        fpr95=metrics.fpr_at_tpr(s_in, scores_out, 0.95),
        msp_auroc=metrics.auroc(1 - main.msp, 1 - out.msp),
        msp_fpr95=metrics.fpr_at_tpr(1 - main.msp, 1 - out.msp, 0.95),
        ood_fraction=flagged,
    )


def _describe(reference: Any) -> str:
    return "<Analysis object>" if isinstance(reference, Analysis) else os.fspath(reference)


# -- on a Dask cluster (onnx_state.distributed) --------------------------------------------
@dataclass
class _AuditPart:
    """One range's (or several merged ranges') watch figures and tallies, per capture."""

    start: int
    tables: list[Table]
    topk: list[np.ndarray | None]
    novel: list[list[np.ndarray]]  # per-batch figures, in sample order
    distance: list[list[np.ndarray]]
    by_class: list[dict[int, Table]]
    msp: list[np.ndarray]
    n: int
    correct: int
    size: int


@dataclass(frozen=True)
class _AuditRanges:
    """One pass of audit's on one range of samples (see ``distributed.RangeWork``)."""

    model: str | bytes
    sha: str
    selection: tuple[Any, ...]
    session: tuple[Any, ...]
    output_batch_axis: int | None
    batch_size: int
    constants: dict[str, np.ndarray]
    top_k: int
    flags: dict[str, bool]  # _run_pass's per_class, predicted, given, msp

    def key(self) -> Hashable:
        return ("audit", self.sha, repr(self.selection), repr(self.session),
                self.output_batch_axis)  # fmt: skip

    def build(self, threads: int) -> tuple[Instrumented, int]:
        return instrument_on_worker(self.model, self.sha, self.selection, self.session,
                                    self.output_batch_axis, threads)  # fmt: skip

    def count(
        self, context: tuple[Instrumented, int], data: Sequence[Mapping[str, Any]],
        start: int, labels: Any, shared: Mapping[str, Any] | None,
    ) -> _AuditPart:  # fmt: skip
        inst = context[0]
        shared = shared or {}  # per layer: (reference state ids, Hamming reference) or None
        watches = []
        for c in inst.captures:
            ids, hamming = shared.get(c.name) or (None, None)
            w = _LayerWatch(c, self.top_k, None, hamming)
            w.reference_ids = ids
            watches.append(w)
        done = _run_pass(inst, data[0], watches, batch_size=self.batch_size,
                         constants=self.constants, progress=False, labels=labels,
                         **self.flags)  # fmt: skip
        correct = 0 if done.accuracy is None else round(done.accuracy * done.n)
        return _AuditPart(
            start, [Table.of(w.counter) for w in watches], [w.topk for w in watches],
            [w.novel_per_sample for w in watches], [w.distance_per_sample for w in watches],
            [{k: Table.of(c) for k, c in w.by_class.items()} for w in watches],
            [] if done.msp is None else [done.msp], done.n, correct, done.size,
        )  # fmt: skip

    def merge(self, partials: Sequence[_AuditPart]) -> _AuditPart:
        parts = sorted(partials, key=lambda p: p.start)
        layers = range(len(parts[0].tables))
        tables = [Table.merge([p.tables[i] for p in parts]) for i in layers]
        topk: list[np.ndarray | None] = [None] * len(tables)
        for p in parts:  # into new objects: a task's inputs stay as they were
            for i, top in enumerate(p.topk):
                if top is not None:
                    topk[i] = top.copy() if topk[i] is None else topk[i] | top
        by_class = []
        for i in layers:
            classes = sorted({k for p in parts for k in p.by_class[i]})
            by_class.append({
                k: Table.merge([p.by_class[i][k] for p in parts if k in p.by_class[i]])
                for k in classes
            })  # fmt: skip
        return _AuditPart(
            parts[0].start, tables, topk,
            [[a for p in parts for a in p.novel[i]] for i in layers],
            [[a for p in parts for a in p.distance[i]] for i in layers], by_class,
            [a for p in parts for a in p.msp], sum(p.n for p in parts),
            sum(p.correct for p in parts), parts[0].size,
        )  # fmt: skip


def _run_pass_on(
    cluster: Any,
    model: str | os.PathLike[str] | ModelProto,
    settings: tuple[tuple[Any, ...], tuple[Any, ...], int | None, int],
    inst: Instrumented,
    data: Any,
    watches: Sequence[_LayerWatch],
    *,
    batch_size: int | None,
    constants: Mapping[str, Any] | None,
    progress: bool | None,
    labels: Any = None,
    per_class: bool = False,
    predicted: bool = False,
    given: bool = False,
    msp: bool = False,
) -> _Pass:
    """``_run_pass`` on a Dask cluster: *watches* filled from ranges run on the workers
    exactly as one pass fills them; *settings*: selection, session, output axis, top-k."""
    if any(w.window is not None for w in watches):
        raise InputError("window= (--window) cannot be used with cluster=; drop one of them")
    fixed = inst.constants(constants)
    inputs, n = distributed.open_inputs(data, inst.specs, fixed)
    size = resolve_batch_size(batch_size, data_specs(inst.specs, fixed), n)
    y = None if labels is None else accuracy_of(labels)
    if y is not None and len(y.labels) != n:
        raise InputError(f"got {len(y.labels)} labels for {n} samples; they must match")
    (attach_to, exclude, method, neuron_axes, literal, quantized), session, axis, top_k = settings
    work = _AuditRanges(
        os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else
        inst.original.SerializeToString(), inst.sha256,
        (attach_to, exclude, method, None if neuron_axes is None else dict(neuron_axes),
         literal, quantized, False),
        (None if session[0] is None else list(session[0]), *session[1:]), axis, size, fixed,
        top_k, {"per_class": per_class, "predicted": predicted, "given": given, "msp": msp},
    )  # fmt: skip
    shared = {
        w.capture.name: (w.reference_ids, w.hamming) for w in watches
        if w.reference_ids is not None or w.hamming is not None
    }  # fmt: skip
    with distributed.connect(cluster) as client:
        ran = distributed.run_ranges(
            client, work, [inputs], n, size, labels=None if y is None else y.labels,
            progress=progress, shared=shared or None,
        )  # fmt: skip
    part: _AuditPart = ran.merged
    for i, w in enumerate(watches):
        w.counter, w.topk = part.tables[i].counter(), part.topk[i]
        w.novel_per_sample, w.distance_per_sample = part.novel[i], part.distance[i]
        w.by_class = {k: t.counter() for k, t in part.by_class[i].items()}
    return _Pass(
        part.n, None if y is None else part.correct / part.n,
        np.concatenate(part.msp) if msp and part.msp else None, part.size,
    )  # fmt: skip
