"""audit(): dead and always-on neurons, neuron coverage, and drift from a stored reference.

Neuron coverage is DeepXplore's criterion at threshold 0 (the fraction of neurons that fire
on some input); top-k neuron coverage is DeepGauge's (the fraction of neurons that are among
the k most active of their layer for some input; a conv neuron's activity on an input is the
mean of its feature map). Against a reference results store: novelty (the fraction of states
never seen in the reference, per layer and per sample), the Jensen–Shannon divergence of the
state distributions, and the change of efficiency.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnx_state import metrics
from onnx_state.analysis import layer_result
from onnx_state.capture import BatchRun, Capture, Instrumented, Method, Optimization
from onnx_state.capture.session import new_counter
from onnx_state.errors import InputError, StoreError
from onnx_state.labels import accuracy_of
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

__all__ = ["RULES", "Audit", "LayerAudit", "audit", "load_rules"]

SCHEMA = "onnx_state.audit"
SCHEMA_VERSION = 1
# The thresholds Audit.violations takes, by name (also the keys of a rules file).
RULES = ("max_dead_fraction", "min_coverage", "max_novelty", "max_js", "max_efficiency_drift")


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
    """Audit figures of one captured layer."""

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

    @property
    def dead_fraction(self) -> float:
        """The fraction of neurons that never fired."""
        return len(self.dead) / self.neurons


@dataclass
class Audit:
    """Per-layer audit of a model on a data set, optionally against a reference."""

    layers: list[LayerAudit]
    n_samples: int
    k: int
    accuracy: float | None = None
    reference: str | None = None
    sample_novelty: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    run: dict[str, Any] | None = None  # the run record (``results.RunRecord.to_dict``)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (schema ``onnx_state.audit``); ``from_dict`` reads it back.

        Per-sample novelty stays out (it grows with the data).
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
            "run": self.run,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Audit:
        """An Audit from ``to_dict``'s output, every field checked.

        Raises StoreError, one line naming the field at fault and what was expected.
        """
        check_schema(d, "audit", SCHEMA, SCHEMA_VERSION, "audit")
        _check_audit(d)
        names = [f.name for f in fields(LayerAudit)]
        layers = [LayerAudit(**{k: la[k] for k in names}) for la in d["layers"]]
        run = d.get("run")
        return cls(layers, d["n_samples"], d["top_k"], d["accuracy"], d["reference"],
                   run=None if run is None else check_run(run, "audit:"))  # fmt: skip

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
    ) -> list[str]:
        """Rules broken, one line each, for CI gating."""
        out = []
        for la in self.layers:
            if max_dead_fraction is not None and la.dead_fraction > max_dead_fraction:
                out.append(f"{la.name}: dead fraction {la.dead_fraction:.4f} > {max_dead_fraction}")
            if min_coverage is not None and la.coverage < min_coverage:
                out.append(f"{la.name}: neuron coverage {la.coverage:.4f} < {min_coverage}")
            if max_novelty is not None and la.novelty is not None and la.novelty > max_novelty:
                out.append(f"{la.name}: novelty {la.novelty:.4f} > {max_novelty}")
            if max_js is not None and la.js_divergence is not None and la.js_divergence > max_js:
                out.append(f"{la.name}: JS divergence {la.js_divergence:.4f} > {max_js}")
            drift = la.efficiency_drift
            if (
                max_efficiency_drift is not None
                and drift is not None
                and abs(drift) > max_efficiency_drift
            ):
                out.append(
                    f"{la.name}: efficiency drift {drift:+.4f} beyond ±{max_efficiency_drift}"
                )
        return out

    def table(self) -> str:
        """The per-layer table the CLI prints, then dead, always-on and novel samples."""
        ref = self.reference is not None
        head = f"{'layer':28s} {'neurons':>7s} {'dead':>5s} {'on':>5s} {'cover':>7s} {'top-k':>7s}"
        if ref:
            head += f" {'novelty':>8s} {'JS':>7s} {'Δeff':>8s}"
        lines = [head, "-" * len(head)]
        for la in self.layers:
            row = (
                f"{la.name[:28]:28s} {la.neurons:7d} {len(la.dead):5d} {len(la.always_on):5d} "
                f"{100 * la.coverage:6.2f}% {100 * la.topk_coverage:6.2f}%"
            )
            if ref:
                row += f" {_figure(la.novelty, '7.3f', 100)}% {_figure(la.js_divergence, '7.4f')}"
                row += f" {_figure(la.efficiency_drift, '+8.4f')}"
            lines.append(row)
        lines.append("")
        lines.append(f"samples: {self.n_samples}, top-k coverage with k={self.k}")
        for la in self.layers:
            if la.dead:
                lines.append(f"{la.name}: dead neurons {_short(la.dead)}")
            if la.always_on:
                lines.append(f"{la.name}: always-on neurons {_short(la.always_on)}")
            if ref and la.most_novel_samples:
                lines.append(f"{la.name}: most novel samples {_short(la.most_novel_samples)}")
        if self.accuracy is not None:
            lines.append(f"accuracy: {100 * self.accuracy:.2f}%")
        return "\n".join(lines)


def _figure(value: float | None, spec: str, scale: float = 1) -> str:
    """*value* (times *scale*) formatted by *spec*, or a dash of its width when missing."""
    if value is None:
        return "-".rjust(int(spec.strip("+").split(".")[0]))
    return format(scale * value, spec)


def _short(items: Sequence[int], n: int = 20) -> str:
    text = ", ".join(str(i) for i in items[:n])
    return text + (f", … ({len(items)} in all)" if len(items) > n else "")


class _LayerWatch:
    """Per-layer streaming state: counter, top-k coverage, per-sample novelty."""

    def __init__(self, capture: Capture, k: int, reference: LayerResult | None) -> None:
        self.capture = capture
        self.k = k
        self.counter = new_counter(capture)
        self.topk: np.ndarray | None = None
        self.reference_ids = None if reference is None else reference.state_ids()
        self.novel_per_sample: list[np.ndarray] = []

    def update(self, x: np.ndarray, batch_axis: int) -> None:
        """Count one batch of the capture whose samples lie along *batch_axis*."""
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
            packed = np.packbits(rows > 0, axis=-1, bitorder="little").reshape(
                -1, (neurons + 7) // 8
            )
            novel = ~metrics.seen_in(packed, self.reference_ids)
            self.novel_per_sample.append(novel.reshape(n, -1).mean(axis=1))


def _check_reference(reference: Analysis, captures: Sequence[Capture]) -> dict[str, LayerResult]:
    by_name = {r.name: r for r in reference.layers}
    missing = [c.name for c in captures if c.name not in by_name]
    if missing:
        raise StoreError(
            f"the reference store has no layer(s) {', '.join(missing)} (it holds "
            f"{', '.join(by_name) or 'none'}); analyse the reference with the same attach_to"
        )
    return by_name


def audit(
    model: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    reference: str | os.PathLike[str] | Analysis | None = None,
    labels: Any = None,
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
) -> Audit:
    """Audit the chosen layers of *model* on *data*, optionally against a reference store.

    Parameters
    ----------
    model, data:
        As for ``analyze``.
    reference:
        A results store (path or Analysis) of the same layers, e.g. from the training data:
        enables novelty, JS divergence and efficiency drift.
    labels:
        Class labels, for accuracy.
    attach_to, exclude, method, neuron_axes:
        The layers to audit (as for ``analyze``).
    batch_size, constants, output_batch_axis:
        Batching and constant inputs (as for ``analyze``).
    top_k:
        k of DeepGauge's top-k neuron coverage.
    providers, threads, optimization:
        The onnxruntime session (as for ``analyze``).
    progress:
        Show a progress bar; None shows one when stderr is a terminal.
    """
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    ref = Analysis.load(reference) if isinstance(reference, (str, os.PathLike)) else reference
    inst = Instrumented(
        model, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=literal, quantized=quantized, providers=providers, threads=threads,
        optimization=optimization,
        output_batch_axis=output_batch_axis,
    )  # fmt: skip
    ref_layers = _check_reference(ref, inst.captures) if ref is not None else {}
    watches = [_LayerWatch(c, top_k, ref_layers.get(c.name)) for c in inst.captures]
    for w in watches:
        ref_layer = ref_layers.get(w.capture.name)
        if ref_layer is not None and ref_layer.axis != w.capture.axis:
            raise StoreError(f"{w.capture.name} has neuron axis {w.capture.axis} here but "
                             f"{ref_layer.axis} in the reference")  # fmt: skip

    def consume(run: BatchRun) -> None:
        for w in watches:
            x = run.captured[w.capture.key]
            w.update(x, inst.batch_axis(w.capture.key, x, run.samples))

    accuracy = accuracy_of(labels)
    n = size = 0
    for run in inst.stream(data, batch_size, consume, progress, constants=constants):
        size = size or run.samples
        if accuracy is not None:
            accuracy.update(inst.class_scores(run), run.samples)
        n += run.samples
    top1 = None if accuracy is None else accuracy.result(n)
    layers = []
    novelty_by_layer = {}
    for w in watches:
        res = layer_result(w.capture, w.counter)
        fired = metrics.firing_counts(res.state_ids(), res.counts(), res.neurons)
        entry = LayerAudit(
            name=res.name,
            neurons=res.neurons,
            state_count=res.state_count,
            efficiency=res.efficiency(),
            dead=np.flatnonzero(fired == 0).tolist(),
            always_on=np.flatnonzero(fired == res.state_count).tolist(),
            coverage=float(np.mean(fired > 0)),
            topk_coverage=float(np.mean(w.topk)) if w.topk is not None else 0.0,
        )
        ref_layer = ref_layers.get(res.name)
        if ref_layer is not None:
            if ref_layer.neurons != res.neurons:
                raise StoreError(
                    f"{res.name} has {res.neurons} neurons here but {ref_layer.neurons} in the "
                    "reference; is it the same model?"
                )
            seen = metrics.seen_in(res.state_ids(), ref_layer.state_ids())
            per_sample = np.concatenate(w.novel_per_sample)
            novelty_by_layer[res.name] = per_sample
            entry.novelty = float(res.counts()[~seen].sum() / res.state_count)
            entry.js_divergence = metrics.js_divergence(
                res.state_ids(), res.counts(), ref_layer.state_ids(), ref_layer.counts()
            )
            entry.efficiency_drift = entry.efficiency - ref_layer.efficiency()
            top = np.argsort(-per_sample, kind="stable")[:10]
            entry.most_novel_samples = top[per_sample[top] > 0].tolist()
        layers.append(entry)
    return Audit(
        layers=layers,
        n_samples=n,
        k=top_k,
        accuracy=top1,
        reference=None if reference is None else _describe(reference),
        sample_novelty=novelty_by_layer,
        run=RunRecord.of_session(inst, providers, threads, optimization, size or None).to_dict(),
    )


def _describe(reference: Any) -> str:
    return "<Analysis object>" if isinstance(reference, Analysis) else os.fspath(reference)
