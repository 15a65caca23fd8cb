"""Plain result objects of an analysis: one LayerResult per captured tensor, one Analysis."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_state import metrics, store
from onnx_state.count.counter import ids_from_words, sort_states
from onnx_state.errors import InputError, LayerNotFoundError, MissingExtraError, did_you_mean

__all__ = ["SCHEMA_VERSION", "Analysis", "LayerResult", "RunRecord", "StateMetrics", "States"]

SCHEMA_VERSION = store.SCHEMA_VERSION
# LayerResult attributes the store keeps per layer, in its schema's order (version 1).
_LAYER_ATTRS = (
    "name", "tensor", "layer", "layer_type", "op_type", "kind", "neurons", "axis",
    "state_count", "nan_count",
)  # fmt: skip
_LAYER_ATTRS_V2 = ("captured", "axis_rule")  # added by schema version 2 ("" when absent)


def _extra(module: str) -> Any:
    """An optional package, or a MissingExtraError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"this needs {module}: pip install 'onnx-state[pandas]'") from exc


@dataclass(frozen=True)
class RunRecord:
    """How a result was produced: what a rerun must match for the same binary states.

    States can flip on values within 1e-7 of zero between onnxruntime versions, execution
    providers, thread counts and optimization levels, so results are only comparable
    with the same record. The store keeps it as the root attribute ``run`` (schema 2).
    """

    onnx_state: str
    onnx: str
    onnxruntime: str
    numpy: str
    python: str
    providers: list[str]  # the providers the session actually used, in order
    threads: int | None  # onnxruntime intra-op threads asked for; None: every core
    cpus: int  # the cores this process could use (what threads=None means)
    optimization: str
    batch_size: int | None  # samples per run (the first run's); None: no batch was run

    @classmethod
    def now(
        cls,
        providers: list[str],
        threads: int | None,
        optimization: str,
        batch_size: int | None,
    ) -> RunRecord:
        """The record of a run in this process with these session settings."""
        import platform

        import onnx
        import onnxruntime

        from onnx_state._version import __version__
        from onnx_state.count.engine import available_cpus

        return cls(
            onnx_state=__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
            numpy=np.__version__, python=platform.python_version(), providers=list(providers),
            threads=threads, cpus=available_cpus(), optimization=optimization,
            batch_size=batch_size,
        )  # fmt: skip

    @classmethod
    def of_session(cls, inst: Any, providers: Sequence[str] | None, threads: int | None,
                   optimization: str, batch_size: int | None) -> RunRecord:  # fmt: skip
        """The record of a run through *inst* (a ``capture.Instrumented``): the providers
        its session used (onnxruntime falls back to the CPU when a provider is missing)."""
        used = getattr(inst.session, "get_providers", None)  # (a stand-in session has none)
        actual = used() if used else list(providers or ["CPUExecutionProvider"])
        return cls.now(list(actual), threads, optimization, batch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``store.RUN_FIELDS``)."""
        return {**vars(self), "providers": list(self.providers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """A record from ``to_dict``'s output (checked by ``store.check_run`` first)."""
        return cls(**{k: d[k] for k in store.RUN_FIELDS})


class StateMetrics:
    """Metric methods for anything with ``counts()`` and ``neurons`` (results, live layers)."""

    if TYPE_CHECKING:

        @property
        def neurons(self) -> int: ...

    def counts(self) -> np.ndarray:
        """Occurrences of each observed state, in ``state_ids`` order."""
        raise NotImplementedError

    def _counts_any_order(self) -> np.ndarray:
        """The counts in whatever order is cheapest (order-free metrics use this)."""
        return self.counts()

    def entropy(self, alpha: float = 1) -> float:
        """Rényi entropy of the state distribution, in bits."""
        return metrics.entropy(self._counts_any_order(), alpha)

    def max_entropy(self) -> float:
        """One bit per neuron."""
        return float(self.neurons)

    def efficiency(self, alpha1: float = 1, alpha2: float | None = None) -> float:
        """entropy(alpha1) / (neurons, or entropy(alpha2))."""
        return metrics.efficiency(self._counts_any_order(), self.neurons, alpha1, alpha2)

    def miller_madow(self) -> float:
        """Miller–Madow bias-corrected Shannon entropy, in bits."""
        return metrics.miller_madow_entropy(self._counts_any_order())

    def chao_shen(self) -> float:
        """Chao–Shen coverage-adjusted Shannon entropy, in bits."""
        return metrics.chao_shen_entropy(self._counts_any_order())

    def entropy_interval(self, **kwargs: Any) -> metrics.EntropyInterval:
        """Bootstrap interval of Shannon entropy (see metrics.bootstrap_entropy)."""
        return metrics.bootstrap_entropy(self._counts_any_order(), **kwargs)


