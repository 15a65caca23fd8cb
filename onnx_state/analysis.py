"""analyze(): capture the chosen layers, stream the data through them, count their states."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from onnx import ModelProto

from onnx_state import metrics, store
from onnx_state._version import __version__
from onnx_state.capture import BatchRun, Capture, Fingerprint, Instrumented, Method, Optimization
from onnx_state.capture.session import new_counter
from onnx_state.count import ParallelCounting, StateCounter
from onnx_state.errors import InputError, StoreError
from onnx_state.labels import accuracy_of, predicted_classes
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

    With *checkpoint*, the finished result is also saved there as a complete store.
    """
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
    layers = [layer_result(c, counters[(c.key, c.axis)]) for c in inst.captures]
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
