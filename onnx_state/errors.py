"""One root error class; each subclass also inherits the builtin it refines.

Callers can catch ``OnnxStateError`` for anything this package raises on bad input,
or the builtin (``ValueError``, ``TypeError``, ...) they already handle.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OnnxStateError(Exception):
    """Base class of every error onnx_state raises for bad input or bad state."""


class InputError(OnnxStateError, ValueError):
    """Data, arguments or files that do not fit what was asked."""


class DTypeError(OnnxStateError, TypeError):
    """An array of a dtype that cannot be used here."""


class ArgumentError(OnnxStateError, TypeError):
    """An argument of the wrong kind, or a call that does not apply to this object."""


class LayerNotFoundError(OnnxStateError, KeyError):
    """A requested layer, op type or tensor name matched nothing."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(OnnxStateError, ValueError):
    """A model that cannot be loaded, rewritten or run as asked."""


class StoreError(OnnxStateError, OSError):
    """A results store that is missing, incomplete or of another schema."""


class MissingExtraError(OnnxStateError, ImportError):
    """An optional framework that is not installed."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for close matches of *name*, or ''."""
    by_lower: dict[str, list[str]] = {}
    for choice in sorted(set(choices)):
        by_lower.setdefault(choice.lower(), []).append(choice)
    hits = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    found = [original for h in hits for original in by_lower[h]]
    return f" Did you mean: {', '.join(found)}?" if found else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's whole message folded onto one line (its class name when it has none).

    onnxruntime's messages explain the problem after their first line break.
    """
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class AxisGuessWarning(UserWarning):
    """A neuron axis (or zero point) that no rule decided: what was assumed, and the override."""
