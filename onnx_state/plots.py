"""Plots of separation results (matplotlib, imported when a plot is made)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_state.errors import MissingExtraError
from onnx_state.separation import Formula, SeparationResult

__all__ = ["plot_separation"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("plots need matplotlib: pip install 'onnx-state[plots]'") from exc
    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def plot_separation(
    results: Sequence[SeparationResult] | SeparationResult,
    out_dir: str | os.PathLike[str],
    stages: Sequence[str] | None = None,
    formula: Formula = "friedman_rafsky",
    fmt: str = "png",
) -> list[Path]:
    """Histograms per layer and stage, mean per layer, class×class heatmaps, PCA scatters.

    *results* are stages of one network (e.g. before and after training). Returns the files.
    """
    plt = _pyplot()
    results = [results] if isinstance(results, SeparationResult) else list(results)
    stages = list(stages or [f"stage {i + 1}" for i in range(len(results))])
    out = Path(out_dir)
    out.mkdir(exist_ok=True)  # its folder must exist (see outputs.check_output)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / f"{_safe(name)}.{fmt}"
        fig.savefig(path, bbox_inches="tight", dpi=110)
        plt.close(fig)
        written.append(path)

    layers = [la for la in results[0].layers if all(la in r.layers for r in results)]
    splits = list(results[0].cross)
    for layer in layers:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for r, stage in zip(results, stages):
            for split in splits:
                ax.hist(r.values(layer, split, formula), bins=20, range=(0, 1), alpha=0.5,
                        label=f"{stage} ({split})")  # fmt: skip
        ax.set(title=f"{layer}: class-pair separation", xlabel="separation", ylabel="pairs")
        ax.legend(fontsize=7)
        save(fig, f"hist_{layer}")
        r = results[-1]
        m = r.matrix(layer, splits[0], formula)
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(r.classes)), r.classes)
        ax.set_yticks(range(len(r.classes)), r.classes)
        ax.set(title=f"{layer} ({stages[-1]}, {splits[0]})")
        fig.colorbar(im, ax=ax, label="separation")
        save(fig, f"heatmap_{layer}")
        pca = r.pca.get(layer)
        if pca:
            coords, side = np.asarray(pca["coords"]), np.asarray(pca["side"])
            fig, ax = plt.subplots(figsize=(4, 3.6))
            for k, cls in enumerate(r.pca["pair"]):
                ax.scatter(*coords[side == k].T, s=6, alpha=0.6, label=f"class {cls}")
            ax.set(title=f"{layer}: PCA of two classes", xlabel="PC 1", ylabel="PC 2")
            ax.legend(fontsize=7)
            save(fig, f"pca_{layer}")
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for r, stage in zip(results, stages):
        for split in splits:
            ax.plot(range(len(layers)), [r.mean(la, split, formula) for la in layers], marker="o",
                    label=f"{stage} ({split})")  # fmt: skip
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set(title="mean class separation per layer", ylabel="separation", ylim=(0, 1))
    ax.legend(fontsize=7)
    save(fig, "mean_per_layer")
    return written
