"""compare(): run two models in lock-step and measure, layer by layer, how their states agree.

Typical pairs: a PyTorch and a Keras export of one network; fp32 and an int8 (QDQ) or fp16
version; a model before and after an optimizer. Layers are matched by a user mapping first,
then by recorded layer name, then by op family and order; layouts may differ (neurons are
aligned by their axis), and pairs whose neuron or state counts differ are refused, with the
reason.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnx_state import distributed, metrics
from onnx_state.capture import (
    DEFAULT_ATTACH_TO,
    BatchRun,
    Capture,
    InputSpec,
    Instrumented,
    Method,
    Optimization,
    batch_samples,
    check_batch,
    data_length,
    data_specs,
    iter_batches,
    load_model,
    open_data,
    resolve_batch_size,
)
from onnx_state.capture.session import fires, new_counter
from onnx_state.distributed import Table
from onnx_state.errors import InputError, LayerNotFoundError, StoreError
from onnx_state.labels import Accuracy, accuracy_of, labels_array
from onnx_state.results import RunRecord
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

__all__ = ["Comparison", "PairResult", "RefusedPair", "compare", "load_mapping"]

SCHEMA = "onnx_state.comparison"
SCHEMA_VERSION = 1

# Op types that compute the same kind of layer in float, quantized or fused form.
_FAMILIES = {
    "conv": {"conv", "convinteger", "qlinearconv", "fusedconv"},
    "matmul": {"gemm", "matmul", "matmulinteger", "qlinearmatmul", "fusedmatmul", "fusedgemm"},
    "convtranspose": {"convtranspose"},
}


def _family(capture: Capture) -> str:
    op = capture.op_type.lower()
    name = next((f for f, ops in _FAMILIES.items() if op in ops), op)
    return f"{name}/{capture.kind}"


def load_mapping(path: str | os.PathLike[str]) -> dict[str, str]:
    """A JSON object {layer or capture name in A: layer, node or tensor name in B}."""
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the mapping file {path}: {exc}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise InputError(f"{path} must hold a JSON object of layer-name strings")
    return mapping


def match_captures(
    a: Sequence[Capture], b: Sequence[Capture], mapping: Mapping[str, str]
) -> tuple[list[tuple[Capture, Capture, str]], list[Capture], list[Capture]]:
    """Pairs (a, b, rule), then the unmatched captures of A and of B."""
    left, right = list(a), list(b)
    pairs: list[tuple[Capture, Capture, str]] = []

    def take(pred: Callable[[Capture, Capture], bool], rule: str) -> None:
        for ca in list(left):
            cb = next((c for c in right if pred(ca, c)), None)
            if cb is not None:
                pairs.append((ca, cb, rule))
                left.remove(ca)
                right.remove(cb)

    def mapped(ca: Capture, cb: Capture) -> bool:
        target = mapping.get(ca.name, mapping.get(ca.layer))
        return (
            target is not None and ca.kind == cb.kind and target in (cb.name, cb.layer, cb.tensor)
        )

    take(mapped, "mapping")
    take(lambda ca, cb: ca.layer == cb.layer and ca.kind == cb.kind, "name")
    for family in dict.fromkeys(_family(c) for c in left):
        la = [c for c in left if _family(c) == family]
        lb = [c for c in right if _family(c) == family]
        for ca, cb in zip(la, lb):
            pairs.append((ca, cb, "order"))
            left.remove(ca)
            right.remove(cb)
    order = {c.name: i for i, c in enumerate(a)}
    pairs.sort(key=lambda p: order[p[0].name])
    return pairs, left, right


def _rows(x: np.ndarray, axis: int, batch: int | None) -> np.ndarray:
    """*x* with its samples first and its neurons (*axis*) last, the other axes between in
    their order: so A's and B's states pair up even when one model keeps its samples
    elsewhere (a time-first Keras LSTM's (T, N, H) against PyTorch's (N, T, H))."""
    axis %= x.ndim
    if batch is None or batch == axis:
        return np.moveaxis(x, axis, -1)
    return np.moveaxis(x, (batch, axis), (0, -1))


def _values(capture: Capture, x: np.ndarray) -> np.ndarray:
    """*x* as float64 values of the model's tensor: an int8 tensor that onnxruntime runs as
    uint8 (``Capture.as_uint8``, capture.qdq) is read back as int8."""
    return x.astype(np.float64) - 128 if capture.as_uint8 else x.astype(np.float64)


def _sample_axis(inst: Instrumented, key: str, x: np.ndarray, samples: int) -> int | None:
    """The axis of captured *x* that holds the batch's samples; None where no axis does (a
    layer that mixes them into rows: its rows are then paired as they come)."""
    try:
        return inst.batch_axis(key, x, samples)
    except InputError:
        return None


class _PairStats:
    """Streaming agreement statistics of one matched pair of layers."""

    def __init__(self, a: Capture, b: Capture) -> None:
        self.a, self.b = a, b
        self.refused: str | None = None
        self.states = self.identical = 0
        self.hamming = 0
        self.neuron_agree: np.ndarray | None = None
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.dot = self.norm_a = self.norm_b = 0.0
        self.counter_a = new_counter(a)
        self.counter_b = new_counter(b)

    def update(
        self, ta: np.ndarray, tb: np.ndarray, batch_a: int | None = None, batch_b: int | None = None
    ) -> None:
        """Add one batch: A's and B's captured tensors, whose samples lie along *batch_a*
        and *batch_b* (None: unknown, the rows are paired in their own order)."""
        if self.refused:
            return
        xa = _rows(ta, self.a.axis, batch_a)
        xb = _rows(tb, self.b.axis, batch_b)
        if xa.shape[-1] != xb.shape[-1]:
            self.refused = f"neuron counts differ ({xa.shape[-1]} vs {xb.shape[-1]})"
            return
        xa, xb = xa.reshape(-1, xa.shape[-1]), xb.reshape(-1, xb.shape[-1])
        if len(xa) != len(xb):
            self.refused = f"state counts per batch differ ({len(xa)} vs {len(xb)})"
            return
        fa, fb = fires(self.a, xa), fires(self.b, xb)
        same = fa == fb
        self.states += len(fa)
        self.identical += int(np.count_nonzero(same.all(axis=1)))
        self.hamming += int(same.size - np.count_nonzero(same))
        agree = same.sum(axis=0, dtype=np.int64)
        self.neuron_agree = agree if self.neuron_agree is None else self.neuron_agree + agree
        # values as the model defines them: an int8 tensor read as uint8 is shifted back
        da, db = _values(self.a, xa), _values(self.b, xb)
        diff = np.abs(da - db)
        finite = np.isfinite(diff)
        if finite.any():
            self.max_abs = max(self.max_abs, float(diff[finite].max()))
        self.sum_abs += float(diff[finite].sum())
        self.values += int(finite.sum())
        self.dot += float(np.sum(da * db))
        self.norm_a += float(np.sum(da * da))
        self.norm_b += float(np.sum(db * db))
        self.counter_a.update(xa, axis=1)
        self.counter_b.update(xb, axis=1)

    def result(self, rule: str) -> PairResult | RefusedPair:
        a, b, neurons = self.a.name, self.b.name, self.counter_a.neurons
        if self.refused or not self.states or self.neuron_agree is None:
            return RefusedPair(a, b, rule, neurons, refused=self.refused or "no states")
        ids_a, counts_a = self.counter_a.state_table()
        ids_b, counts_b = self.counter_b.state_table()
        per_neuron = self.neuron_agree / self.states
        denom = np.sqrt(self.norm_a * self.norm_b)
        return PairResult(
            a=a,
            b=b,
            rule=rule,
            neurons=neurons,
            states=self.states,
            state_agreement=self.identical / self.states,
            neuron_agreement_mean=float(per_neuron.mean()),
            neuron_agreement_min=float(per_neuron.min()),
            mean_hamming=self.hamming / self.states,
            max_abs_diff=self.max_abs,
            mean_abs_diff=self.sum_abs / max(self.values, 1),
            cosine=float(self.dot / denom) if denom > 0 else (1.0 if self.dot == 0 else 0.0),
            efficiency_a=metrics.efficiency(counts_a, neurons),
            efficiency_b=metrics.efficiency(counts_b, neurons),
            js_divergence=metrics.js_divergence(ids_a, counts_a, ids_b, counts_b),
        )


@dataclass
class PairResult:
    """Agreement of one matched pair of layers (A's capture, B's capture)."""

    a: str
    b: str
    rule: str  # mapping | name | order
    neurons: int
    states: int
    state_agreement: float
    neuron_agreement_mean: float
    neuron_agreement_min: float
    mean_hamming: float
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    efficiency_a: float
    efficiency_b: float
    js_divergence: float
    refused: None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``Comparison.to_dict`` lists these)."""
        return dict(vars(self))


