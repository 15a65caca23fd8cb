"""Class labels and top-1 accuracy, for every command that takes labels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from onnx_state.capture.data import load_array
from onnx_state.errors import InputError

__all__ = ["Accuracy", "accuracy_of", "labels_array", "predicted_classes"]


def labels_array(labels: Any) -> np.ndarray:
    """Class indices from indices (N,) or (N, 1), or one-hot / score rows (N, K).

    *labels* is an array or a .npy/.npz/zarr path (``PATH:KEY`` picks one array).
    """
    if isinstance(labels, (str, os.PathLike)):
        labels = load_array(labels)
    y = np.asarray(labels)
    if y.dtype.kind not in "biuf":
        raise InputError(
            f"labels must be integer class indices or one-hot rows, got {y.dtype} values"
        )
    if y.ndim == 2 and y.shape[1] == 1:  # a column of indices, e.g. Keras CIFAR labels
        y = y[:, 0]
    elif y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise InputError(f"labels must be class indices or one-hot rows, got shape {y.shape}")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            bad = y[~whole][0]
            raise InputError(f"labels must be integer class indices, got {bad!r}")
        y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise InputError(f"labels must be class indices >= 0, got {int(y.min())}")
    return y.astype(np.int64) if y.dtype.kind == "b" else y


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """argmax over the class axis of (N, K) scores (trailing axes of size 1 are ignored)."""
    n = len(outputs)
    axes = [d for d in outputs.shape[1:] if d != 1]
    if len(axes) != 1 or axes[0] < 2:
        raise InputError(
            f"accuracy needs class scores of shape (N, K) with K >= 2 as the first model "
            f"output, got {outputs.shape}; drop the labels for this model"
        )
    return np.asarray(np.argmax(outputs.reshape(n, -1), axis=1))


class Accuracy:
    """Top-1 accuracy of a model's first output, batch after batch.

    Parameters
    ----------
    labels:
        Class indices or one-hot rows, or a path to them (see ``labels_array``).
    """

    def __init__(self, labels: Any) -> None:
        self.labels = labels_array(labels)
        self.seen = 0
        self.correct = 0

    def update(self, outputs: np.ndarray, samples: int) -> None:
        """Score the class scores (N, K) of the next batch of *samples* samples."""
        predicted = predicted_classes(outputs)
        if not self.seen:  # the number of classes is known from the first batch's scores
            classes = int(np.prod(outputs.shape[1:]))
            if len(self.labels) and int(self.labels.max()) >= classes:
                raise InputError(
                    f"label {int(self.labels.max())} is out of range for the model's {classes} "
                    f"classes (0 .. {classes - 1})"
                )
        if len(predicted) != samples:
            raise InputError(
                f"accuracy needs one row of class scores per sample in the first model "
                f"output, got {len(predicted)} rows for {samples} samples; drop the labels"
            )
        if self.seen + samples > len(self.labels):
            raise InputError(f"got {len(self.labels)} labels but the data holds more samples")
        truth = self.labels[self.seen : self.seen + samples]
        self.correct += int(np.sum(predicted == truth))
        self.seen += samples

    def result(self, n_samples: int) -> float:
        """The accuracy over *n_samples*, which must be every label."""
        if len(self.labels) != n_samples:
            raise InputError(
                f"got {len(self.labels)} labels for {n_samples} samples; they must match"
            )
        return self.correct / n_samples


def accuracy_of(labels: Any) -> Accuracy | None:
    """An Accuracy for *labels*, or None without labels."""
    return None if labels is None else Accuracy(labels)
