"""The instrumented model and its onnxruntime session, and the one run loop every command uses."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import ModelProto

from onnx_state.capture import load
from onnx_state.capture.axes import RECURRENT_OPS
from onnx_state.capture.data import (
    InputSpec,
    batch_count,
    batch_samples,
    check_constants,
    check_inputs,
    data_length,
    data_specs,
    input_specs,
    iter_batches,
    open_data,
    resolve_batch_size,
)
from onnx_state.capture.index import GraphIndex
from onnx_state.capture.qdq import converted, converts_int8, run_as_uint8, uint8_captures
from onnx_state.capture.rewrite import add_outputs, expose_nested
from onnx_state.capture.select import Capture, Method, select_captures
from onnx_state.capture.weights import (
    DetachedWeights,
    can_detach,
    detach_weights,
    memory_files_supported,
)
from onnx_state.count.counter import StateCounter
from onnx_state.count.engine import ThreadPlan, plan_threads
from onnx_state.errors import InputError, ModelError, one_line
from onnx_state.outputs import progress_bar

__all__ = [
    "OPTIMIZATION_LEVELS",
    "BatchRun",
    "Instrumented",
    "Optimization",
    "did_not_run",
    "fires",
    "instrument",
    "make_session",
    "new_counter",
]

Optimization = Literal["disable", "basic", "extended", "all"]
# onnxruntime's session config key: the folder external data of a model given as bytes is in
_EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
PARITY_SAMPLES = 4  # samples of the first batch that the parity check runs twice
OPTIMIZATION_LEVELS: tuple[Optimization, ...] = ("disable", "basic", "extended", "all")


def make_session(
    model: ModelProto | str,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: Optimization = "all",
    model_dir: str | os.PathLike[str] | None = None,
    config: Mapping[str, str] | None = None,
    weights: DetachedWeights | None = None,
) -> Any:
    """An onnxruntime InferenceSession for *model*.

    Parameters
    ----------
    model:
        The model to run, or the path of a model file that ``load.load_model`` checked
        (onnxruntime then reads it, and its external data, itself: nothing is serialized).
    providers:
        onnxruntime execution providers in order of preference; None means the CPU.
    threads:
        onnxruntime intra-op threads; None lets onnxruntime use every core.
    optimization:
        onnxruntime's graph optimization level.
    model_dir:
        The folder that the model's external-data references resolve from. onnxruntime is
        told it where it can be (1.21 and later: nothing is written there); otherwise, and
        for a model too large for one protobuf, the model is written there as a temporary
        file, loaded from it, and the file is removed.
    config:
        Session config entries (``ThreadPlan.session_config()``).
    weights:
        The tensors ``capture.weights.detach_weights`` took out of *model*, handed to
        onnxruntime from memory.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # errors reach the user as one line, not a log dump
    if optimization not in OPTIMIZATION_LEVELS:
        raise InputError(
            f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
    options.log_severity_level = 4  # fatal only: the raised error carries the message
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    available = ort.get_available_providers()
    providers = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in available]
    if missing:
        raise InputError(
            f"execution provider(s) {', '.join(missing)} not available; this onnxruntime has "
            f"{', '.join(available)} (install onnxruntime-gpu for CUDA)"
        )
    try:
        if isinstance(model, str):
            return ort.InferenceSession(model, options, providers=providers)
        folder = Path(model_dir or ".")
        in_memory = set()
        if weights is not None and weights.names:
            options.add_external_initializers_from_files_in_memory(*weights.files())
            in_memory = set(weights.names)
        on_disk = any(
            load.external_location(t) not in in_memory
            for t in load.all_initializers(model) if load.is_external(t)
        )  # fmt: skip
        if in_memory and on_disk:  # onnxruntime would look those up in the table too
            raise ModelError("detached weights cannot go with files on disk (see can_detach)")
        if model.ByteSize() < load.LARGE_MODEL_BYTES and (not on_disk or _folder_option(ort)):
            if on_disk:  # resolved from the folder, as for a file there (nothing written)
                options.add_session_config_entry(_EXTERNAL_FOLDER, str(folder))
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder, prefix=".onnx_state-")
        os.close(fd)
        try:
            onnx.save(model, tmp)
            return ort.InferenceSession(tmp, options, providers=providers)
        finally:
            os.unlink(tmp)
    except Exception as exc:
        if isinstance(exc, InputError):
            raise
        raise ModelError(f"onnxruntime cannot load the model: {one_line(exc)}") from exc


