"""analyze(): capture the chosen layers, stream the data through them, count their states."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnx_state import distributed, metrics, store
from onnx_state._version import __version__
from onnx_state.capture import BatchRun, Capture, Fingerprint, Instrumented, Method, Optimization
from onnx_state.capture.data import data_specs, resolve_batch_size
from onnx_state.capture.session import did_not_run, new_counter
from onnx_state.count import ParallelCounting, StateCounter
from onnx_state.distributed import Table
from onnx_state.errors import InputError, StoreError
from onnx_state.labels import accuracy_of, labels_array, predicted_classes
from onnx_state.outputs import check_output
from onnx_state.results import Analysis, LayerResult, RunRecord, States

__all__ = ["analyze", "layer_result"]


def analyze(
    model: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    labels: Any = None,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
    literal: bool = False,
    quantized: bool = False,
    pack: bool = False,
    batch_size: int | None = None,
    constants: Mapping[str, Any] | None = None,
    output_batch_axis: int | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: Optimization = "all",
    parity: bool = True,
    keep_outputs: bool = False,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cluster: Any = None,
) -> Analysis:
    """Analyse the state space of the chosen layers of *model* on *data*.

    Activations are counted batch by batch and dropped; memory grows with the distinct
    states only.

    Parameters
    ----------
    model:
        A .onnx path or a ModelProto.
    data:
        An array (one-input models), a dict of arrays (or of paths) by input name, a
        .npy/.npz/zarr path (an .npz file or zarr group with several arrays holds one per
        input), or an iterable of batches (arrays or dicts). Every input is batched along
        its first axis.
    labels:
        Class indices or one-hot rows (or a path to them), one per sample: enable accuracy
        and aIQ, and (on runs without checkpoints) each layer's per-class state counts
        (``LayerResult.class_counts``, kept in the store for audit's per-class novelty).
    attach_to:
        ONNX op types, framework layer types (case-insensitive) or layer, node and tensor
        names; None means Conv, ConvTranspose, Gemm and MatMul.
    exclude:
        Layer, node or tensor names to skip even when their type matches.
    method:
        Capture each layer's output (``after``), its data input (``before``), or both.
    neuron_axes:
        Neuron-axis overrides by layer or capture name.
    literal:
        Read each layer's tensor itself, not the output of a Relu-like activation that
        alone consumes it (same states; the default keeps onnxruntime's fusions).
    quantized:
        In a QDQ model, read each float tensor that only a QuantizeLinear consumes as that
        quantized tensor (fires iff > its zero point): the int8 values the deployed model computes.
    pack:
        Read float32 conv maps as their firing bits, packed inside the graph
        (``capture.pack``): exact, 13-32x fewer bytes to count; a batch in which a NaN
        reaches a packed layer is refused.
    batch_size:
        Samples per onnxruntime run; None takes the model's fixed batch dimension when it
        has one, else 200.
    constants:
        Inputs fed whole with every batch, by name (recurrent states, scalars, shared
        masks): arrays, paths, or Python numbers (which take the input's dtype).
    output_batch_axis:
        The axis of the final outputs that holds the samples, when the graph cannot tell
        (sequence-first outputs; see ``Instrumented.batch_first``).
    providers:
        onnxruntime execution providers; None means the CPU.
    threads:
        onnxruntime intra-op threads; None means every core. Counting threads follow
        (``count.engine.plan_threads``).
    optimization:
        onnxruntime's graph optimization level.
    parity:
        Run the first batch through the original model too and record the largest
        difference of the final outputs (extra outputs can stop fusions).
    keep_outputs:
        Keep the model's final outputs in ``Analysis.outputs``, samples first.
    progress:
        Show a progress bar; None shows one when stderr is a terminal.
    checkpoint:
        A results store path for checkpoints of this run (the CLI's ``--output``).
    checkpoint_every:
        Write the counters to *checkpoint* every this many batches (as an incomplete
        store), so that an interrupted run can be resumed.
    resume:
        Continue the run whose checkpoint is at *checkpoint*: its batches are read again
        only for the fingerprint (which must match), not run; the result equals an
        uninterrupted run's exactly.
    overwrite:
        With *checkpoint* (and no *resume*): replace an existing store there.
    cluster:
        Run on Dask (extra ``[dask]``): a ``distributed.Client``, a scheduler address, or a
        number of worker processes to start for the call. The result is identical; see
        ``onnx_state.distributed`` (no checkpoints, resume or kept outputs there).

    With *checkpoint*, the finished result is also saved there as a complete store.
    """
    if cluster is not None:
        return _analyze_on(
            cluster, model, data, labels=labels, attach_to=attach_to, exclude=exclude,
            method=method, neuron_axes=neuron_axes, literal=literal, quantized=quantized,
            pack=pack, batch_size=batch_size,
            constants=constants, output_batch_axis=output_batch_axis, providers=providers,
            threads=threads, optimization=optimization, parity=parity, progress=progress,
            checkpoint=checkpoint, overwrite=overwrite,
            refused={"checkpoint_every": checkpoint_every, "resume": resume,
                     "keep_outputs": keep_outputs},
        )  # fmt: skip
    if (checkpoint_every is not None or resume) and checkpoint is None:
        raise InputError("checkpoints need a store path: give checkpoint= (CLI: --output)")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    if checkpoint is not None and not resume:  # before the run, not after it
        check_output(checkpoint, overwrite=overwrite, kind="store", is_ours=store.is_store)
    inst = Instrumented(
        model, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=literal, quantized=quantized, providers=providers, threads=threads,
        optimization=optimization,
        output_batch_axis=output_batch_axis, pack=pack,
    )  # fmt: skip
    counters = {(c.key, c.axis): new_counter(c) for c in inst.captures}
    accuracy = accuracy_of(labels)
    fixed = inst.constants(constants)
    digest = Fingerprint(fixed)
    sha = inst.sha256
    inst.parity_first = parity and not resume
    n_samples = done = 0
    outputs: list[list[np.ndarray]] = []
    parity_diff = None
    state: dict[str, Any] = {}
    if resume:
        assert checkpoint is not None
        state = _resume(checkpoint, inst, sha, counters)
        given = None if accuracy is None else len(accuracy.labels)
        if state.get("labels") != given or state.get("with_parity") != parity:
            raise InputError(
                f"the checkpoint {checkpoint} was written with labels={state.get('labels')} "
                f"and parity={state.get('with_parity')}, this run has labels={given} and "
                f"parity={parity}; resume with the same options"
            )
        algorithm = str(state.get("fingerprint", "")).partition(":")[0]
        if algorithm != Fingerprint.ALGORITHM:
            raise InputError(
                f"the checkpoint {checkpoint} fingerprints its data with {algorithm!r}, this "
                f"onnx_state with {Fingerprint.ALGORITHM!r}, so it cannot check that the data "
                "is the same; run again without resume"
            )
        done, n_samples, parity_diff = state["batches"], state["n_samples"], state["parity"]
        if accuracy is not None:
            accuracy.correct, accuracy.seen = state["correct"], state["seen"]
    skipped: list[int] = []
    # Per-class state sets (audit's Hamming novelty): with labels, on runs that are not
    # checkpointed (a checkpoint does not keep them, so a resumed run could not finish them).
    # Packed captures (pack=True) keep no per-class sets: their bytes are counted as a whole.
    by_class: dict[tuple[str, int], dict[int, StateCounter]] | None = (
        {(c.key, c.axis): {} for c in inst.captures if not c.packed}
        if accuracy is not None and checkpoint_every is None and not resume
        else None
    )
    size = 0  # samples per run, from the first run

    def rehash(batch: dict[str, np.ndarray]) -> None:
        digest.update(batch)
        skipped.append(1)
        if len(skipped) == done and digest.hexdigest() != state["fingerprint"]:
            raise InputError(
                f"the data differs from the run whose checkpoint is {checkpoint}: its first "
                f"{done} batches do not match; resume with the same data and batch size"
            )

    labelled = [0]  # samples whose labels went to by_class (consume runs in order)

    with ParallelCounting(counters, inst.plan.counting_threads, digest) as counting:

        def consume(r: BatchRun) -> None:
            counting(r.batch, r.captured)
            if by_class is not None and accuracy is not None:
                # the class scores first, so that a model without them fails as accuracy does
                predicted_classes(inst.class_scores(r))
                truth = accuracy.labels[labelled[0] : labelled[0] + r.samples]
                labelled[0] += r.samples
                _count_by_class(inst, r, truth, by_class)

        runs = inst.stream(
            data, batch_size, consume, progress,
            overlap=False if checkpoint_every else None, constants=fixed, skip=done,
            on_skip=rehash,
        )  # fmt: skip
        for run in runs:
            size = size or run.samples
            if parity and parity_diff is None:
                parity_diff = inst.parity(run.batch, run.outputs)
            if accuracy is not None:
                accuracy.update(inst.class_scores(run), run.samples)
            if keep_outputs:
                outputs.append(_kept(inst, run))
            n_samples += run.samples
            done += 1
            if checkpoint_every and done % checkpoint_every == 0:
                assert checkpoint is not None
                counting.flush()  # (inline counting: batch *done* is counted already)
                partial = Analysis(
                    layers=[layer_result(c, counters[(c.key, c.axis)]) for c in inst.captures],
                    n_samples=n_samples, model_sha256=sha, data_fingerprint=digest.hexdigest(),
                    parity_max_abs_diff=parity_diff, onnx_state_version=__version__,
                    run=RunRecord.of_session(inst, providers, threads, optimization, size),
                )  # fmt: skip
                partial.save(checkpoint, overwrite=True, checkpoint={
                    "batches": done, "n_samples": n_samples, "parity": parity_diff,
                    "with_parity": parity, "labels": None if accuracy is None else len(
                        accuracy.labels),
                    "correct": 0 if accuracy is None else accuracy.correct,
                    "seen": 0 if accuracy is None else accuracy.seen,
                    "fingerprint": digest.hexdigest(),
                })  # fmt: skip
    top1 = None if accuracy is None else accuracy.result(n_samples)
    layers = _release_into_results(inst.captures, counters)
    if by_class is not None:
        for c, r in zip(inst.captures, layers):
            per = by_class.get((c.key, c.axis))
            if per is None:
                continue
            r.class_counts = metrics.class_table(
                r.state_ids(), {k: (v.state_ids(), v.counts()) for k, v in per.items()}
            )
    nans = sum(r.nan_count for r in layers)
    if nans:
        warnings.warn(
            f"{nans} NaN activations were counted as not firing", RuntimeWarning, stacklevel=2
        )
    result = Analysis(
        layers=layers,
        n_samples=n_samples,
        model_sha256=sha,
        data_fingerprint=digest.hexdigest(),
        accuracy=top1,
        parity_max_abs_diff=parity_diff,
        onnx_state_version=__version__,
        outputs=[np.concatenate(parts) for parts in zip(*outputs)] if keep_outputs else None,
        run=RunRecord.of_session(inst, providers, threads, optimization, size or None),
    )
    if checkpoint is not None:  # the finished run replaces its checkpoints
        result.save(checkpoint, overwrite=True)
    return result


def _resume(
    path: str | os.PathLike[str],
    inst: Instrumented,
    sha: str,
    counters: dict[tuple[str, int], StateCounter],
) -> dict[str, Any]:
    """Load the checkpoint at *path* into *counters*; return its run state."""
    attrs, stored = store.read_store(path, checkpoint=True)
    if attrs["model_sha256"] != sha:
        raise InputError(f"the checkpoint {path} is of another model; resume with the same one")
    names = [c.name for c in inst.captures]
    if [s.attrs["name"] for s in stored] != names:
        raise InputError(
            f"the checkpoint {path} holds layers {[s.attrs['name'] for s in stored]}, this run "
            f"captures {names}; resume with the same selection"
        )
    for c, s in zip(inst.captures, stored):
        key = (c.key, c.axis)
        if counters[key].neurons == 0:  # one counter per tensor and axis, filled once
            zp = c.zero_point
            counters[key] = StateCounter.from_states(
                s.ids, s.counts, s.attrs["neurons"], s.attrs["nan_count"],
                zero_point=np.array(zp, np.int64) if isinstance(zp, tuple) else zp,
            )  # fmt: skip
    state = dict(attrs["checkpoint"])
    for field in ("batches", "n_samples", "correct", "seen"):
        if not isinstance(state.get(field), int) or state[field] < 0:
            raise StoreError(f"{path}: checkpoint {field} is {state.get(field)!r}; not resumable")
    return state


def _count_by_class(
    inst: Instrumented,
    run: BatchRun,
    truth: np.ndarray,
    by_class: dict[tuple[str, int], dict[int, StateCounter]],
) -> None:
    """Count each capture's states of this batch once more, split by the samples' labels."""
    classes = np.unique(truth)
    captures = {(c.key, c.axis): c for c in inst.captures}
    for (key, axis), per in by_class.items():
        x = run.captured[key]
        if did_not_run(x):  # no state in any class
            continue
        batch_axis = inst.batch_axis(key, x, run.samples)
        for c in classes:
            chosen = np.take(x, np.flatnonzero(truth == c), axis=batch_axis)
            per.setdefault(int(c), new_counter(captures[(key, axis)])).update(chosen, axis=axis)


def _kept(inst: Instrumented, run: BatchRun) -> list[np.ndarray]:
    """A run's final outputs, samples first; one without a sample axis stays as it is."""
    kept = []
    for name, out in zip(inst.output_names, run.outputs):
        try:
            kept.append(inst.batch_first(name, out, run.samples))
        except InputError:
            warnings.warn(
                f"output {name!r} (shape {out.shape}) has no axis of the batch's "
                f"{run.samples} samples; Analysis.outputs joins it along axis 0",
                RuntimeWarning,
                stacklevel=3,
            )
            kept.append(out)
    return kept


def layer_result(capture: Capture, counter: StateCounter) -> LayerResult:
    """The result of one capture; states are sorted only when first asked for."""
    return LayerResult(
        name=capture.name,
        tensor=capture.tensor,
        layer=capture.layer,
        layer_type=capture.layer_type,
        op_type=capture.op_type,
        kind=capture.kind,
        neurons=counter.neurons,
        axis=capture.axis,
        state_count=counter.state_count,
        nan_count=counter.nan_count,
        states=States.deferred(*counter.table_words(), counter.n_bytes),
        captured=capture.source if capture.source != capture.tensor else "",
        axis_rule=capture.axis_rule,
    )


def _release_into_results(
    captures: Sequence[Capture], counters: dict[tuple[str, int], StateCounter]
) -> list[LayerResult]:
    """``layer_result`` of each capture, removing each counter from *counters* once its last
    capture has its snapshot: a snapshot is compact and a hash table is not (slots at most
    half full, rows grown by doubling), so holding every table and every snapshot at once
    would set the run's peak memory. (ResNet-50-style, 53 layers: 23 MB less at the end.)"""
    last = {(c.key, c.axis): i for i, c in enumerate(captures)}
    layers = []
    for i, c in enumerate(captures):
        key = (c.key, c.axis)
        layers.append(layer_result(c, counters[key]))
        if last[key] == i:
            del counters[key]
    return layers


# -- on a Dask cluster (onnx_state.distributed) --------------------------------------------
@dataclass
class _AnalyzePart:
    """One range's (or several merged ranges') counters and tallies."""

    start: int
    tables: dict[tuple[str, int], Table]
    n_samples: int
    correct: int
    seen: int
    parity: float | None
    fingerprint: Fingerprint  # of the range's inputs (merged: of all of them)


@dataclass(frozen=True)
class _AnalyzeRanges:
    """analyze's work on one range of samples (see ``distributed.RangeWork``)."""

    model: str | bytes  # a path every worker reads, or a serialized ModelProto
    sha: str
    selection: tuple[Any, ...]  # attach_to, exclude, method, neuron_axes
    session: tuple[Any, ...]  # providers, threads, optimization
    output_batch_axis: int | None
    batch_size: int
    constants: dict[str, np.ndarray]
    parity: bool

    def key(self) -> Hashable:
        return ("analyze", self.sha, repr(self.selection), repr(self.session),
                self.output_batch_axis)  # fmt: skip

    def build(self, threads: int) -> tuple[Instrumented, int]:
        return instrument_on_worker(self.model, self.sha, self.selection, self.session,
                                     self.output_batch_axis, threads)  # fmt: skip

    def count(
        self, context: tuple[Instrumented, int], data: Sequence[Mapping[str, Any]],
        start: int, labels: Any, shared: Any,
    ) -> _AnalyzePart:  # fmt: skip
        inst = context[0]
        counters = {(c.key, c.axis): new_counter(c) for c in inst.captures}
        accuracy = accuracy_of(labels)
        digest = Fingerprint(self.constants, start)  # hashed as read: no second pass
        part = _AnalyzePart(start, {}, 0, 0, 0, None, digest)
        # The thread plan of the worker's session, as in one process (but on at most the
        # worker's threads): counting overlaps the next run on a spare core (onnxruntime on
        # one thread has no section to preempt).
        with ParallelCounting(counters, inst.plan.counting_threads, digest) as counting:
            for run in inst.stream(
                data[0], self.batch_size, lambda r: counting(r.batch, r.captured), False,
                constants=self.constants,
            ):  # fmt: skip
                if self.parity and start == 0 and part.parity is None:
                    # both models on the first batch's head, as parity_first runs it in
                    # one process (this cached session may have run before)
                    part.parity = inst.parity(inst._parity_batch(run.batch))
                if accuracy is not None:
                    accuracy.update(inst.class_scores(run), run.samples)
                part.n_samples += run.samples
        if accuracy is not None:
            part.correct, part.seen = accuracy.correct, accuracy.seen
        part.tables = {key: Table.of(counter) for key, counter in counters.items()}
        return part

    def merge(self, partials: Sequence[_AnalyzePart]) -> _AnalyzePart:
        first = min(partials, key=lambda p: p.start)
        tables = {key: Table.merge([p.tables[key] for p in partials]) for key in first.tables}
        parity = next((p.parity for p in partials if p.parity is not None), None)
        return _AnalyzePart(
            first.start, tables, sum(p.n_samples for p in partials),
            sum(p.correct for p in partials), sum(p.seen for p in partials), parity,
            Fingerprint.merge([p.fingerprint for p in partials]),
        )  # fmt: skip


def instrument_on_worker(
    model: str | bytes,
    sha: str,
    selection: tuple[Any, ...],
    session: tuple[Any, ...],
    output_batch_axis: int | None,
    threads: int,
) -> tuple[Instrumented, int]:
    """The Instrumented model of a worker: onnxruntime on the worker's *threads* unless
    the call fixed them, counting on at most as many (the machine's other cores run other
    workers); the model must be the one the client read."""
    attach_to, exclude, method, neuron_axes, literal, quantized, pack = selection
    providers, fixed_threads, optimization = session
    source: str | ModelProto = model if isinstance(model, str) else onnx.load_from_string(model)
    inst = Instrumented(
        source, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=literal, quantized=quantized, providers=providers,
        threads=fixed_threads or threads, optimization=optimization,
        output_batch_axis=output_batch_axis, pack=pack, counting_threads=threads,
    )  # fmt: skip
    if inst.sha256 != sha:
        raise InputError(
            f"a worker reads another model at {model!r} than the client; every worker needs "
            "the same file at the same path"
        )
    return inst, fixed_threads or threads


def _table_result(capture: Capture, table: Table) -> LayerResult:
    """The result of one capture from its merged (sorted) table."""
    return LayerResult(
        name=capture.name, tensor=capture.tensor, layer=capture.layer,
        layer_type=capture.layer_type, op_type=capture.op_type, kind=capture.kind,
        neurons=table.neurons, axis=capture.axis, state_count=int(table.counts.sum()),
        nan_count=table.nan_count, states=States(table.ids, table.counts),
        captured=capture.source if capture.source != capture.tensor else "",
        axis_rule=capture.axis_rule,
    )  # fmt: skip


def _analyze_on(
    cluster: Any,
    model: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    refused: Mapping[str, Any],
    labels: Any,
    attach_to: Sequence[str] | str | None,
    exclude: Sequence[str] | str,
    method: Method,
    neuron_axes: Mapping[str, int] | None,
    literal: bool,
    quantized: bool,
    pack: bool,
    batch_size: int | None,
    constants: Mapping[str, Any] | None,
    output_batch_axis: int | None,
    providers: Sequence[str] | None,
    threads: int | None,
    optimization: Optimization,
    parity: bool,
    progress: bool | None,
    checkpoint: str | os.PathLike[str] | None,
    overwrite: bool,
) -> Analysis:
    """analyze() on a Dask cluster: the same result, from ranges run on the workers."""
    given = [name for name, value in refused.items() if value]
    if given:
        raise InputError(
            f"{', '.join(given)} cannot be used with cluster= (a cluster recomputes the "
            "ranges of a lost worker instead); drop one or the other"
        )
    if checkpoint is not None:  # before the run, not after it
        check_output(checkpoint, overwrite=overwrite, kind="store", is_ours=store.is_store)
    inst = Instrumented(
        model, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=literal, quantized=quantized, providers=providers, threads=1,
        optimization=optimization, output_batch_axis=output_batch_axis, pack=pack,
    )  # fmt: skip
    fixed = inst.constants(constants)
    inputs, n = distributed.open_inputs(data, inst.specs, fixed)
    size = resolve_batch_size(batch_size, data_specs(inst.specs, fixed), n)
    y = None if labels is None else labels_array(labels)
    if y is not None and len(y) != n:
        raise InputError(f"got {len(y)} labels for {n} samples; they must match")
    sha = inst.sha256
    work = _AnalyzeRanges(
        os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else
        inst.original.SerializeToString(), sha,
        (attach_to, exclude, method, None if neuron_axes is None else dict(neuron_axes),
         literal, quantized, pack),
        (None if providers is None else list(providers), threads, optimization),
        output_batch_axis, size, fixed, parity,
    )  # fmt: skip
    with distributed.connect(cluster) as client:
        ran = distributed.run_ranges(
            client, work, [inputs], n, size, labels=y, progress=progress
        )  # fmt: skip
    part: _AnalyzePart = ran.merged
    layers = [_table_result(c, part.tables[(c.key, c.axis)]) for c in inst.captures]
    nans = sum(r.nan_count for r in layers)
    if nans:
        warnings.warn(
            f"{nans} NaN activations were counted as not firing", RuntimeWarning, stacklevel=3
        )
    result = Analysis(
        layers=layers,
        n_samples=part.n_samples,
        model_sha256=sha,
        data_fingerprint=part.fingerprint.hexdigest(),
        accuracy=None if y is None else part.correct / part.n_samples,
        parity_max_abs_diff=part.parity,
        onnx_state_version=__version__,
        # the workers' settings (the client builds no session to ask which providers ran)
        run=RunRecord.now(list(providers or ["CPUExecutionProvider"]), threads, optimization, size),
    )
    if checkpoint is not None:
        result.save(checkpoint, overwrite=overwrite)
    return result
