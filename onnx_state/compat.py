"""TensorState-compatible API: ``import onnx_state as ts`` runs TensorState's tutorials.

``build_efficiency_model`` accepts a PyTorch module (states are captured by forward hooks, so
the user's own training or evaluation loop keeps working), a Keras 3 model (exported to ONNX
with tf2onnx) or an ONNX model (path or ModelProto); the last two run through onnxruntime
with ``.predict``. This module imports no framework: torch modules are driven through their
own methods, and Keras models go to ``exporters.from_keras`` only when given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnx_state import metrics
from onnx_state.capture import (
    METHODS,
    BatchRun,
    Capture,
    Instrumented,
    Method,
    Side,
    capture_name,
)
from onnx_state.capture.session import new_counter
from onnx_state.count import StateCounter
from onnx_state.errors import ArgumentError, InputError, LayerNotFoundError, did_you_mean
from onnx_state.results import StateMetrics

__all__ = [
    "EfficiencyLayer",
    "EfficiencyModel",
    "build_efficiency_model",
    "network_efficiency",
    "reset_efficiency_model",
]


class EfficiencyLayer(StateMetrics):
    """A live capture point: TensorState's StateCapture, backed by a StateCounter."""

    def __init__(
        self, name: str, axis: int, storage_path: Path | None = None, capture: Capture | None = None
    ) -> None:
        self.name = name
        self.axis = axis
        self._storage = storage_path
        self._capture = capture  # an ONNX capture: its integer tensors fire iff > zero point
        self._counter = self._new_counter()

    def _new_counter(self) -> StateCounter:
        record = self._storage if self._storage is not None else False
        if self._capture is not None:
            return new_counter(self._capture, record=record)
        return StateCounter(record=record)

    def update(self, x: Any) -> None:
        """Count the states of one captured batch."""
        self._counter.update(x, axis=self.axis)

    @property
    def neurons(self) -> int:
        """Neurons of the layer (0 before the first batch)."""
        return self._counter.neurons

    @property
    def state_count(self) -> int:
        """All states observed, repeats included."""
        return self._counter.state_count

    @property
    def nan_count(self) -> int:
        """NaN values seen (each counted as not firing)."""
        return self._counter.nan_count

    def counts(self) -> np.ndarray:
        """Occurrences of each observed state, in ``state_ids`` order."""
        return self._counter.counts()

    def state_ids(self, as_bytes: bool = True) -> np.ndarray | list[bytes]:
        """Observed states; a list of bytes like TensorState (``as_bytes=False``: uint8 rows)."""
        return self._counter.state_bytes() if as_bytes else self._counter.state_ids()

    @property
    def raw_states(self) -> Any:
        """Recorded packed states (zarr), when built with ``storage_path``."""
        return self._counter.raw_states

    @property
    def states(self) -> np.ndarray:
        """Recorded states unpacked to bool [state_count, neurons] (needs ``storage_path``)."""
        return self._counter.states()

    def reset_states(self, input_shape: Any = None) -> None:
        """Forget every state seen so far."""
        self._counter.reset()

    def __repr__(self) -> str:
        return f"EfficiencyLayer({self.name!r}, state_count={self.state_count})"