def _folder_option(ort: Any) -> bool:
    """Whether this onnxruntime reads ``_EXTERNAL_FOLDER`` (1.21 and later)."""
    try:
        major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    except ValueError:  # a development build: assume a current one
        return True
    return (major, minor) >= (1, 21)


def new_counter(capture: Capture, **kwargs: Any) -> StateCounter:
    """An empty StateCounter for *capture*: integer tensors fire iff > their zero point,
    packed captures are counted from their bytes."""
    if capture.packed:
        assert capture.shape is not None
        return StateCounter(int(capture.shape[capture.axis] or 0), packed=True, **kwargs)
    zero_point = capture.zero_point
    if isinstance(zero_point, tuple):
        return StateCounter(zero_point=np.array(zero_point, dtype=np.int64), **kwargs)
    return StateCounter(zero_point=zero_point, **kwargs)


def fires(capture: Capture, x: np.ndarray) -> np.ndarray:
    """Whether each value of *x* (the capture's array with its neurons moved last) fires."""
    zero_point = capture.zero_point
    if zero_point is None or zero_point == 0:
        return x > 0
    if isinstance(zero_point, tuple):
        return x > np.array(zero_point, dtype=np.int64)
    return x > zero_point


@dataclass(frozen=True)
class BatchRun:
    """One batch through the instrumented model: its inputs (constants included), final
    outputs, captured tensors by name, and its number of samples."""

    batch: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    captured: dict[str, np.ndarray]
    samples: int


