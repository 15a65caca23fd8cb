"""analyze(): rewrite the graph, stream batches through onnxruntime, count states per layer."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnx_state import graph, runtime
from onnx_state.counter import StateCounter
from onnx_state.errors import InputError, ModelError, first_line
from onnx_state.fanout import LayerCounting
from onnx_state.results import Analysis, LayerResult, States

__all__ = ["Instrumented", "analyze", "counting_plan", "instrument"]


class Instrumented:
    """A model rewritten to expose the captured tensors, with its onnxruntime session."""

    def __init__(
        self,
        model: str | os.PathLike | ModelProto,
        attach_to: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str = (),
        method: str = "after",
        neuron_axes: Mapping[str, int] | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
    ) -> None:
        path = None if isinstance(model, ModelProto) else Path(model)
        self.original = graph.load_model(model, max_bytes=runtime.LARGE_MODEL_BYTES)
        self.model_dir = path.parent if path is not None else None
        self.captures = graph.select_captures(
            self.original, attach_to, exclude, method, neuron_axes
        )
        self.model = graph.add_outputs(self.original, self.captures)
        self.specs = runtime.input_specs(self.original)
        self.output_names = [o.name for o in self.original.graph.output]
        self._session_args = (providers, threads, optimization, self.model_dir)
        self.session = runtime.make_session(self.model, *self._session_args)
        self.tensors = list(dict.fromkeys(c.tensor for c in self.captures))
        self.overlap, self.count_workers = counting_plan(providers, threads)

    def run(
        self, batch: Mapping[str, np.ndarray]
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """(final outputs, captured tensors by name) for one batch."""
        try:
            values = self.session.run(self.output_names + self.tensors, dict(batch))
        except Exception as exc:  # onnxruntime raises its own classes, one per status code
            raise ModelError(f"onnxruntime failed on a batch: {first_line(exc)}") from exc
        k = len(self.output_names)
        captured = dict(zip(self.output_names + self.tensors, values))
        return values[:k], {t: captured[t] for t in self.tensors}

    def new_counters(self) -> dict[tuple[str, int], StateCounter]:
        """One empty counter per distinct (tensor, neuron axis) captured."""
        return {(c.tensor, c.axis): StateCounter() for c in self.captures}

    def stream(
        self,
        data: Any,
        batch_size: int,
        consume: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None],
        progress: bool | None = None,
    ) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
        """Run every batch, call consume(batch, captured tensors), yield (batch, outputs).

        With ``self.overlap``, *consume* runs on a worker thread while the next batch runs
        (at most two batches of activations alive); otherwise it runs right after each batch,
        when onnxruntime has handed every core back (see counting_plan).
        """
        data = runtime.open_data(data)  # once, for both the count and the batches
        total = runtime.batch_count(data, self.specs, batch_size)
        batches = runtime.iter_batches(data, self.specs, batch_size)
        with _progress(total, progress) as bar:
            if not self.overlap:
                for batch in batches:
                    finals, captured = self.run(batch)
                    consume(batch, captured)
                    del captured  # onnxruntime can reuse these buffers for the next batch
                    yield batch, finals
                    bar.update(1)
                return
            pending: Future | None = None
            with ThreadPoolExecutor(1) as pool:
                for batch in batches:
                    finals, captured = self.run(batch)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(consume, batch, captured)
                    yield batch, finals
                    bar.update(1)
                if pending is not None:
                    pending.result()

    def parity(
        self, batch: Mapping[str, np.ndarray], finals: Sequence[np.ndarray] | None = None
    ) -> float:
        """Max |difference| between the final outputs of the original and instrumented model.

        Extra outputs can stop onnxruntime from fusing nodes, which may change the numbers.
        *finals* are the instrumented model's outputs for *batch* when already computed.
        """
        plain = runtime.make_session(self.original, *self._session_args)
        a = plain.run(self.output_names, dict(batch))
        b = finals if finals is not None else self.session.run(self.output_names, dict(batch))
        diffs = [
            float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            for x, y in zip(a, b)
        ]
        return max(diffs, default=0.0)


MAX_COUNTING_THREADS = 16


def counting_plan(providers: Sequence[str] | None, threads: int | None) -> tuple[bool, int]:
    """(overlap, counting threads) for a session on *providers* with *threads* intra-op threads.

    When onnxruntime computes on every core, counting beside it only preempts its threads
    (a parallel section waits for its slowest thread), so batches are counted between runs
    on all cores. When cores are left over, or the model runs on an accelerator, counting
    overlaps the next batch on the spare cores.
    """
    cpus = _available_cpus()
    on_cpu = not providers or providers[0] == "CPUExecutionProvider"
    busy = min(threads or cpus, cpus) if on_cpu else 1
    spare = cpus - busy
    # Past ~16 threads the per-batch pieces are too small to share, and every thread keeps
    # a shard (up to 8 MiB) per narrow layer.
    if spare >= 1:
        return True, min(spare, MAX_COUNTING_THREADS)
    return False, min(busy, MAX_COUNTING_THREADS)


def _available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2, or a format we do not know
        pass
    return cpus


def _progress(total: int | None, enabled: bool | None):
    """A tqdm bar, or a stand-in when disabled (tqdm takes 5 ms to import)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="batch", leave=False)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def labels_array(labels: Any) -> np.ndarray:
    """Class indices from indices (N,) or (N, 1), or one-hot / score rows (N, K)."""
    if isinstance(labels, (str, os.PathLike)):
        labels = runtime.load_array(labels)
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # a column of indices, e.g. Keras CIFAR labels
        y = y[:, 0]
    elif y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise InputError(f"labels must be class indices or one-hot rows, got shape {y.shape}")
    return y


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """argmax over the class axis of (N, K) scores (trailing axes of size 1 are ignored)."""
    n = len(outputs)
    axes = [d for d in outputs.shape[1:] if d != 1]
    if len(axes) != 1 or axes[0] < 2:
        raise InputError(
            f"accuracy needs class scores of shape (N, K) with K >= 2 as the first model "
            f"output, got {outputs.shape}; drop the labels for this model"
        )
    return np.argmax(outputs.reshape(n, -1), axis=1)