@dataclass
class RefusedPair:
    """A matched pair of layers that cannot be compared, and why."""

    a: str
    b: str
    rule: str
    neurons: int
    refused: str

    def to_dict(self) -> dict[str, Any]:
        """The same keys as a PairResult's, with no figures."""
        figures = {f.name: None for f in fields(PairResult)}
        return {**figures, "states": 0, **vars(self)}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _pair_from_dict(d: dict[str, Any]) -> PairResult | RefusedPair:
    if d.get("refused"):
        return RefusedPair(d["a"], d["b"], d["rule"], d["neurons"], d["refused"])
    values: dict[str, Any] = {f.name: d.get(f.name) for f in fields(PairResult)}
    return PairResult(**values)


@dataclass
class Comparison:
    """Layer-by-layer agreement of two models on the same data."""

    pairs: list[PairResult | RefusedPair]
    unmatched_a: list[str]
    unmatched_b: list[str]
    n_samples: int
    output_max_abs_diff: float
    top1_agreement: float | None  # None: the first output has no sample axis
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    threshold: float = 0.99
    run: dict[str, Any] | None = None  # the run record (``results.RunRecord.to_dict``)

    @property
    def compared(self) -> list[PairResult]:
        """The pairs that were compared (refused ones left out)."""
        return [p for p in self.pairs if isinstance(p, PairResult)]

    @property
    def first_divergent(self) -> str | None:
        """The first layer of A whose state agreement drops below the threshold."""
        for p in self.compared:
            if p.state_agreement < self.threshold:
                return p.a
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (schema ``onnx_state.comparison``); ``from_dict`` reads it back."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "pairs": [p.to_dict() for p in self.pairs],
            "unmatched_a": self.unmatched_a,
            "unmatched_b": self.unmatched_b,
            "n_samples": self.n_samples,
            "output_max_abs_diff": self.output_max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b,
            "threshold": self.threshold,
            "first_divergent": self.first_divergent,
            "run": self.run,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """A Comparison from ``to_dict``'s output, every field checked.

        Raises StoreError, one line naming the field at fault and what was expected.
        """
        check_schema(d, "comparison", SCHEMA, SCHEMA_VERSION, "comparison")
        _check_comparison(d)
        run = d.get("run")
        return cls(
            pairs=[_pair_from_dict(p) for p in d["pairs"]],
            **{k: d[k] for k in _COMPARISON_FIELDS},
            run=None if run is None else check_run(run, "comparison:"),
        )

    def _repr_html_(self) -> str:
        from onnx_state.views import comparison_html

        return comparison_html(self)

    def violations(
        self,
        min_state_agreement: float | None = None,
        min_top1_agreement: float | None = None,
        max_js: float | None = None,
        max_output_diff: float | None = None,
    ) -> list[str]:
        """Rules broken, one line each, for CI gating."""
        out = []
        for p in self.compared:
            if min_state_agreement is not None and p.state_agreement < min_state_agreement:
                out.append(
                    f"{p.a}: state agreement {p.state_agreement:.4%} < {min_state_agreement:.4%}"
                )
            if max_js is not None and p.js_divergence > max_js:
                out.append(f"{p.a}: JS divergence {p.js_divergence:.4g} > {max_js:.4g}")
        top1 = self.top1_agreement
        if min_top1_agreement is not None and top1 is None:
            out.append("outputs: top-1 agreement unknown (the first output has no sample axis)")
        elif min_top1_agreement is not None and top1 is not None and top1 < min_top1_agreement:
            out.append(f"outputs: top-1 agreement {top1:.4%} < {min_top1_agreement:.4%}")
        if max_output_diff is not None and self.output_max_abs_diff > max_output_diff:
            out.append(
                f"outputs: max |diff| {self.output_max_abs_diff:.4g} > {max_output_diff:.4g}"
            )
        return out

    def table(self) -> str:
        """The per-pair table the CLI prints, then the outputs and unmatched layers."""
        head = (
            f"{'layer A':24s} {'layer B':24s} {'rule':7s} {'states':>9s} {'same':>8s} "
            f"{'hamming':>8s} {'cosine':>8s} {'max|d|':>9s} {'eff A':>7s} {'eff B':>7s} {'JS':>7s}"
        )
        lines = [head, "-" * len(head)]
        first = self.first_divergent
        for p in self.pairs:
            mark = " <- first below threshold" if p.a == first else ""
            if isinstance(p, RefusedPair):
                lines.append(f"{p.a[:24]:24s} {p.b[:24]:24s} {p.rule:7s} refused: {p.refused}")
                continue
            lines.append(
                f"{p.a[:24]:24s} {p.b[:24]:24s} {p.rule:7s} {p.states:9d} "
                f"{100 * p.state_agreement:7.3f}% {p.mean_hamming:8.4f} {p.cosine:8.5f} "
                f"{p.max_abs_diff:9.3g} {100 * p.efficiency_a:6.2f}% {100 * p.efficiency_b:6.2f}% "
                f"{p.js_divergence:7.4f}{mark}"
            )
        lines.append("")
        lines.append(f"samples: {self.n_samples}")
        lines.append(
            f"outputs: max |diff| {self.output_max_abs_diff:.3g}, top-1 agreement "
            f"{_percent(self.top1_agreement)}"
        )
        if self.accuracy_a is not None:
            lines.append(f"accuracy A {_percent(self.accuracy_a)}, B {_percent(self.accuracy_b)}")
        if self.unmatched_a or self.unmatched_b:
            lines.append(f"unmatched in A: {', '.join(self.unmatched_a) or '-'}")
            lines.append(f"unmatched in B: {', '.join(self.unmatched_b) or '-'}")
        if first:
            lines.append(f"first layer below {100 * self.threshold:g}% state agreement: {first}")
        return "\n".join(lines)