class States:
    """One layer's observed states and their counts, sorted by state when first needed.

    Built sorted (``States(ids, counts)``) or from a counter's table in any order
    (``States.deferred(words, counts, n_bytes)``); plain arrays, so results pickle.
    """

    def __init__(self, ids: np.ndarray | None, counts: np.ndarray) -> None:
        self._ids: np.ndarray | None = ids
        self._counts = counts
        self._words: np.ndarray | None = None
        self._n_bytes = 0
        self._by_value: np.ndarray | None = None

    @classmethod
    def deferred(cls, words: np.ndarray, counts: np.ndarray, n_bytes: int) -> States:
        """States as uint64 words [n, nwords] with counts, in no order; sorted on demand."""
        states = cls(None, counts)
        states._words, states._n_bytes = words, n_bytes
        return states

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint8 [n, n_bytes], counts int64 [n]) ascending by state."""
        if self._ids is None:
            assert self._words is not None  # deferred states keep their words until sorted
            words, counts = sort_states(self._words, self._counts)
            self._ids, self._counts = ids_from_words(words, self._n_bytes), counts
            self._words = None
        return self._ids, self._counts

    def counts_any_order(self) -> np.ndarray:
        """The counts ascending by value (what order-free metrics read), computed once."""
        if self._by_value is None:
            self._by_value = np.sort(self._counts)
        return self._by_value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, States):
            return NotImplemented
        (a, ca), (b, cb) = self.sorted(), other.sorted()
        return np.array_equal(a, b) and np.array_equal(ca, cb)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside


@dataclass
class LayerResult(StateMetrics):
    """States of one captured layer output and the metrics computed from them."""

    name: str
    tensor: str
    layer: str
    layer_type: str
    op_type: str
    kind: str
    neurons: int
    axis: int
    state_count: int
    nan_count: int
    states: States = field(repr=False)
    # (state row, class, count) triples [pairs, 3] in state_ids order, from an analysis with
    # labels; None otherwise. The per-class state sets of audit's Hamming novelty.
    class_counts: np.ndarray | None = field(default=None, repr=False, compare=False)
    captured: str = ""  # the tensor actually read, when it differs from ``tensor``
    axis_rule: str = ""  # the neuron-axis rule that chose ``axis``
    firing: np.ndarray | None = field(default=None, repr=False, compare=False)

    def firing_counts(self) -> np.ndarray:
        """int64 [neurons]: how often each neuron fired (sum over states of count x bit),
        computed once from the state table unless the store kept it."""
        if self.firing is None:
            ids, counts = self.states.sorted()
            self.firing = metrics.firing_counts(ids, counts, self.neurons)
        return self.firing

    def firing_rates(self) -> np.ndarray:
        """float [neurons]: the fraction of states in which each neuron fired."""
        return self.firing_counts() / max(self.state_count, 1)

    @property
    def ids(self) -> np.ndarray:
        """uint8 [n_unique, ceil(neurons / 8)], ascending by state."""
        return self.states.sorted()[0]

    @property
    def state_counts(self) -> np.ndarray:
        """int64 [n_unique], in ids order."""
        return self.states.sorted()[1]

    def _counts_any_order(self) -> np.ndarray:
        return self.states.counts_any_order()

    @property
    def n_unique(self) -> int:
        """Distinct states observed."""
        return len(self._counts_any_order())

    def counts(self) -> np.ndarray:
        """Occurrences of each observed state, in state_ids order."""
        return self.state_counts

    def state_ids(self) -> np.ndarray:
        """Observed packed states as uint8 rows, ascending by their integer value."""
        return self.ids

    def state_bytes(self) -> list[bytes]:
        """The rows of ``state_ids()`` as bytes (TensorState's form)."""
        return [r.tobytes() for r in self.ids]

    def to_pandas(self) -> Any:
        """The distinct states and their counts as a pandas DataFrame (ascending by state):
        ``state`` (the packed row as bytes, as ``state_bytes``) and ``count``; needs the
        ``pandas`` extra."""
        pd = _extra("pandas")
        return pd.DataFrame({"state": self.state_bytes(), "count": self.counts()})

    def to_arrow(self) -> Any:
        """The distinct states and their counts as a pyarrow Table: ``state``
        (fixed-size binary of ceil(neurons / 8) bytes) and ``count`` (int64); needs the
        ``pandas`` extra (which brings pyarrow)."""
        pa = _extra("pyarrow")
        ids = self.ids
        width = ids.shape[1] if ids.ndim == 2 else 0
        state = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(ids), [None, pa.py_buffer(np.ascontiguousarray(ids).tobytes())]
        )
        return pa.table({"state": state, "count": pa.array(self.counts(), type=pa.int64())})

    def summary(self) -> dict[str, Any]:
        """Attributes and headline metrics, JSON-ready (no state arrays)."""
        observed = self.state_count > 0
        return {
            "name": self.name,
            "tensor": self.tensor,
            "captured": self.captured,
            "axis_rule": self.axis_rule,
            "layer": self.layer,
            "layer_type": self.layer_type,
            "op_type": self.op_type,
            "kind": self.kind,
            "neurons": self.neurons,
            "axis": self.axis,
            "state_count": self.state_count,
            "n_unique": self.n_unique,
            "nan_count": self.nan_count,
            "entropy": self.entropy() if observed else None,
            "efficiency": self.efficiency() if observed else None,
            "entropy_miller_madow": self.miller_madow() if observed else None,
            "entropy_chao_shen": self.chao_shen() if observed else None,
            "firing_counts": self.firing_counts().tolist(),
        }