class EfficiencyModel:
    """What build_efficiency_model returns: ``efficiency_layers`` and a way to run data."""

    def __init__(self, layers: list[EfficiencyLayer], runner: Any, handles: list[Any]) -> None:
        self.efficiency_layers = layers
        self._runner = runner
        self._handles = handles

    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Run *x* in batches, count states, return the first output (like Keras)."""
        return np.asarray(self._runner(x, batch_size))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped torch module (its hooks count the states)."""
        module = getattr(self._runner, "module", None)
        if module is None:
            raise ArgumentError("call predict(x, batch_size) on an ONNX or Keras efficiency model")
        return module(*args, **kwargs)

    def reset_states(self) -> None:
        """Forget the states of every layer."""
        for layer in self.efficiency_layers:
            layer.reset_states()

    def remove_hooks(self) -> None:
        """Detach the capture hooks from a torch module (it then runs as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _is_torch_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "register_forward_hook")


def _is_keras_model(model: Any) -> bool:
    return type(model).__module__.split(".")[0] in ("keras", "tf_keras") or (
        hasattr(model, "layers") and hasattr(model, "inputs") and hasattr(model, "get_config")
    )


def _check_args(attach_to: Any, exclude: Any, method: str) -> tuple[list[str], list[str]]:
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    attach = [attach_to] if isinstance(attach_to, str) else list(attach_to or [])
    if not attach:
        raise InputError("attach_to is empty; name layer types or layer names to capture")
    return attach, [exclude] if isinstance(exclude, str) else list(exclude or [])


def build_efficiency_model(
    model: Any,
    attach_to: Sequence[str] | str = ("Conv2d",),
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    storage_path: str | os.PathLike[str] | None = None,
    neuron_axes: Mapping[str, int] | None = None,
    **session: Any,
) -> EfficiencyModel:
    """Attach state capture to the chosen layers of a torch, Keras or ONNX model.

    *attach_to* holds layer types (``Conv2d``, ``Conv2D``, or ONNX ``Conv``) or layer names;
    *exclude* names override type matches; *method* is ``after``, ``before`` or ``both``.
    With *storage_path*, every state is also recorded on disk (one zarr array per layer).
    Extra keywords (providers, threads, optimization) go to onnxruntime.
    """
    attach, skip = _check_args(attach_to, exclude, method)
    storage = Path(storage_path) if storage_path is not None else None
    if _is_torch_module(model):
        return _torch_model(model, attach, skip, method, storage, neuron_axes or {})
    if isinstance(model, (str, os.PathLike, ModelProto)):
        return _onnx_model(model, attach, skip, method, storage, neuron_axes, session)
    if _is_keras_model(model):
        from exporters.from_keras import export

        return _onnx_model(export(model), attach, skip, method, storage, neuron_axes, session)
    raise InputError(
        f"cannot attach to a {type(model).__name__}; give a torch module, a Keras model, or an "
        "ONNX model path or ModelProto"
    )


def _layer(name: str, side: Side, axis: int, storage: Path | None) -> EfficiencyLayer:
    full = capture_name(name, side)
    return EfficiencyLayer(full, axis, None if storage is None else storage / f"{full}.zarr")


def _torch_model(
    module: Any,
    attach: list[str],
    exclude: list[str],
    method: str,
    storage: Path | None,
    axes: Mapping[str, int],
) -> EfficiencyModel:
    modules = dict(module.named_modules())
    modules.pop("", None)

    def matches(path: str, m: Any) -> bool:
        cls = type(m).__name__.lower()
        return any(k.lower() == cls or k == path for k in attach)

    chosen = [(p, m) for p, m in modules.items() if matches(p, m) and p not in exclude]
    _report_unknown(attach, exclude, modules, {type(m).__name__ for m in modules.values()})
    if not chosen:
        raise LayerNotFoundError(f"{attach} matched no module once {exclude} were excluded")
    from exporters.from_torch import module_axis  # the torch exporter owns module axes

    layers: list[EfficiencyLayer] = []
    handles = []
    for path, m in chosen:
        # Inputs and outputs of one module keep their neurons on the same axis; hooks see
        # no graph, so modules whose class does not say use the channel axis 1.
        axis = axes.get(path, module_axis(type(m).__name__) or 1)
        if method in ("before", "both"):
            pre = _layer(path, "before", axis, storage)
            handles.append(m.register_forward_pre_hook(_pre_hook(pre)))
            layers.append(pre)
        if method in ("after", "both"):
            post = _layer(path, "after", axis, storage)
            handles.append(m.register_forward_hook(_post_hook(post)))
            layers.append(post)
    return EfficiencyModel(layers, _TorchRunner(module), handles)


def _to_numpy(t: Any) -> np.ndarray:
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        t = t.float()
    return np.asarray(t.cpu().numpy())


def _pre_hook(layer: EfficiencyLayer) -> Callable[[Any, Any], None]:
    def hook(module: Any, args: Any) -> None:
        layer.update(_to_numpy(args[0]))

    return hook


def _post_hook(layer: EfficiencyLayer) -> Callable[[Any, Any, Any], None]:
    def hook(module: Any, args: Any, output: Any) -> None:
        layer.update(_to_numpy(output[0] if isinstance(output, tuple) else output))

    return hook


class _TorchRunner:
    """predict() for a torch module: batches under no_grad, on the module's device."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, x: Any, batch_size: int) -> np.ndarray:
        import torch  # only reached with a torch module in hand

        params = next(iter(self.module.parameters()), None)
        device = params.device if params is not None else "cpu"
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                outs.append(_to_numpy(self.module(x[start : start + batch_size].to(device))))
        return np.concatenate(outs)


def _onnx_model(
    model: str | os.PathLike[str] | ModelProto,
    attach: list[str],
    exclude: list[str],
    method: Method,
    storage: Path | None,
    axes: Mapping[str, int] | None,
    session: dict[str, Any],
) -> EfficiencyModel:
    inst = Instrumented(
        model, attach_to=attach, exclude=exclude, method=method, neuron_axes=axes, **session
    )
    layers = [
        EfficiencyLayer(
            c.name, c.axis, None if storage is None else storage / f"{c.name}.zarr", capture=c
        )
        for c in inst.captures
    ]
    pairs = [(layer, c.key) for layer, c in zip(layers, inst.captures)]

    def consume(run: BatchRun) -> None:
        for layer, tensor in pairs:
            layer.update(run.captured[tensor])

    def run(x: Any, batch_size: int) -> np.ndarray:
        outs = [r.outputs[0] for r in inst.stream(x, batch_size, consume, progress=False)]
        return np.concatenate(outs)

    return EfficiencyModel(layers, run, [])


def _report_unknown(
    attach: list[str], exclude: list[str], modules: Mapping[str, Any], classes: set[str]
) -> None:
    """Every attach/exclude entry that names no module class or path, at once."""
    vocab = set(modules) | classes
    lowered = {c.lower() for c in classes}
    bad = [k for k in attach if k not in modules and k.lower() not in lowered]
    bad_ex = [k for k in exclude if k not in modules]
    if bad or bad_ex:
        parts = [f"{k!r} names no module class or path." + did_you_mean(k, vocab) for k in bad]
        parts += [f"exclude {k!r} names no module." + did_you_mean(k, vocab) for k in bad_ex]
        raise LayerNotFoundError(
            " ".join(parts) + f" Module classes here: {', '.join(sorted(classes))}."
        )


def network_efficiency(
    model_or_layers: Any, alpha1: float = 1, alpha2: float | None = None
) -> float:
    """Geometric mean of layer efficiencies, from an efficiency model, an Analysis, a list
    of layers, or a list of efficiency values."""
    if hasattr(model_or_layers, "efficiency_layers"):
        items: Iterable[Any] = model_or_layers.efficiency_layers
    elif hasattr(model_or_layers, "layers") and hasattr(model_or_layers, "n_samples"):
        return float(model_or_layers.network_efficiency(alpha1, alpha2))  # layers that ran
    else:
        items = model_or_layers
    values = [i.efficiency(alpha1, alpha2) if hasattr(i, "efficiency") else float(i) for i in items]
    return metrics.network_efficiency(values)


def reset_efficiency_model(model: EfficiencyModel) -> None:
    """Forget the states of every layer of an efficiency model."""
    model.reset_states()