def input_adapter(
    specs_a: Sequence[InputSpec], specs_b: Sequence[InputSpec]
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Map A's batches to B's inputs: same names, or one input renamed and, when B's sample
    axes are a permutation of A's (NCHW vs NHWC), transposed (whatever the names: a PyTorch
    and a Keras export both call their input ``x``)."""
    names_a, names_b = [s.name for s in specs_a], [s.name for s in specs_b]
    if sorted(names_a) == sorted(names_b):
        sa, sb = specs_a[0], next(s for s in specs_b if s.name == specs_a[0].name)
        as_is = len(sa.shape) == len(sb.shape) and all(
            _fits(da, db) for da, db in zip(sa.shape[1:], sb.shape[1:])
        )
        if len(specs_a) != 1 or as_is:
            return lambda batch: batch
    if len(specs_a) != 1 or len(specs_b) != 1:
        raise InputError(
            f"model inputs differ ({', '.join(names_a)} vs {', '.join(names_b)}); give B its "
            "own data with data_b / --data-b"
        )
    sa, sb = specs_a[0], specs_b[0]
    dims_a, dims_b = sa.shape[1:], sb.shape[1:]
    if len(dims_a) != len(dims_b) or sa.dtype != sb.dtype:
        raise InputError(
            f"input {sa.name} {sa.dtype}{_dims(sa.shape)} of A does not fit input {sb.name} "
            f"{sb.dtype}{_dims(sb.shape)} of B; give B its own data with --data-b"
        )
    perms = [
        p for p in itertools.permutations(range(len(dims_a)))
        if all(_fits(dims_a[i], dims_b[j]) for j, i in enumerate(p))
    ]  # fmt: skip

    # Equal sizes (H and W) make several permutations fit: take the one that moves the
    # fewest axes past each other (NCHW -> NHWC moves only C), if there is a single one.
    def inversions(p: tuple[int, ...]) -> int:
        return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))

    ranked = sorted(perms, key=inversions)
    if len(ranked) == 1 or (ranked and inversions(ranked[0]) < inversions(ranked[1])):
        perm = ranked[0]
    else:
        raise InputError(
            f"cannot tell how {sa.name}{_dims(sa.shape)} maps to {sb.name}{_dims(sb.shape)}; "
            "give B its own data with --data-b"
        )
    axes = (0, *(i + 1 for i in perm))
    return lambda batch: {sb.name: np.ascontiguousarray(batch[sa.name].transpose(axes))}


def _fits(a: Any, b: Any) -> bool:
    return not (isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b)


def _dims(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + ")"


class _Outputs:
    """Streaming agreement of the two models' first outputs (samples first; None when an
    output has no sample axis, which leaves the top-1 agreement undefined)."""

    def __init__(self) -> None:
        self.max_diff = 0.0
        self.agree: int | None = 0

    def update(
        self, a: np.ndarray | None, b: np.ndarray | None, ra: np.ndarray, rb: np.ndarray
    ) -> None:
        """Add one batch: *a*, *b* samples first (or None), *ra*, *rb* as the models gave them."""
        if a is None or b is None:
            if ra.size != rb.size:
                raise InputError(f"final outputs differ in shape: {ra.shape} vs {rb.shape}")
            self.agree = None
            la, lb = ra.reshape(1, -1), rb.reshape(1, -1)
        else:
            la, lb = a.reshape(len(a), -1), b.reshape(len(b), -1)
        if la.shape != lb.shape:
            raise InputError(f"final outputs differ in shape: {la.shape} vs {lb.shape}")
        diff = np.abs(la.astype(float) - lb.astype(float))
        self.max_diff = max(self.max_diff, float(np.max(diff)) if diff.size else 0.0)
        if self.agree is not None and a is not None:
            self.agree += int(np.sum(la.argmax(axis=1) == lb.argmax(axis=1)))


def _samples_first(inst: Instrumented, output: np.ndarray, samples: int) -> np.ndarray | None:
    """The first final output with its samples first, or None when it has no sample axis."""
    try:
        return inst.batch_first(inst.output_names[0], output, samples)
    except InputError:
        return None


def compare(
    model_a: str | os.PathLike[str] | ModelProto,
    model_b: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    labels: Any = None,
    attach_to: Sequence[str] | str | None = None,
    attach_to_b: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    exclude_b: Sequence[str] | str | None = None,
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
    neuron_axes_b: Mapping[str, int] | None = None,
    mapping: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    constants: Mapping[str, Any] | None = None,
    data_b: Any = None,
    constants_b: Mapping[str, Any] | None = None,
    output_batch_axis: int | None = None,
    threshold: float = 0.99,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: Optimization = "all",
    progress: bool | None = False,
    cluster: Any = None,
) -> Comparison:
    """Run *model_a* and *model_b* on the same batches and compare them layer by layer.

    Parameters
    ----------
    model_a, model_b:
        .onnx paths or ModelProtos.
    data:
        A's input data (as for ``analyze``); B gets the same batches, renamed or transposed
        to fit its single input when needed (see ``input_adapter``), unless *data_b* is given.
    labels:
        Class labels, for each model's accuracy.
    attach_to, exclude, method, neuron_axes:
        The layers of A (as for ``analyze``).
    attach_to_b, exclude_b, neuron_axes_b:
        The layers of B; None means the same as A's.
    mapping:
        {layer or capture name in A: layer, node or tensor name in B}, matched first.
    batch_size, constants, output_batch_axis:
        Batching, A's constant inputs and the outputs' sample axis (as for ``analyze``).
    data_b:
        B's own data, sample for sample with *data*.
    constants_b:
        B's constant inputs; None means A's.
    threshold:
        State agreement below which a layer counts as divergent.
    providers, threads, optimization:
        The onnxruntime sessions of both models (as for ``analyze``).
    progress:
        Show a progress bar; None shows one when stderr is a terminal.
    cluster:
        Run on Dask (as for ``analyze``): both models run each range in lock-step; the
        result is identical.
    """
    inst_a, inst_b, pairs, left, right = _instruments(
        model_a, model_b, attach_to, attach_to_b, exclude, exclude_b, method, neuron_axes,
        neuron_axes_b, mapping, providers, threads, optimization, output_batch_axis,
    )  # fmt: skip
    stats = [_PairStats(a, b) for a, b, _ in pairs]
    fixed_a = inst_a.constants(constants)
    fixed_b = inst_b.constants(constants if constants_b is None else constants_b)
    # once: its length sets the batch size B's batches follow
    data = open_data(data if cluster is None else distributed.open_url(data))
    batched = data_specs(inst_a.specs, fixed_a)
    # One size for both models: a fixed batch dimension of either one sets it.
    both = [*batched, *data_specs(inst_b.specs, fixed_b)]
    size = resolve_batch_size(batch_size, both, data_length(data, batched))
    batches_b = None
    if data_b is not None:
        batches_b = iter_batches(data_b, inst_b.specs, size, fixed_b)
    adapt = None
    if data_b is None:
        adapt = input_adapter(batched, data_specs(inst_b.specs, fixed_b))
    y = None if labels is None else labels_array(labels)
    accuracy_a, accuracy_b = accuracy_of(y), accuracy_of(y)
    outputs = _Outputs()

    def consume(run_a: BatchRun) -> None:
        batch_b = _batch_b(run_a, adapt, batches_b, fixed_a, fixed_b)
        _step(inst_a, inst_b, run_a, batch_b, fixed_b, stats, accuracy_a, accuracy_b, outputs)

    n = first = 0
    if cluster is not None:  # the same figures, from ranges run on Dask
        n = _compare_on(
            cluster, (model_a, model_b), (inst_a, inst_b), stats, (accuracy_a, accuracy_b),
            outputs, data, data_b, size, fixed_a, fixed_b, progress,
            {"attach_to": attach_to, "attach_to_b": attach_to_b, "exclude": exclude,
             "exclude_b": exclude_b, "method": method, "neuron_axes": neuron_axes,
             "neuron_axes_b": neuron_axes_b, "mapping": dict(mapping or {}),
             "providers": None if providers is None else list(providers), "threads": threads,
             "optimization": optimization, "output_batch_axis": output_batch_axis},
        )  # fmt: skip
        first = min(size, n)
    else:
        # A then B, batch after batch: overlapped, B would compete with A's next run.
        for run in inst_a.stream(data, size, consume, progress, overlap=False, constants=fixed_a):
            n += run.samples
            first = first or run.samples
        if batches_b is not None and next(batches_b, None) is not None:
            raise InputError("data_b holds more samples than data; they must match")
    top1_a = None if accuracy_a is None else accuracy_a.result(n)
    top1_b = None if accuracy_b is None else accuracy_b.result(n)
    return Comparison(
        pairs=[s.result(rule) for s, (_, _, rule) in zip(stats, pairs)],
        unmatched_a=[c.name for c in left],
        unmatched_b=[c.name for c in right],
        n_samples=n,
        output_max_abs_diff=outputs.max_diff,
        top1_agreement=None if outputs.agree is None else outputs.agree / n,
        accuracy_a=top1_a,
        accuracy_b=top1_b,
        threshold=threshold,
        run=(RunRecord.of_session(inst_a, providers, threads, optimization, first or None)
             if cluster is None else RunRecord.now(list(providers or ["CPUExecutionProvider"]),
                                                   threads, optimization, first or None)
             ).to_dict(),  # (on a cluster the client builds no session to ask)
    )  # fmt: skip


def _instruments(
    model_a: str | os.PathLike[str] | ModelProto,
    model_b: str | os.PathLike[str] | ModelProto,
    attach_to: Sequence[str] | str | None,
    attach_to_b: Sequence[str] | str | None,
    exclude: Sequence[str] | str,
    exclude_b: Sequence[str] | str | None,
    method: Method,
    neuron_axes: Mapping[str, int] | None,
    neuron_axes_b: Mapping[str, int] | None,
    mapping: Mapping[str, str] | None,
    providers: Sequence[str] | None,
    threads: int | None,
    optimization: Optimization,
    output_batch_axis: int | None,
) -> tuple[Instrumented, Instrumented, list[tuple[Capture, Capture, str]], list[Capture],
           list[Capture]]:  # fmt: skip
    """Both models instrumented and their captures matched: (A, B, pairs, left, right)."""
    mapping = dict(mapping or {})
    attach_to = [attach_to] if isinstance(attach_to, str) else attach_to
    attach_to_b = [attach_to_b] if isinstance(attach_to_b, str) else attach_to_b
    a_select, b_select = attach_to, attach_to_b if attach_to_b is not None else attach_to
    if mapping:  # mapped layers are captured on both sides, whatever the types say
        a_select = [*(a_select or _default_types(model_a)), *map(_layer_name, mapping)]
        b_select = [*(b_select or _default_types(model_b)), *mapping.values()]
    inst_a = Instrumented(
        model_a, attach_to=a_select, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=True, providers=providers, threads=threads, optimization=optimization,
        output_batch_axis=output_batch_axis,
    )  # fmt: skip
    inst_b = Instrumented(
        model_b, attach_to=b_select, exclude=exclude if exclude_b is None else exclude_b,
        method=method, neuron_axes=neuron_axes if neuron_axes_b is None else neuron_axes_b,
        literal=True,
        providers=providers, threads=threads, optimization=optimization,
        output_batch_axis=output_batch_axis,
    )  # fmt: skip
    pairs, left, right = match_captures(inst_a.captures, inst_b.captures, mapping)
    if not pairs:
        raise LayerNotFoundError(
            f"no layers of A ({', '.join(c.name for c in inst_a.captures)}) match layers of B "
            f"({', '.join(c.name for c in inst_b.captures)}); give a mapping file"
        )
    return inst_a, inst_b, pairs, left, right


def _batch_b(
    run_a: BatchRun,
    adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None,
    batches_b: Iterator[dict[str, np.ndarray]] | None,
    fixed_a: Mapping[str, np.ndarray],
    fixed_b: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray] | None:
    """B's batch for A's *run_a*: A's adapted, or the next of B's own (None when none is
    left)."""
    if adapt:
        data_a = {k: v for k, v in run_a.batch.items() if k not in fixed_a}
        return {**adapt(data_a), **fixed_b}
    assert batches_b is not None
    return next(batches_b, None)


def _step(
    inst_a: Instrumented,
    inst_b: Instrumented,
    run_a: BatchRun,
    batch_b: dict[str, np.ndarray] | None,
    fixed_b: Mapping[str, np.ndarray],
    stats: Sequence[_PairStats],
    accuracy_a: Accuracy | None,
    accuracy_b: Accuracy | None,
    outputs: _Outputs,
) -> None:
    """Run B on *batch_b* in lock-step with A's *run_a* and add the batch to every figure."""
    if batch_b is None or batch_samples(batch_b, fixed_b) < run_a.samples:
        raise InputError("data_b holds fewer samples than data; they must match")
    if batch_samples(batch_b, fixed_b) > run_a.samples:
        raise InputError("data_b holds more samples than data; they must match")
    try:
        check_batch(batch_b, inst_b.specs, fixed_b)
    except InputError as exc:
        raise InputError(f"model B: {exc}; give B its own data with --data-b") from None
    run_b = inst_b.run(batch_b, run_a.samples)
    n = run_a.samples
    for s in stats:
        ta, tb = run_a.captured[s.a.key], run_b.captured[s.b.key]
        s.update(ta, tb, _sample_axis(inst_a, s.a.key, ta, n), _sample_axis(inst_b, s.b.key, tb, n))
    out_a: np.ndarray | None
    out_b: np.ndarray | None
    if accuracy_a is not None and accuracy_b is not None:
        out_a, out_b = inst_a.class_scores(run_a), inst_b.class_scores(run_b)
        accuracy_a.update(out_a, n)
        accuracy_b.update(out_b, n)
    else:
        out_a = _samples_first(inst_a, run_a.outputs[0], n)
        out_b = _samples_first(inst_b, run_b.outputs[0], n)
    outputs.update(out_a, out_b, run_a.outputs[0], run_b.outputs[0])


