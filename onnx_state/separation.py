"""Per-layer class separation: the Henze–Penrose statistic on Euclidean MSTs, and tests.

For each captured layer and each pair of classes (i, j), n samples of each class are
flattened to vectors, the exact Euclidean minimum spanning tree of the 2n points is built,
and S counts its edges that join the two classes. Two forms are reported:

* ``source`` (the prior library's): 1 − 2·min(N/2, S)/N with N = n_i + n_j. Its maximum is
  1 − 2/N, since a connected tree has S ≥ 1.
* ``friedman_rafsky`` (corrected, the default): max(0, 1 − (n_i + n_j)/(2 n_i n_j)·(S − 1)),
  1 for perfectly separated classes (S = 1) and about 0 when both come from one distribution
  (E[S] = 2 n_i n_j / N).

Separations of different class pairs share classes, so they are not independent samples; the
permutation tests below treat them as exchangeable, which overstates their evidence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnx import ModelProto

from onnx_state.capture import (
    BatchRun,
    Instrumented,
    Method,
    Optimization,
    Rows,
    as_inputs,
    data_specs,
    open_data,
)
from onnx_state.capture.session import did_not_run
from onnx_state.errors import InputError, StoreError, did_you_mean
from onnx_state.labels import labels_array
from onnx_state.mst import cross_edges, mst_edges, squared_distances
from onnx_state.outputs import check_output, progress_bar
from onnx_state.store import (
    MISSING,
    check_dict,
    check_int,
    check_list,
    check_run,
    check_schema,
    shown,
)

__all__ = [
    "FORMULAS",
    "SeparationResult",
    "first_classes",
    "henze_penrose",
    "permutation_test",
    "separation",
    "separation_tests",
    "tests_table",
]

Formula = Literal["friedman_rafsky", "source"]
FORMULAS: tuple[Formula, ...] = ("friedman_rafsky", "source")
SCHEMA = "onnx_state.separation"
SCHEMA_VERSION = 1


def henze_penrose(
    s: np.ndarray | int, n_i: Any, n_j: Any, formula: Formula = "friedman_rafsky"
) -> np.ndarray:
    """Separation from the cross-edge count S of an MST over n_i + n_j points."""
    s, n_i, n_j = (np.asarray(v, dtype=np.float64) for v in (s, n_i, n_j))
    if formula == "source":
        n = n_i + n_j
        return np.asarray(1 - 2 * np.minimum(n / 2, s) / n)
    if formula == "friedman_rafsky":
        return np.asarray(np.maximum(0.0, 1 - (n_i + n_j) / (2 * n_i * n_j) * (s - 1)))
    raise InputError(f"unknown formula {formula!r}; use one of {', '.join(FORMULAS)}")


def permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n: int = 10_000,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Fisher's permutation test for a difference of means (two-sided).

    Returns (mean(a) - mean(b), p) with p = (1 + #{|t'| >= |t|}) / (n + 1) over *n* random
    relabellings from a seeded generator.
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(xa) < 1 or len(xb) < 1:
        raise InputError("both groups need at least one value")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([xa, xb])
    observed = xa.mean() - xb.mean()
    hits = 0
    for start in range(0, n, 1000):  # permutations in slabs: bounded memory
        k = min(1000, n - start)
        perms = rng.permuted(np.broadcast_to(pooled, (k, len(pooled))), axis=1)
        t = perms[:, : len(a)].mean(axis=1) - perms[:, len(a) :].mean(axis=1)
        hits += int(np.sum(np.abs(t) >= abs(observed) - 1e-12))
    return float(observed), (1 + hits) / (n + 1)


@dataclass
class SeparationResult:
    """Cross-edge counts S per split, layer and class pair, and the sample sizes used."""

    classes: list[int]
    layers: list[str]
    cross: dict[str, dict[str, np.ndarray]]  # split -> layer -> K x K int, diagonal -1
    sizes: dict[str, list[int]]  # split -> samples per class
    pca: dict[str, Any] = field(default_factory=dict, repr=False)
    run: dict[str, Any] | None = None  # the run record (``results.RunRecord.to_dict``)

    def matrix(
        self, layer: str, split: str = "train", formula: Formula = "friedman_rafsky"
    ) -> np.ndarray:
        """K x K separations (NaN on the diagonal)."""
        s = self._get(layer, split)
        n = np.asarray(self.sizes[split], dtype=np.float64)
        out = henze_penrose(s, n[:, None], n[None, :], formula)
        np.fill_diagonal(out, np.nan)
        return out

    def values(
        self, layer: str, split: str = "train", formula: Formula = "friedman_rafsky"
    ) -> np.ndarray:
        """Separations of the K(K-1)/2 class pairs (upper triangle, row by row)."""
        m = self.matrix(layer, split, formula)
        return m[np.triu_indices(len(m), k=1)]

    def mean(self, layer: str, split: str = "train", formula: Formula = "friedman_rafsky") -> float:
        """Mean separation over the class pairs of *layer* in *split*."""
        return float(np.mean(self.values(layer, split, formula)))

    def _get(self, layer: str, split: str) -> np.ndarray:
        if split not in self.cross:
            raise InputError(f"no {split!r} split here; this result has {', '.join(self.cross)}")
        if layer not in self.cross[split]:
            raise InputError(f"no layer {layer!r}." + did_you_mean(layer, self.layers))
        return self.cross[split][layer]

    def pairs(self, formula: Formula = "friedman_rafsky") -> dict[str, dict[str, np.ndarray]]:
        """split -> layer -> K x K separations of every class pair (NaN on the diagonal)."""
        return {s: {la: self.matrix(la, s, formula) for la in self.layers} for s in self.cross}

    def table(self, formula: Formula = "friedman_rafsky", pairs: bool = False) -> str:
        """Mean separation per layer and split, as the CLI prints it; with *pairs*, each
        layer's class x class separations after it."""
        splits = list(self.cross)
        head = f"{'layer':30s}" + "".join(f" {'mean ' + s:>12s}" for s in splits)
        lines = [head, "-" * len(head)]
        for layer in self.layers:
            lines.append(
                f"{layer[:30]:30s}"
                + "".join(f" {self.mean(layer, s, formula):12.4f}" for s in splits)
            )
        sizes = ", ".join(f"{s}: {min(n)}-{max(n)} per class" for s, n in self.sizes.items())
        lines.append("")
        lines.append(f"classes: {self.classes}; samples {sizes}; formula: {formula}")
        if pairs:
            for split, layers in self.pairs(formula).items():
                for layer, m in layers.items():
                    lines += ["", f"{layer} ({split}): class x class separation",
                              f"{'':>8s}" + "".join(f" {c:>7d}" for c in self.classes)]  # fmt: skip
                    for c, row in zip(self.classes, m):
                        cells = "".join(f" {'-':>7s}" if np.isnan(v) else f" {v:7.4f}" for v in row)
                        lines.append(f"{c:>8d}{cells}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from onnx_state.views import separation_html

        return separation_html(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (schema ``onnx_state.separation``); ``from_dict`` reads it back."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "classes": self.classes,
            "layers": self.layers,
            "sizes": self.sizes,
            "cross_edges": {
                s: {la: m.tolist() for la, m in layers.items()} for s, layers in self.cross.items()
            },
            "mean": {
                f: {s: {la: self.mean(la, s, f) for la in self.layers} for s in self.cross}
                for f in FORMULAS
            },
            # derived from cross_edges and sizes (null on the diagonal)
            "pairs": {
                f: {
                    s: {la: _nan_to_none(m) for la, m in layers.items()}
                    for s, layers in self.pairs(f).items()
                }
                for f in FORMULAS
            },
            "run": self.run,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeparationResult:
        """A SeparationResult from ``to_dict``'s output, every field checked.

        Raises StoreError, one line naming the field at fault and what was expected.
        """
        return cls._checked(d, "separation result")

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """JSON with sorted keys, written to a temporary file and renamed into place.

        An existing file is replaced only with *overwrite* (see ``outputs.check_output``).
        """
        target = check_output(path, overwrite=overwrite, kind="file")
        tmp = target.with_name(f".{target.name}.partial")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SeparationResult:
        """Read a result saved by ``save``; StoreError (naming *path*) if it does not fit."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read separation result {path}: {exc}") from None
        return cls._checked(d, os.fspath(path))

    @classmethod
    def _checked(cls, d: Any, where: str) -> SeparationResult:
        """``from_dict`` with messages that start with *where* (a path, or a description)."""
        check_schema(d, where, SCHEMA, SCHEMA_VERSION, "separation result")
        classes = check_list(d.get("classes", MISSING), f"{where}: classes", "int", True)
        if len(classes) < 2:
            raise StoreError(f"{where}: classes is {shown(classes)}; expected at least two")
        layers = check_list(d.get("layers", MISSING), f"{where}: layers", "str", True)
        sizes_in = check_dict(d.get("sizes", MISSING), f"{where}: sizes")
        cross_in = check_dict(d.get("cross_edges", MISSING), f"{where}: cross_edges")
        if not sizes_in or set(sizes_in) != set(cross_in):
            raise StoreError(
                f"{where}: sizes has splits {shown(list(sizes_in))} and cross_edges "
                f"{shown(list(cross_in))}; expected the same splits (one at least) in both"
            )
        sizes: dict[str, list[int]] = {}
        cross: dict[str, dict[str, np.ndarray]] = {}
        for split, n in sizes_in.items():
            what = f"{where}: sizes[{json.dumps(split)}]"
            n = check_list(n, what, "int")
            if len(n) != len(classes):
                raise StoreError(
                    f"{what} has {len(n)} entries but there are {len(classes)} classes; "
                    "expected one sample size per class"
                )
            sizes[split] = [check_int(v, f"{what}[{i}]", minimum=1) for i, v in enumerate(n)]
        for split in cross_in:
            at = f"{where}: cross_edges[{json.dumps(split)}]"
            per_layer = check_dict(cross_in[split], at)
            missing = [la for la in layers if la not in per_layer]
            if missing:
                raise StoreError(
                    f"{at} has no layer {json.dumps(missing[0])}; expected every layer of "
                    "layers in every split"
                )
            extra = [la for la in per_layer if la not in layers]
            if extra:
                raise StoreError(
                    f"{at} has layer {json.dumps(extra[0])}, which layers does not list"
                )
            cross[split] = {
                la: _cross_matrix(m, f"{at}[{json.dumps(la)}]", sizes[split])
                for la, m in per_layer.items()
            }
        run = d.get("run")
        return cls(classes, layers, cross, sizes,
                   run=None if run is None else check_run(run, f"{where}:"))  # fmt: skip


def _nan_to_none(m: np.ndarray) -> list[list[float | None]]:
    """A matrix as JSON rows, NaN (the diagonal) as null."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in m]


def _cross_matrix(value: Any, what: str, sizes: list[int]) -> np.ndarray:
    """A K x K cross-edge matrix read back: integers, -1 on the diagonal, symmetric, and
    0 <= S <= n_i + n_j - 1 (an MST over n_i + n_j points has that many edges)."""
    k = len(sizes)
    if not isinstance(value, list) or len(value) != k:
        got = f"has {len(value)} rows" if isinstance(value, list) else f"is {shown(value)}"
        raise StoreError(f"{what} {got}; expected a {k} x {k} integer matrix (one row per class)")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != k:
            got = f"has {len(row)} entries" if isinstance(row, list) else f"is {shown(row)}"
            raise StoreError(f"{what}[{i}] {got}; expected a row of {k} integers")
        for j, v in enumerate(row):
            check_int(v, f"{what}[{i}][{j}]")  # its bounds follow
    m = np.asarray(value, dtype=object)  # exact Python ints until the bounds are known
    for i in range(k):
        if m[i, i] != -1:
            raise StoreError(f"{what}[{i}][{i}] is {m[i, i]}; expected -1 on the diagonal")
    for i in range(k):
        for j in range(i + 1, k):
            if m[i, j] != m[j, i]:
                raise StoreError(
                    f"{what}[{i}][{j}] is {m[i, j]} but [{j}][{i}] is {m[j, i]}; expected a "
                    "symmetric matrix"
                )
            top = sizes[i] + sizes[j] - 1
            if not 0 <= m[i, j] <= top:
                raise StoreError(
                    f"{what}[{i}][{j}] is {m[i, j]}; expected 0 to {top} cross edges (an MST "
                    f"over {sizes[i]} + {sizes[j]} samples)"
                )
    return np.asarray(value, dtype=np.int64)


def _choose(
    y: np.ndarray, classes: list[int], n: int | None, draw: str, seed: int
) -> list[np.ndarray]:
    """Sample indices per class: the first n, or a seeded random draw of n."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if n is not None and len(idx) < n:
            raise InputError(
                f"class {c} has {len(idx)} samples, fewer than samples_per_class={n}; "
                "lower samples_per_class"
            )
        if n is not None:
            idx = idx[:n] if draw == "first" else np.sort(rng.choice(idx, n, replace=False))
        chosen.append(idx)
    return chosen


def _features(
    inst: Instrumented,
    mapping: Mapping[str, Any],
    index: np.ndarray,
    batch_size: int | None,
    with_input: bool,
    constants: Mapping[str, np.ndarray],
    progress: bool | None = False,
) -> tuple[dict[str, np.ndarray], int]:
    """Flattened captured tensors (and the inputs) of the chosen samples, per capture name,
    and the samples of the first run (the batch size used)."""
    rows = {k: Rows(v, index) for k, v in mapping.items()}
    feats: dict[str, list[np.ndarray]] = {}
    first = 0

    def consume(run: BatchRun) -> None:
        n = run.samples
        if with_input:
            for k in mapping:
                feats.setdefault(f"input:{k}", []).append(run.batch[k].reshape(n, -1))
        for c in inst.captures:
            if did_not_run(run.captured[c.key]):
                raise InputError(
                    f"{c.name} did not run on these samples (it sits in an If branch not "
                    f"taken): it has no activations to separate; exclude layer {c.layer!r}"
                )
            t = inst.batch_first(c.key, run.captured[c.key], n)
            feats.setdefault(c.name, []).append(t.reshape(n, -1).astype(np.float32))

    for run in inst.stream(rows, batch_size, consume, progress=progress, constants=constants):
        first = first or run.samples
    return {k: np.concatenate(v) for k, v in feats.items()}, first


def _pair_counts(f: np.ndarray, groups: list[np.ndarray], max_bytes: int) -> np.ndarray:
    """K x K cross-edge counts, reusing one distance matrix per layer when it fits."""
    k = len(groups)
    s = np.full((k, k), -1, dtype=np.int64)
    offsets = np.cumsum([0] + [len(g) for g in groups])
    full = squared_distances(f) if len(f) ** 2 * 8 <= max_bytes else None
    for i in range(k):
        for j in range(i + 1, k):
            a = np.arange(offsets[i], offsets[i + 1])
            b = np.arange(offsets[j], offsets[j + 1])
            if full is not None:
                both = np.concatenate([a, b])
                edges = mst_edges(f[both], d2=full[np.ix_(both, both)])
                side = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
                s[i, j] = s[j, i] = int(np.sum(side[edges[:, 0]] != side[edges[:, 1]]))
            else:
                s[i, j] = s[j, i] = cross_edges(f[a], f[b], max_bytes)
    return s


def _pca2(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    x = np.concatenate([a, b]).astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    return {"coords": coords.tolist(), "side": [0] * len(a) + [1] * len(b)}


def separation(
    model: str | os.PathLike[str] | ModelProto,
    data: Any,
    *,
    labels: Any,
    attach_to: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str = (),
    method: Method = "after",
    neuron_axes: Mapping[str, int] | None = None,
    samples_per_class: int | None = 100,
    test_data: Any = None,
    test_labels: Any = None,
    draw: Literal["first", "random"] = "first",
    seed: int = 0,
    include_input: bool = True,
    batch_size: int | None = None,
    constants: Mapping[str, Any] | None = None,
    max_matrix_bytes: int = 1 << 30,
    pca_pair: tuple[int, int] | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    optimization: Optimization = "all",
    progress: bool | None = False,
) -> SeparationResult:
    """Henze–Penrose separation of every class pair at every captured layer.

    Parameters
    ----------
    model:
        A .onnx path or a ModelProto.
    data, labels:
        Training inputs with random access (arrays, paths, or dicts of arrays) and their
        class labels.
    attach_to, exclude, method, neuron_axes:
        The layers (as for ``analyze``); each output is flattened, so neuron axes only
        need to be valid.
    samples_per_class:
        Samples drawn per class; None uses every sample.
    test_data, test_labels:
        A second split, measured the same way.
    draw:
        The first *samples_per_class* of each class, or a seeded random draw.
    seed:
        Seed of the random draw.
    include_input:
        Measure the raw input as a layer too.
    batch_size, constants:
        Batching and constant inputs (as for ``analyze``).
    max_matrix_bytes:
        Largest distance matrix kept in memory (see README, "Class separation").
    pca_pair:
        Two class labels whose 2-D PCA projection is kept at each layer, for plotting.
    providers, threads, optimization:
        The onnxruntime session (as for ``analyze``).
    progress:
        Show progress bars (the runs, then the MSTs layer by layer); None shows them when
        stderr is a terminal.
    """
    if draw not in ("first", "random"):
        raise InputError(f"draw must be 'first' or 'random', got {draw!r}")
    if samples_per_class is not None and samples_per_class < 2:
        raise InputError(f"samples_per_class must be at least 2, got {samples_per_class}")
    inst = Instrumented(
        model, attach_to=attach_to, exclude=exclude, method=method, neuron_axes=neuron_axes,
        literal=True, providers=providers, threads=threads, optimization=optimization,
    )  # fmt: skip
    splits = {"train": (data, labels)}
    if test_data is not None:
        if test_labels is None:
            raise InputError("test_data needs test_labels")
        splits["test"] = (test_data, test_labels)
    classes: list[int] | None = None
    cross: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, list[int]] = {}
    pca: dict[str, Any] = {}
    names: list[str] = []
    run_size = 0
    for split, (x, y) in splits.items():
        fixed = inst.constants(constants)
        batched = [s.name for s in data_specs(inst.specs, fixed)]
        x = as_inputs(open_data(x), batched)
        if x is None:
            raise InputError(f"{split}: separation needs arrays with random access, not batches")
        y = labels_array(y)
        first = next(iter(x.values()))
        n_data = first.shape[0] if hasattr(first, "shape") else len(first)
        if len(y) != n_data:
            raise InputError(f"{split}: {len(y)} labels for {n_data} samples; they must match")
        found = sorted(np.unique(y).tolist())
        classes = found if classes is None else classes
        if len(classes) < 2:
            raise InputError(f"{split}: separation needs at least two classes, found {found}")
        if found != classes:
            raise InputError(f"{split} has classes {found} but train has {classes}")
        groups = _choose(y, classes, samples_per_class, draw, seed)
        feats, size = _features(inst, x, np.concatenate(groups), batch_size, include_input, fixed,
                                progress)  # fmt: skip
        run_size = run_size or size
        names = list(feats)
        offsets = np.cumsum([0] + [len(g) for g in groups])
        local = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(groups))]
        with progress_bar(len(feats), progress, "layer", f"MSTs ({split})") as bar:
            cross[split] = {}
            for name, f in feats.items():
                cross[split][name] = _pair_counts(f, local, max_matrix_bytes)
                bar.update(1)
        sizes[split] = [len(g) for g in groups]
        if pca_pair is not None and split == "train":
            missing = [c for c in pca_pair if c not in classes]
            if missing:
                raise InputError(f"pca_pair names class(es) {missing} not among {classes}")
            i, j = (classes.index(c) for c in pca_pair)
            pca = {n: _pca2(f[local[i]], f[local[j]]) for n, f in feats.items()}
            pca["pair"] = list(pca_pair)
    from onnx_state.results import RunRecord

    run = RunRecord.of_session(inst, providers, threads, optimization, run_size or None)
    return SeparationResult(classes or [], names, cross, sizes, pca, run=run.to_dict())


def separation_tests(
    a: SeparationResult,
    b: SeparationResult | None = None,
    layers: bool = False,
    split: str = "train",
    formula: Formula = "friedman_rafsky",
    n: int = 10_000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Permutation tests: each layer of *a* vs the same layer of *b* (stage A vs stage B),
    or, with *layers*, layer k vs layer k+1 of *a*."""
    rows = []
    if layers:
        for la, lb in zip(a.layers, a.layers[1:]):
            va, vb = a.values(la, split, formula), a.values(lb, split, formula)
            diff, p = permutation_test(va, vb, n, seed)
            rows.append(_test_row(la, lb, va, vb, diff, p))
        return rows
    if b is None:
        raise InputError("give a second result, or compare consecutive layers with layers=True")
    common = [la for la in a.layers if la in b.layers]
    if not common:
        raise InputError("the two results share no layer")
    for la in common:
        va, vb = a.values(la, split, formula), b.values(la, split, formula)
        diff, p = permutation_test(va, vb, n, seed)
        rows.append(_test_row(la, la, va, vb, diff, p))
    return rows


def _test_row(
    a: str, b: str, va: np.ndarray, vb: np.ndarray, diff: float, p: float
) -> dict[str, Any]:
    return {"a": a, "b": b, "mean_a": float(va.mean()), "mean_b": float(vb.mean()),
            "diff": diff, "p": p, "pairs": len(va)}  # fmt: skip


def tests_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table ``separation-test`` prints for ``separation_tests`` rows."""
    lines = [f"{'A':28s} {'B':28s} {'mean A':>8s} {'mean B':>8s} {'diff':>8s} {'p':>8s}"]
    for r in rows:
        lines.append(f"{r['a'][:28]:28s} {r['b'][:28]:28s} {r['mean_a']:8.4f} {r['mean_b']:8.4f} "
                     f"{r['diff']:+8.4f} {r['p']:8.4f}")  # fmt: skip
    lines.append("class pairs share classes, so they are not independent: read p as a guide")
    return "\n".join(lines)


def first_classes(labels: Any) -> tuple[int, int]:
    """The two smallest class labels in *labels* (the default pair for PCA plots)."""
    found = sorted(np.unique(labels_array(labels)).tolist())[:2]
    if len(found) < 2:
        raise InputError(f"separation needs at least two classes, found {found}")
    return found[0], found[1]