def count_correct(outputs: np.ndarray, y: np.ndarray, start: int) -> int:
    """Correct top-1 predictions of one batch whose first sample is sample *start*."""
    n = len(outputs)
    if start + n > len(y):
        raise InputError(f"got {len(y)} labels but the data holds more samples")
    return int(np.sum(predicted_classes(outputs) == y[start : start + n]))


def analyze(
    model: str | os.PathLike | ModelProto,
    data: Any,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: str = "after",
    batch_size: int = 200,
    labels: Any = None,
    *,
    neuron_axes: Mapping[str, int] | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: str = "all",
    parity: bool = True,
    keep_outputs: bool = False,
    progress: bool | None = None,
) -> Analysis:
    """Analyse the state space of the chosen layers of *model* on *data*.

    *attach_to* defaults to Conv, ConvTranspose, Gemm and MatMul. *data* is an array, a dict
    of arrays, a .npy/.npz/zarr path, or an iterable of batches; *labels* (class indices or
    one-hot) enable accuracy and aIQ. Activations are counted batch by batch and dropped.
    """
    from onnx_state import __version__

    inst = Instrumented(
        model, attach_to, exclude, method, neuron_axes, providers, threads, optimization
    )
    counters = inst.new_counters()
    y = None if labels is None else labels_array(labels)
    digest = runtime.Fingerprint()
    n_samples = 0
    correct = 0
    outputs: list[list[np.ndarray]] = []
    parity_diff = None
    with LayerCounting(counters, inst.count_workers, digest) as counting:
        for batch, finals in inst.stream(data, batch_size, counting, progress):
            if parity and parity_diff is None:
                parity_diff = inst.parity(batch, finals)
            n = len(next(iter(batch.values())))
            if y is not None:
                correct += count_correct(finals[0], y, n_samples)
            if keep_outputs:
                outputs.append(finals)
            n_samples += n
        counting.finish()
    if y is not None and len(y) != n_samples:
        raise InputError(f"got {len(y)} labels for {n_samples} samples; they must match")
    layers = [layer_result(c, counters[(c.tensor, c.axis)]) for c in inst.captures]
    nans = sum(r.nan_count for r in layers)
    if nans:
        warnings.warn(
            f"{nans} NaN activations were counted as not firing", RuntimeWarning, stacklevel=2
        )
    return Analysis(
        layers=layers,
        n_samples=n_samples,
        model_sha256=graph.model_sha256(inst.original),
        data_fingerprint=digest.hexdigest(),
        accuracy=None if y is None else correct / n_samples,
        parity_max_abs_diff=parity_diff,
        onnx_state_version=__version__,
        outputs=[np.concatenate(parts) for parts in zip(*outputs)] if keep_outputs else None,
    )


def layer_result(capture: graph.Capture, counter: StateCounter) -> LayerResult:
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
    )


def instrument(
    model: str | os.PathLike | ModelProto,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: str = "after",
    neuron_axes: Mapping[str, int] | None = None,
) -> ModelProto:
    """The rewritten model alone: *model* with the captured tensors as extra outputs."""
    proto = graph.load_model(model)
    captures = graph.select_captures(proto, attach_to, exclude, method, neuron_axes)
    return graph.add_outputs(proto, captures)