class Instrumented:
    """A model rewritten to expose the captured tensors, with its onnxruntime session.

    Parameters
    ----------
    model:
        A .onnx path or a ModelProto.
    attach_to, exclude, method, neuron_axes, literal, quantized:
        Which tensors to capture and read (see ``capture.select.select_captures``).
    providers, threads, optimization:
        The onnxruntime session (see ``make_session``). *threads* also decides how states
        are counted (``count.engine.plan_threads``).
    counting_threads:
        The most threads that count (None: up to ``count.engine.MAX_COUNTING_THREADS``).
        A Dask worker gives its own threads: its machine's cores are shared with other
        workers, which would each start as many counting threads.
    output_batch_axis:
        The axis of the final outputs that holds the samples, when the graph cannot tell
        (see ``batch_first``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelProto,
        *,
        attach_to: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str = (),
        method: Method = "after",
        neuron_axes: Mapping[str, int] | None = None,
        literal: bool = False,
        quantized: bool = False,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        optimization: Optimization = "all",
        output_batch_axis: int | None = None,
        pack: bool = False,
        counting_threads: int | None = None,
    ) -> None:
        # absolute: the file is read again (parity, ``model``) after any later chdir
        self.path = None if isinstance(model, ModelProto) else Path(os.path.abspath(model))
        # Read through the module: one limit, which tests can lower.
        self.original, self.sha256, by_path = load.load_model_hashed(
            model, max_bytes=load.LARGE_MODEL_BYTES
        )
        self._runnable_path = str(self.path) if by_path and self.path is not None else None
        self.model_dir = self.path.parent if self.path is not None else None
        self.index = GraphIndex(self.original)
        self.captures: list[Capture] = select_captures(
            self.index, attach_to, exclude, method, neuron_axes,
            literal=literal, quantized=quantized,
        )  # fmt: skip
        # Layers inside If/Loop/Scan bodies read outputs threaded out to the main graph.
        self._base, self.captures = expose_nested(self.original, self.captures)
        self.captures = [replace(c, packed=True) if pack and _packable(c) else c
                         for c in self.captures]  # fmt: skip
        if converts_int8(providers, optimization):  # keep onnxruntime's int8 fusions
            self.captures = uint8_captures(self.index, self.captures)
        _warn_float_qdq(self.index, self.captures)
        self.specs: list[InputSpec] = input_specs(self.original)
        _warn_time_major_inputs(self.index, self.specs)
        self.output_names = [o.name for o in self.original.graph.output]
        if not self.output_names:
            raise ModelError("the model declares no graph outputs; it cannot be run")
        self.plan: ThreadPlan = plan_threads(providers, threads, counting_threads)
        self._session_args = (providers, threads, optimization, self.model_dir)
        self._session: Any = None  # built on first use: see ``session``
        self._weights_dropped = False
        # (batch, outputs) of the original model for the parity check: see ``parity``
        self._plain_first: tuple[dict[str, np.ndarray], list[np.ndarray]] | None = None
        self.parity_first = False
        self._packed: dict[str, Any] = {}  # read tensor -> capture.pack.PackedOutput
        self.tensors = list(dict.fromkeys(c.read for c in self.captures if not c.packed))
        if output_batch_axis is not None and not isinstance(output_batch_axis, int):
            raise InputError(f"output_batch_axis must be an integer, got {output_batch_axis!r}")
        self.output_batch_axis = output_batch_axis
        self._batch_axes: dict[str, int] = {}  # per output or tensor, once decided
        # Captures the main graph does not declare (threaded out of If/Loop/Scan bodies):
        # their exposed shape, and the iteration axes in front, which cannot be the samples
        self._nested = {c.key: (c.shape if c.merge_axis is None else None, c.stacked)
                        for c in self.captures if c.path}  # fmt: skip
        self._constant_names: set[str] = set()  # of the current stream

    @property
    def model(self) -> ModelProto:
        """The instrumented model (a copy of the original with the extra outputs)."""
        if self._weights_dropped and self._runnable_path is not None:
            proto, sha, _ = load.load_model_hashed(self._runnable_path)
            if sha != self.sha256:
                raise ModelError(
                    f"{self._runnable_path} changed since it was loaded (the session runs the "
                    "model as it was then); build a new Instrumented to use the new file"
                )
            return converted(add_outputs(proto, self.captures), self.captures)
        return converted(add_outputs(self._base, self.captures), self.captures)

    @property
    def session(self) -> Any:
        """The instrumented model's onnxruntime session, built on first use.

        A model read from a file reaches onnxruntime with its weights detached, handed over
        from memory (see ``capture.weights``: ``can_detach`` says which models), and the
        loaded proto is let go for a light copy; otherwise the model is serialized once, with
        the extra outputs added to the original proto for that moment only.
        """
        if self._session is None:
            own = self._runnable_path is not None and self._base is self.original
            # (the file has the weights for a parity session, and ``model`` reads it again)
            detach = own and memory_files_supported() and can_detach(self.original)
            weights = None
            base = self._base
            try:
                weights = detach_weights(self.original) if detach else None
                if weights is not None and weights.names:
                    self._lighten(weights)
                    base = self._base
                packed = [c for c in self.captures if c.packed]
                if packed:  # a copy with the packing nodes, dropped once the session is built
                    from onnx_state.capture.pack import PackRequest, add_packed_outputs

                    requests = [PackRequest(c.read, c.axis, c.rank or 4, int(c.shape[c.axis]))  # type: ignore[index,arg-type]
                                for c in packed]  # fmt: skip
                    base, outs = add_packed_outputs(base, requests)
                    self._packed = {c.read: o for c, o in zip(packed, outs)}
                with (
                    _extra_outputs(base, [c for c in self.captures if not c.packed]),
                    run_as_uint8(base, self.captures),
                ):
                    self._session = make_session(
                        base, *self._session_args, config=self.plan.session_config(),
                        weights=weights,
                    )  # fmt: skip
            except BaseException:
                if weights is not None:
                    weights.restore()  # the proto as it was: a retry sees the weights
                raise
            del base
            if own:
                # onnxruntime holds the weights now: the proto's copy goes (detached tensors
                # and any other large one); ``model`` reads the file from here on
                self._weights_dropped = True
                if weights is not None:
                    weights.forget()
                _drop_weights(self.original)
        return self._session

    def _lighten(self, weights: DetachedWeights) -> None:
        """Swap the loaded proto for a copy made after *weights* left it, and let the loaded
        one go: protobuf frees a message's memory only with the message, so the detached
        weights would otherwise stay resident, a second copy, for the whole run."""
        light = ModelProto()
        light.CopyFrom(self.original)
        weights.move_to(light)
        self.index = self.index.on_copy(light)
        self.original = self._base = light

    def run(self, batch: Mapping[str, np.ndarray], samples: int | None = None) -> BatchRun:
        """Run one checked batch: its final outputs and captured tensors by name.

        *samples* defaults to the length of the batch's first input.
        """
        if self.parity_first and self._session is None:
            # The original model's outputs first, from a session released before the
            # instrumented one is built: never two copies of the weights at once.
            head = self._parity_batch(batch)
            self._plain_first = (head, self._plain_outputs(head))
        session = self.session
        extra = [
            name for o in dict.fromkeys(self._packed.values())
            for name in (o.output, o.nan_check_output) if name
        ]  # fmt: skip
        values = _run(session, self.output_names + self.tensors + extra, batch)
        k = len(self.output_names)
        n = batch_samples(batch) if samples is None else samples
        read = dict(zip(self.tensors + extra, values[k:]))
        captured = {}
        for c in self.captures:
            if not c.packed:
                captured[c.key] = c.view(read[c.read])
                continue
            out = self._packed[c.read]
            if out.nan_check_output and np.isnan(read[out.nan_check_output]):
                raise ModelError(
                    f"layer {c.layer!r}: a NaN activation reached the packed bits of {c.name}, "
                    "which cannot say where it was; analyse this data without pack "
                    "(--pack-bits)"
                )
            captured[c.key] = read[out.output]
        return BatchRun(dict(batch), values[:k], captured, n)

    def stream(
        self,
        data: Any,
        batch_size: int | None,
        consume: Callable[[BatchRun], None],
        progress: bool | None = None,
        overlap: bool | None = None,
        constants: Mapping[str, Any] | None = None,
        skip: int = 0,
        on_skip: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> Iterator[BatchRun]:
        """Run every batch of *data*, call consume(run) for each, and yield each run without
        its captured tensors.

        *batch_size* None takes the inputs' fixed batch dimension, else 200 (see
        ``data.resolve_batch_size``). *constants* are fed whole with every batch (see
        ``data.check_constants``). With *overlap* (default: ``plan.overlap``), *consume*
        runs on a worker thread while the next batch runs (at most two batches of
        activations alive, and one call of *consume* at a time, in order); otherwise it
        runs right after each batch, when onnxruntime has handed every core back (see
        ``count.engine.plan_threads``). The first *skip* batches are not run (a resumed
        run counted them already): each goes to *on_skip* instead.
        """
        fixed = self.constants(constants)
        self._constant_names = set(fixed)
        batched = data_specs(self.specs, fixed)
        data = open_data(data)  # once, for the length, the count and the batches
        check_inputs(data, self.specs, fixed)  # names first: they explain the rest
        size = resolve_batch_size(batch_size, batched, data_length(data, batched))
        total = batch_count(data, batched, size)
        batches = iter_batches(data, self.specs, size, fixed)
        for _ in range(skip):
            batch = next(batches, None)
            if batch is None:
                raise InputError(f"the data holds fewer than the {skip} batches to skip")
            if on_skip is not None:
                on_skip(batch)
        with progress_bar(total, progress) as bar:
            bar.update(skip)
            if not (self.plan.overlap if overlap is None else overlap):
                for batch in batches:
                    run = self.run(batch, batch_samples(batch, fixed))
                    consume(run)
                    done = BatchRun(run.batch, run.outputs, {}, run.samples)
                    del run  # onnxruntime can reuse the captured buffers for the next batch
                    yield done
                    bar.update(1)
                return
            pending: Future[None] | None = None
            with ThreadPoolExecutor(1) as pool:
                for batch in batches:
                    run = self.run(batch, batch_samples(batch, fixed))
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(consume, run)
                    done = BatchRun(run.batch, run.outputs, {}, run.samples)
                    del run
                    yield done
                    bar.update(1)
                if pending is not None:
                    pending.result()

    def constants(self, constants: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        """*constants* checked against this model's inputs (see ``data.check_constants``)."""
        return check_constants(constants, self.specs)

    def class_scores(self, run: BatchRun) -> np.ndarray:
        """The first final output of *run*, samples first: the class scores of accuracy."""
        name, scores = self.output_names[0], run.outputs[0]
        try:
            return self.batch_first(name, scores, run.samples)
        except InputError:
            raise InputError(
                f"accuracy needs class scores of shape (N, K) with K >= 2 as the first model "
                f"output, got {scores.shape} for {run.samples} samples; drop the labels for "
                "this model (or give output_batch_axis)"
            ) from None

    def batch_first(self, name: str, array: np.ndarray, samples: int) -> np.ndarray:
        """*array* (the output or captured tensor *name* of a batch of *samples*) with its
        sample axis (see ``batch_axis``) first."""
        axis = self.batch_axis(name, array, samples)
        return array if axis == 0 else np.moveaxis(array, axis, 0)

    def batch_axis(self, name: str, array: np.ndarray, samples: int) -> int:
        """The axis of *array* (the output or captured tensor *name* of a batch of
        *samples*) that holds the samples, in 0 .. ndim - 1.

        The axis is the one whose declared dimension is the inputs' batch dimension; where
        the graph cannot tell, the one whose size is the number of samples; for final
        outputs, ``output_batch_axis`` when given. A tensor with several candidate axes is
        refused rather than guessed.
        """
        axis = self._batch_axes.get(name)
        if axis is None:
            axis = self._batch_axis(name, array.shape, samples)
            self._batch_axes[name] = axis
        if not -array.ndim <= axis < array.ndim or array.shape[axis] != samples:
            if name not in self.output_names:  # a capture: output_batch_axis cannot help
                layer = next((c.layer for c in self.captures if c.key == name), name)
                raise InputError(
                    f"no axis of captured tensor {name!r} (shape {array.shape}) holds the "
                    f"batch's {samples} samples (its layer mixes them, e.g. a Reshape to "
                    f"rows), so per-sample figures (labels, audit's novelty, separation) "
                    f"cannot use it; exclude layer {layer!r} from them"
                )
            raise InputError(
                f"axis {axis} of {name!r} (shape {array.shape}) does not hold the batch's "
                f"{samples} samples; give output_batch_axis (--output-batch-axis)"
            )
        return axis % array.ndim

    def _batch_axis(self, name: str, shape: tuple[int, ...], samples: int) -> int:
        if self.output_batch_axis is not None and name in self.output_names:
            return self.output_batch_axis
        batched = [s for s in self.specs if s.name not in self._constant_names and s.shape]
        batch_dims = {s.shape[0] for s in batched}
        free_batch = not any(isinstance(d, int) and d > 0 for d in batch_dims)
        nested_shape, stacked = self._nested.get(name, (None, 0))
        declared = self.index.shape(name) or nested_shape
        if declared is None or len(declared) != len(shape):
            declared = (None,) * len(shape)
        named = [i for i, d in enumerate(declared)
                 if isinstance(d, str) and d in batch_dims and i >= stacked]  # fmt: skip
        if len(named) == 1:
            return named[0]
        sized = [i for i, d in enumerate(shape) if d == samples and i >= stacked]
        if free_batch:  # a dimension the graph fixes cannot be a free batch dimension
            sized = [i for i in sized if not _fixed(declared[i])]
        if len(sized) == 1 or (sized and samples == 1):
            return sized[0]  # a size-1 axis moved first changes no element's order
        if name not in self.output_names:
            # A captured tensor (per-sample figures only; counting needs no batch axis): the
            # first axis after any iteration axes, as the graph lays them out, if it fits.
            if not sized:
                return stacked  # no axis fits: batch_axis refuses it, naming the layer
            axis = stacked if stacked in sized else sized[0]
            warnings.warn(
                f"cannot tell which axis of {name!r} (shape {shape}) holds the {samples} "
                f"samples (axes {sized or 'none'} fit); per-sample figures assume axis {axis}",
                RuntimeWarning,
                stacklevel=2,
            )
            return axis
        raise InputError(
            f"cannot tell which axis of {name!r} (shape {shape}) holds the batch's {samples} "
            f"samples (axes {sized or 'none'} fit); give output_batch_axis "
            "(CLI --output-batch-axis)"
        )

    def parity(
        self, batch: Mapping[str, np.ndarray], finals: Sequence[np.ndarray] | None = None
    ) -> float:
        """Max |difference| between the final outputs of the original and instrumented model.

        Extra outputs can stop onnxruntime from fusing nodes, which may change the numbers.
        *finals* are the instrumented model's outputs for *batch* when already computed.
        With ``parity_first`` set before the first batch, the original ran the first
        ``PARITY_SAMPLES`` samples of that batch (all of it when its batch dimension is
        fixed) before the instrumented session existed, and both models are compared on
        those samples, whatever *batch* is; otherwise a session of the original is built
        now, next to the instrumented one.
        """
        first, self._plain_first = self._plain_first, None
        if first is not None:
            head, plain = first
            b = _run(self.session, self.output_names, head)
        else:
            plain = self._plain_outputs(batch)
            b = list(finals) if finals is not None else _run(self.session, self.output_names, batch)
        diffs = [
            float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            for x, y in zip(plain, b)
        ]
        return max(diffs, default=0.0)

    def _parity_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The first PARITY_SAMPLES samples of *batch* (constants whole), or all of it when
        an input's batch dimension is fixed: a cheap run that still shows lost fusions."""
        batched = [s for s in self.specs if s.name not in self._constant_names]
        if any(_fixed(s.shape[0]) for s in batched if s.shape):
            return dict(batch)
        names = {s.name for s in batched}
        return {k: v[:PARITY_SAMPLES] if k in names else v for k, v in batch.items()}

    def _plain_outputs(self, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The original model's final outputs for *batch*, from a session of its own that is
        released on return (built from the file when there is one: nothing serialized)."""
        source: str | ModelProto = self._runnable_path or self.original
        plain = make_session(source, *self._session_args, config=self.plan.session_config())
        try:
            return _run(plain, self.output_names, batch)
        finally:
            del plain


def did_not_run(array: np.ndarray) -> bool:
    """Whether a captured *array* is the empty tensor of an If branch that did not run
    (see ``capture.control``): it holds no state, and no sample's activations."""
    return array.size == 0 and array.ndim > 0


def _warn_time_major_inputs(index: GraphIndex, specs: Sequence[InputSpec]) -> None:
    """Warn for each input that a recurrent layer reads as its sequence along axis 0 (time
    first, as ONNX's RNN/GRU/LSTM with layout 0 and a batch_first=False export take it):
    batches are cut along axis 0, so they would hold time steps, not samples."""
    for spec in specs:
        for i in sorted(index.consumers.get(spec.name, ())):
            node = index.nodes[i]
            layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
            is_sequence = bool(node.input) and node.input[0] == spec.name
            if node.op_type.lower() in RECURRENT_OPS and is_sequence and not layout:
                warnings.warn(
                    f"input {spec.name!r} is the sequence of {node.op_type} "
                    f"{node.name or node.output[0]!r}, whose axis 0 is time ([seq, batch, "
                    "features]); onnx_state takes samples along axis 0 of every input, so a "
                    "batch would hold time steps and cut the sequences: export the model "
                    "batch-first, or feed each whole sequence as one batch (per-sample "
                    "figures then count time steps)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                break


def _warn_float_qdq(index: GraphIndex, captures: Sequence[Capture]) -> None:
    """Warn once when captures read float tensors inside QDQ groups, which onnxruntime
    fuses into int8 kernels (Conv into QLinearConv...) unless a tensor inside is a graph
    output: a DequantizeLinear's output (``before`` a layer), or a layer's output (through a
    Relu/Clip it reads) that a QuantizeLinear alone consumes."""

    def dequantized(name: str) -> bool:
        node = index.producers.get(name)
        return (
            node is not None
            and node.op_type == "DequantizeLinear"
            and bool(node.input and node.input[0] not in index.constants)
        )

    floats = []
    for c in captures:
        if c.path or c.arithmetic != "float":
            continue
        users = [index.nodes[i] for i in index.consumers.get(c.read, ())]
        producer = index.producers.get(c.read)
        if producer is not None and producer.op_type in ("Relu", "Clip") and producer.input:
            producer = index.producers.get(producer.input[0])  # a Relu fused into the group
        quantized_out = len(users) == 1 and users[0].op_type == "QuantizeLinear"
        in_group = producer is not None and any(dequantized(i) for i in producer.input)
        if dequantized(c.read) or (quantized_out and in_group):
            floats.append(c.layer)
    if floats:
        warnings.warn(
            f"{len(floats)} captured float tensor(s) of QDQ-quantized layers (first: "
            f"{floats[0]!r}) lie inside int8 QDQ groups; capturing them stops onnxruntime "
            "fusing those layers into int8 kernels, so the run is slower and its states are "
            "not the deployed int8 arithmetic (analyze and audit read the int8 tensors the "
            "deployed model computes at the layers' outputs with quantized=True, --quantized)",
            RuntimeWarning,
            stacklevel=3,
        )


def instrument(
    model: str | os.PathLike[str] | ModelProto,
    *,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
) -> ModelProto:
    """The rewritten model alone: *model* with the captured tensors as extra outputs."""
    proto = load.load_model(model)
    captures = select_captures(GraphIndex(proto), attach_to, exclude, method, neuron_axes)
    return add_outputs(*expose_nested(proto, captures))


_DATA_FIELDS = (
    "raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
)  # fmt: skip


def _drop_weights(model: ModelProto, keep_bytes: int = 1024) -> None:
    """Clear the data of the main graph's initializers above *keep_bytes* (in place)."""
    for init in model.graph.initializer:
        # (ByteSize would walk every tensor: 80 ms on a 27 MB model)
        if len(init.raw_data) > keep_bytes or len(init.float_data) > keep_bytes // 4:
            for name in _DATA_FIELDS:
                init.ClearField(name)


def _packable(c: Capture) -> bool:
    """Whether *c* can be read as bits packed inside the graph on the exact, layout-keeping
    route of ``capture.pack``: a float32 conv map (rank 4, neurons on axis 1, known)."""
    return (
        c.elem_type == onnx.TensorProto.FLOAT
        and c.rank == 4
        and c.axis == 1
        and c.merge_axis is None
        and c.shape is not None
        and isinstance(c.shape[1], int)
        and c.shape[1] > 0
    )


def _run(session: Any, names: list[str], batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """session.run, its failures as one ModelError line."""
    try:
        return list(session.run(names, dict(batch)))
    except Exception as exc:  # onnxruntime raises its own classes, one per status code
        raise ModelError(f"onnxruntime failed on a batch: {one_line(exc)}") from exc


@contextlib.contextmanager
def _extra_outputs(model: ModelProto, captures: Sequence[Capture]) -> Iterator[None]:
    """*model* with the captures' outputs appended for the duration (then exactly as it
    was): the rewrite of ``rewrite.add_outputs`` without copying the weights."""
    graph = model.graph
    before = len(graph.output)
    extra = add_outputs(_skeleton(model), captures).graph.output[before:]
    graph.output.extend(extra)
    try:
        yield
    finally:
        del graph.output[before:]


def _skeleton(model: ModelProto) -> ModelProto:
    """A model with *model*'s outputs only: what ``add_outputs`` reads to append to them."""
    out = ModelProto()
    out.graph.output.extend(model.graph.output)
    return out


def _fixed(dim: int | str | None) -> bool:
    """Whether a declared dimension is a fixed size."""
    return isinstance(dim, int) and dim > 0