def _layer_name(name: str) -> str:
    """A mapping key may name a capture (conv_1_post_states) or its layer (conv_1)."""
    for suffix in ("_post_states", "_pre_states"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _default_types(model: str | os.PathLike[str] | ModelProto) -> list[str]:
    """The default op types that *model* contains (the defaults need not all exist)."""
    ops = {n.op_type.lower() for n in load_model(model, load_external=False).graph.node}
    return [t for t in DEFAULT_ATTACH_TO if t.lower() in ops]


_COMPARISON_FIELDS = (
    "unmatched_a", "unmatched_b", "n_samples", "output_max_abs_diff", "top1_agreement",
    "accuracy_a", "accuracy_b", "threshold",
)  # fmt: skip

# The figures of a compared pair read back: (field, lowest, highest; None: no bound).
_PAIR_FIGURES: tuple[tuple[str, float, float | None], ...] = (
    ("state_agreement", 0, 1),
    ("neuron_agreement_mean", 0, 1),
    ("neuron_agreement_min", 0, 1),
    ("max_abs_diff", 0, None),
    ("mean_abs_diff", 0, None),
    ("cosine", -1 - SLACK, 1 + SLACK),
    ("efficiency_a", 0, 1 + SLACK),
    ("efficiency_b", 0, 1 + SLACK),
    ("js_divergence", 0, 1),
)


def _check_comparison(d: dict[str, Any]) -> None:
    """StoreError (one line: the field, what it is, what was expected) unless *d* holds
    every field ``Comparison.to_dict`` writes, of the right JSON type, in range."""
    pairs = d.get("pairs", MISSING)
    if not isinstance(pairs, list):
        raise StoreError(f"comparison: pairs is {shown(pairs)}; expected a list of layer pairs")
    first: dict[str, int] = {}
    for i, p in enumerate(pairs):
        check_dict(p, f"comparison: pairs[{i}]")
        a = check_str(p.get("a", MISSING), f"comparison: pairs[{i}] a")
        at = f"comparison: pairs[{i}] ({label(a)})"
        if a in first:
            raise StoreError(
                f"{at}: a repeats pairs[{first[a]}]; expected each layer of A in one pair at most"
            )
        first[a] = i
        check_str(p.get("b", MISSING), f"{at}: b")
        check_str(p.get("rule", MISSING), f"{at}: rule", ("mapping", "name", "order"))
        neurons = check_int(p.get("neurons", MISSING), f"{at}: neurons", minimum=1)
        refused = p.get("refused")
        if refused is not None:  # a refused pair: its reason, no figures
            if not isinstance(refused, str) or not refused:
                raise StoreError(
                    f"{at}: refused is {shown(refused)}; expected null or the reason (a string)"
                )
            continue
        check_int(p.get("states", MISSING), f"{at}: states", minimum=1)
        for key, low, high in _PAIR_FIGURES:
            check_number(p.get(key, MISSING), f"{at}: {key}", low, high)
        check_number(p.get("mean_hamming", MISSING), f"{at}: mean_hamming", 0, neurons)
    for key in ("unmatched_a", "unmatched_b"):
        check_list(d.get(key, MISSING), f"comparison: {key}", "str", distinct=True)
    check_int(d.get("n_samples", MISSING), "comparison: n_samples", minimum=1)
    check_number(
        d.get("output_max_abs_diff", MISSING), "comparison: output_max_abs_diff", 0, finite=False
    )
    check_number(d.get("top1_agreement", MISSING), "comparison: top1_agreement", 0, 1, null=True)
    accuracies = [d.get(k, MISSING) for k in ("accuracy_a", "accuracy_b")]
    for key, value in zip(("accuracy_a", "accuracy_b"), accuracies):
        check_number(value, f"comparison: {key}", 0, 1, null=True)
    if (accuracies[0] is None) != (accuracies[1] is None):
        raise StoreError(
            f"comparison: accuracy_a is {shown(accuracies[0])} but accuracy_b is "
            f"{shown(accuracies[1])}; expected both null (no labels) or both numbers"
        )
    check_number(d.get("threshold", MISSING), "comparison: threshold")
    divergent = d.get("first_divergent")  # derived again from the pairs; type only
    if divergent is not None and not (isinstance(divergent, str) and divergent in first):
        raise StoreError(
            f"comparison: first_divergent is {shown(divergent)}; expected null or the A layer "
            "of one of the pairs"
        )


# -- on a Dask cluster (onnx_state.distributed) --------------------------------------------
# The float sums of a pair, kept per batch so that the client adds them in sample order as
# one process does (floating-point addition is not associative).
_SUMS = ("sum_abs", "dot", "norm_a", "norm_b")


@dataclass
class _ComparePart:
    """One range's (or several merged ranges') pair figures and tallies."""

    start: int
    stats: list[_PairStats]  # float sums zeroed (they are in *sums*), counters empty
    tables: list[tuple[Table, Table]]  # per pair: A's and B's states
    sums: list[list[tuple[float, ...]]]  # per batch, per pair: the _SUMS of that batch
    max_diff: float
    agree: int | None
    correct: tuple[int, int]
    n_samples: int


@dataclass(frozen=True)
class _CompareRanges:
    """compare's work on one range of samples (see ``distributed.RangeWork``)."""

    models: tuple[str | bytes, str | bytes]
    shas: tuple[str, str]
    settings: dict[str, Any]  # _instruments' keywords
    batch_size: int
    fixed_a: dict[str, np.ndarray]
    fixed_b: dict[str, np.ndarray]
    own_b: bool  # B reads its own data (data_b)

    def key(self) -> Hashable:
        return ("compare", self.shas, repr(self.settings))

    def build(self, threads: int) -> tuple[Instrumented, Instrumented, list[Any]]:
        models = [m if isinstance(m, str) else onnx.load_from_string(m) for m in self.models]
        settings = dict(self.settings)
        settings["threads"] = settings["threads"] or threads  # on the worker's threads
        inst_a, inst_b, pairs, _, _ = _instruments(models[0], models[1], **settings)
        for inst, sha, model in zip((inst_a, inst_b), self.shas, self.models):
            if inst.sha256 != sha:
                raise InputError(
                    f"a worker reads another model at {model!r} than the client; every "
                    "worker needs the same file at the same path"
                )
        return inst_a, inst_b, pairs

    def count(
        self, context: tuple[Instrumented, Instrumented, list[Any]],
        data: Sequence[Mapping[str, Any]], start: int, labels: Any, shared: Any,
    ) -> _ComparePart:  # fmt: skip
        inst_a, inst_b, pairs = context
        stats = [_PairStats(a, b) for a, b, _ in pairs]
        accuracy_a, accuracy_b = accuracy_of(labels), accuracy_of(labels)
        outputs = _Outputs()
        adapt = None
        batches_b = None
        if self.own_b:
            batches_b = iter_batches(data[1], inst_b.specs, self.batch_size, self.fixed_b)
        else:
            adapt = input_adapter(
                data_specs(inst_a.specs, self.fixed_a), data_specs(inst_b.specs, self.fixed_b)
            )
        sums: list[list[tuple[float, ...]]] = []

        def consume(run_a: BatchRun) -> None:
            batch_b = _batch_b(run_a, adapt, batches_b, self.fixed_a, self.fixed_b)
            _step(inst_a, inst_b, run_a, batch_b, self.fixed_b, stats, accuracy_a, accuracy_b,
                  outputs)  # fmt: skip
            sums.append([tuple(getattr(s, f) for f in _SUMS) for s in stats])
            for s in stats:
                for f in _SUMS:
                    setattr(s, f, 0.0)

        n = 0
        for run in inst_a.stream(data[0], self.batch_size, consume, False, overlap=False,
                                 constants=self.fixed_a):  # fmt: skip
            n += run.samples
        correct = (0, 0) if accuracy_a is None or accuracy_b is None else (
            accuracy_a.correct, accuracy_b.correct)  # fmt: skip
        tables = [(Table.of(s.counter_a), Table.of(s.counter_b)) for s in stats]
        for s in stats:  # the states travel as tables
            s.counter_a, s.counter_b = new_counter(s.a), new_counter(s.b)
        return _ComparePart(start, stats, tables, sums, outputs.max_diff, outputs.agree,
                            correct, n)  # fmt: skip

    def merge(self, partials: Sequence[_ComparePart]) -> _ComparePart:
        parts = sorted(partials, key=lambda p: p.start)
        stats = []
        for i, first in enumerate(parts[0].stats):
            s = _PairStats(first.a, first.b)  # new objects: a task's inputs stay as they were
            for p in parts:
                _add_pair(s, p.stats[i])
            stats.append(s)
        tables = [
            (Table.merge([p.tables[i][0] for p in parts]),
             Table.merge([p.tables[i][1] for p in parts]))
            for i in range(len(stats))
        ]  # fmt: skip
        agree = [p.agree for p in parts]
        return _ComparePart(
            parts[0].start, stats, tables, [b for p in parts for b in p.sums],
            max(p.max_diff for p in parts), None if None in agree else sum(agree),  # type: ignore[arg-type]
            (sum(p.correct[0] for p in parts), sum(p.correct[1] for p in parts)),
            sum(p.n_samples for p in parts),
        )  # fmt: skip


def _add_pair(into: _PairStats, other: _PairStats) -> None:
    """Add *other*'s integer tallies and maximum to *into* (exact in any order)."""
    if into.refused is None and other.refused is not None:
        into.refused = other.refused  # (ranges are added in sample order: the first reason)
    into.states += other.states
    into.identical += other.identical
    into.hamming += other.hamming
    if other.neuron_agree is not None:
        into.neuron_agree = (
            other.neuron_agree.copy() if into.neuron_agree is None
            else into.neuron_agree + other.neuron_agree
        )  # fmt: skip
    into.max_abs = max(into.max_abs, other.max_abs)
    into.values += other.values


def _compare_on(
    cluster: Any,
    models: tuple[str | os.PathLike[str] | ModelProto, str | os.PathLike[str] | ModelProto],
    insts: tuple[Instrumented, Instrumented],
    stats: Sequence[_PairStats],
    accuracies: tuple[Accuracy | None, Accuracy | None],
    outputs: _Outputs,
    data: Any,
    data_b: Any,
    size: int,
    fixed_a: dict[str, np.ndarray],
    fixed_b: dict[str, np.ndarray],
    progress: bool | None,
    settings: dict[str, Any],
) -> int:
    """Fill *stats*, *accuracies* and *outputs* from ranges run on a Dask cluster; the
    sample count."""
    inputs, n = distributed.open_inputs(data, insts[0].specs, fixed_a)
    datasets = [inputs]
    if data_b is not None:
        inputs_b, n_b = distributed.open_inputs(data_b, insts[1].specs, fixed_b)
        if n_b != n:
            more = "more" if n_b > n else "fewer"
            raise InputError(f"data_b holds {more} samples than data; they must match")
        datasets.append(inputs_b)
    labels = None if accuracies[0] is None else accuracies[0].labels
    if labels is not None and len(labels) != n:
        raise InputError(f"got {len(labels)} labels for {n} samples; they must match")
    names = tuple(
        os.path.abspath(m) if isinstance(m, (str, os.PathLike)) else
        inst.original.SerializeToString() for m, inst in zip(models, insts)
    )  # fmt: skip
    work = _CompareRanges(
        (names[0], names[1]), (insts[0].sha256, insts[1].sha256),
        settings, size, fixed_a, fixed_b, data_b is not None,
    )  # fmt: skip
    with distributed.connect(cluster) as client:
        ran = distributed.run_ranges(client, work, datasets, n, size, labels=labels,
                                     progress=progress)  # fmt: skip
    part: _ComparePart = ran.merged
    for s, merged, (table_a, table_b) in zip(stats, part.stats, part.tables):
        _add_pair(s, merged)
        s.counter_a, s.counter_b = table_a.counter(), table_b.counter()
    for batch in part.sums:  # one process's order of additions, batch after batch
        for s, sums in zip(stats, batch):
            for f, value in zip(_SUMS, sums):
                setattr(s, f, getattr(s, f) + value)
    outputs.max_diff, outputs.agree = part.max_diff, part.agree
    for accuracy, correct in zip(accuracies, part.correct):
        if accuracy is not None:
            accuracy.correct, accuracy.seen = correct, part.n_samples
    return part.n_samples