@dataclass
class Analysis:
    """Per-layer state-space results of one model on one data set."""

    layers: list[LayerResult]
    n_samples: int
    model_sha256: str
    data_fingerprint: str
    accuracy: float | None = None
    parity_max_abs_diff: float | None = None
    onnx_state_version: str = ""
    schema_version: int = SCHEMA_VERSION
    outputs: list[np.ndarray] | None = field(default=None, repr=False)
    run: RunRecord | None = None  # None: read from a version-1 store

    def layer(self, name: str) -> LayerResult:
        """The result called *name*: a capture name, or a layer name (its post states first)."""
        exact = [r for r in self.layers if r.name == name]
        by_layer = sorted(
            (r for r in self.layers if r.layer == name), key=lambda r: r.kind != "post"
        )
        if exact or by_layer:
            return (exact or by_layer)[0]  # a layer name means its output when both were captured
        raise LayerNotFoundError(
            f"no captured layer {name!r}." + did_you_mean(name, [r.name for r in self.layers])
        )

    def network_efficiency(self, alpha1: float = 1, alpha2: float | None = None) -> float:
        """Geometric mean of the efficiencies of the layers that observed states (a layer
        in an If branch that never ran is no part of the network that ran)."""
        ran = [r for r in self.layers if r.state_count]
        if not ran:
            raise InputError("no layer observed a state: network efficiency needs one")
        return metrics.network_efficiency(r.efficiency(alpha1, alpha2) for r in ran)

    def aiq(self, beta: float = 2) -> float:
        """aIQ = (network efficiency * accuracy**beta) ** (1 / (beta + 1)); needs labels."""
        if self.accuracy is None:
            raise InputError("aIQ needs the accuracy: run the analysis with labels")
        return metrics.aIQ(self.network_efficiency(), self.accuracy, beta)

    def to_dict(self) -> dict[str, Any]:
        """Summary for JSON: attributes, per-layer metrics, network metrics."""
        observed = any(r.state_count > 0 for r in self.layers)
        net = self.network_efficiency() if observed else None
        return {
            "schema": store.SCHEMA,
            "schema_version": self.schema_version,
            "layer_order": [r.name for r in self.layers],
            "onnx_state_version": self.onnx_state_version,
            "model_sha256": self.model_sha256,
            "data_fingerprint": self.data_fingerprint,
            "n_samples": self.n_samples,
            "accuracy": self.accuracy,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "run": None if self.run is None else self.run.to_dict(),
            "network_efficiency": net,
            "aiq_beta2": (
                metrics.aIQ(net, self.accuracy, 2)
                if net is not None and self.accuracy is not None
                else None
            ),
            "layers": [r.summary() for r in self.layers],
        }

    def save(
        self,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """Write the results store (a zarr group) atomically; see README 'Results store'.

        Parameters
        ----------
        path:
            The store's folder; it must not exist unless *overwrite* is true.
        overwrite:
            Replace an existing results store (never any other folder).
        checkpoint:
            Save these results as the checkpoint of an unfinished run (see
            ``analyze(checkpoint=...)``), not as a complete store.
        """
        attrs = {k: v for k, v in self.to_dict().items() if k != "layers"}
        names = (*_LAYER_ATTRS, *_LAYER_ATTRS_V2)
        layers = [
            store.StoredLayer(
                {k: getattr(r, k) for k in names},
                *r.states.sorted(),
                firing=r.firing_counts(),
                class_counts=r.class_counts,
            )
            for r in self.layers
        ]
        store.write_store(path, attrs, layers, overwrite=overwrite, checkpoint=checkpoint)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Analysis:
        """Read a results store written by ``save``; StoreError (one line naming the store,
        the layer and the attribute or array) unless every check of ``store.read_store``
        passes: schema, completeness, attribute types, array dtypes, shapes and consistency."""
        attrs, stored = store.read_store(path)
        layers = [
            LayerResult(
                **{k: s.attrs[k] for k in _LAYER_ATTRS},
                **{k: s.attrs.get(k, "") for k in _LAYER_ATTRS_V2},
                states=States(s.ids, s.counts),
                firing=s.firing,
                class_counts=s.class_counts,
            )
            for s in stored
        ]
        run = attrs.get("run")
        return cls(
            layers=layers,
            n_samples=attrs["n_samples"],
            model_sha256=attrs["model_sha256"],
            data_fingerprint=attrs["data_fingerprint"],
            accuracy=attrs.get("accuracy"),
            parity_max_abs_diff=attrs.get("parity_max_abs_diff"),
            onnx_state_version=attrs.get("onnx_state_version", ""),
            schema_version=attrs["schema_version"],
            run=None if run is None else RunRecord.from_dict(run),
        )

    def _repr_html_(self) -> str:
        from onnx_state.views import analysis_html

        return analysis_html(self)

    def to_pandas(self) -> Any:
        """One row per layer (the ``--json`` layer summary, less the firing counts) as a
        pandas DataFrame; needs the ``pandas`` extra."""
        pd = _extra("pandas")
        rows = [{k: v for k, v in r.summary().items() if k != "firing_counts"} for r in self.layers]
        return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)

    def network_notes(self) -> list[str]:
        """The network figures under the table: samples, network efficiency, accuracy, aIQ,
        parity (one line each; the CLI prints them, the HTML views show them)."""
        d = self.to_dict()
        notes = [f"samples: {self.n_samples}"]
        if d["network_efficiency"] is not None:
            notes.append(f"network efficiency: {100 * d['network_efficiency']:.2f}%")
        if self.accuracy is not None:
            notes.append(f"accuracy: {100 * self.accuracy:.2f}%")
            if d["aiq_beta2"] is not None:
                notes.append(f"aIQ (beta=2): {100 * d['aiq_beta2']:.2f}%")
        if self.parity_max_abs_diff is not None:
            diff = self.parity_max_abs_diff
            notes.append(f"parity (instrumented vs original, max |diff|): {diff:.3g}")
        return notes

    def table(self) -> str:
        """The per-layer table the CLI prints."""
        head = f"{'layer':28s} {'type':14s} {'neurons':>7s} {'states':>10s} {'unique':>8s}"
        head += f" {'entropy':>8s} {'efficiency':>10s}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            ent = f"{r.entropy():8.3f}" if r.state_count else f"{'-':>8s}"
            eff = f"{100 * r.efficiency():9.2f}%" if r.state_count else f"{'-':>10s}"
            lines.append(
                f"{r.name[:28]:28s} {r.layer_type[:14]:14s} {r.neurons:7d} {r.state_count:10d}"
                f" {r.n_unique:8d} {ent} {eff}"
            )
        lines.append("")
        lines.extend(self.network_notes())
        nans = sum(r.nan_count for r in self.layers)
        if nans:
            lines.append(f"warning: {nans} NaN activations were counted as not firing")
        return "\n".join(lines)
