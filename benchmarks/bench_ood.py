"""Out-of-distribution detection on the bundled LeNet-5 / digits: Hamming novelty vs softmax.

    python benchmarks/bench_ood.py [--calibration 120] [--json] [--no-exact]
    python benchmarks/bench_ood.py --kernel [--queries 2000]

The reference store is ``analyze`` of the model's own training digits (the first 80 %, with
labels, so it holds per-class state sets). The held-out 20 % (360 digits) is split: the
first ``--calibration`` digits calibrate the per-layer thresholds (``audit(calibration=)``),
the rest are the in-distribution test set. Every OOD set has as many samples as that test
set and is built here, offline and seeded, from the test digits (8×8, scaled [0, 1], then
upsampled 3× and padded to 28×28 as the bundled digits are) or from scikit-learn's sample
images:

  uniform        U(0, 1) pixels on the whole 28×28 image
  gaussian       N(digit mean, digit std) pixels on the 24×24 digit area, clipped
  inverted       1 - digit on the 8×8 grid
  photo patches  random 32×32 grey patches of china.jpg / flower.jpg, block-averaged to 8×8
  pixel shuffle  each digit's 64 pixels randomly permuted (same histogram, no strokes)
  rotated 90     digits turned a quarter (near: 0, 1, 8 look alike turned)
  shifted        digits moved 2 pixels of the 8×8 grid right and down (near)
  mixup          the pixelwise mean of two test digits of different classes (near)
  half blank     the lower half of each digit erased (near)

Per set: AUROC and FPR at 95 % TPR of the Hamming novelty score (per predicted class,
layers combined by votes + calibrated ranks), of the strict exact-membership score, and of
the max-softmax-probability baseline; then the means. Nothing is tuned on the OOD sets:
the thresholds come from the calibration digits, the rule and quantile are the defaults.

``--kernel`` times the distance kernel alone, side by side in one run: the conv_2 states of
the reference (50 neurons) as the reference set, held-out conv_2 states as queries, against
numpy brute force (XOR of uint64 words and ``np.bitwise_count`` over every pair); the
distances must be equal.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import onnx_state
from onnx_state.audit import audit
from onnx_state.capture import load_array
from onnx_state.data import example_paths

LAYERS = ["Conv2d", "Linear"]


def embed(small: np.ndarray) -> np.ndarray:
    """8×8 images in [0, 1] as the bundled 28×28 digits: 3× upsampled, padded by 2."""
    big = np.kron(np.clip(small, 0, 1), np.ones((3, 3)))
    out = np.zeros((len(small), 1, 28, 28), dtype=np.float32)
    out[:, 0, 2:26, 2:26] = big
    return out


def ood_sets(test: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The OOD sets, each as many samples as *test* (28×28 digits)."""
    rng = np.random.default_rng(seed)
    n = len(test)
    small = test[:, 0, 2:26:3, 2:26:3]  # back to the 8×8 grid
    sets: dict[str, Callable[[], np.ndarray]] = {
        "uniform": lambda: rng.uniform(0, 1, test.shape).astype(np.float32),
        "gaussian": lambda: embed(rng.normal(small.mean(), small.std(), small.shape)),
        "inverted": lambda: embed(1 - small),
        "photo patches": lambda: embed(_patches(rng, n)),
        "pixel shuffle": lambda: embed(
            np.stack([rng.permutation(s.ravel()).reshape(8, 8) for s in small])
        ),
        "rotated 90": lambda: embed(np.rot90(small, 1, axes=(1, 2))),
        "shifted": lambda: embed(np.roll(np.roll(small, 2, axis=1), 2, axis=2)),
        "mixup": lambda: embed(_mixup(rng, small, labels)),
        "half blank": lambda: embed(np.concatenate([small[:, :4], 0 * small[:, 4:]], axis=1)),
    }
    return {name: make() for name, make in sets.items()}


def _patches(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    grey = [im.mean(axis=2) / 255.0 for im in load_sample_images().images]
    out = np.empty((n, 8, 8))
    for i in range(n):
        im = grey[i % len(grey)]
        r, c = rng.integers(0, im.shape[0] - 32), rng.integers(0, im.shape[1] - 32)
        out[i] = im[r : r + 32, c : c + 32].reshape(8, 4, 8, 4).mean(axis=(1, 3))
    return out


def _mixup(rng: np.random.Generator, small: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.empty_like(small)
    for i in range(len(small)):
        other = rng.choice(np.flatnonzero(labels != labels[i]))
        out[i] = (small[i] + small[other]) / 2
    return out


def kernel_bench(queries: int) -> None:
    """The Hamming kernel (1 and 2 threads) against numpy brute force on conv_2 states."""
    from onnx_state.capture import Instrumented
    from onnx_state.count.hamming import HammingIndex, to_words

    model, data, _ = example_paths()
    x = np.asarray(load_array(data))
    ref = onnx_state.analyze(model, x[:1437], attach_to=["conv_2"], parity=False).layers[0]
    inst = Instrumented(model, attach_to=["conv_2"])
    held = inst.run({"x": x[1437:]}).captured[inst.captures[0].tensor]
    bits = np.moveaxis(held, 1, -1).reshape(-1, held.shape[1]) > 0
    q = np.packbits(bits, axis=1, bitorder="little")[:queries]
    t0 = time.perf_counter()
    index = HammingIndex(ref.state_ids())
    t_index = time.perf_counter() - t0
    times = {}
    for threads in (1, 2):
        t0 = time.perf_counter()
        got = index.min_distances(q, threads=threads)
        times[threads] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rw, qw = to_words(ref.state_ids())[:, 0], to_words(q)[:, 0]
    brute = np.array([np.bitwise_count(rw ^ w).min() for w in qw])
    t_numpy = time.perf_counter() - t0
    assert np.array_equal(got, brute)
    print(f"{len(q)} queries x {len(rw)} reference states (50 neurons): index {t_index:.3f} s, "
          f"kernel 1 thread {times[1]:.3f} s, 2 threads {times[2]:.3f} s, numpy brute force "
          f"{t_numpy:.3f} s ({t_numpy / times[1]:.0f}x the 1-thread kernel); mean distance "
          f"{got.mean():.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=int, default=120,
                        help="held-out digits used for calibration (0: leave-one-out)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact-score column")
    parser.add_argument("--sets", nargs="*", help="only these OOD sets")
    parser.add_argument("--kernel", action="store_true", help="time the distance kernel only")
    parser.add_argument("--queries", type=int, default=2000, help="queries of --kernel")
    args = parser.parse_args()
    if args.kernel:
        kernel_bench(args.queries)
        return

    model, data, labels = example_paths()
    x, y = np.asarray(load_array(data)), np.asarray(load_array(labels))
    n_train = int(0.8 * len(x))  # what trained the bundled model
    held, held_y = x[n_train:], y[n_train:]
    cal = held[: args.calibration] if args.calibration else None
    test, test_y = held[args.calibration :], held_y[args.calibration :]
    sets = ood_sets(test, test_y)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "ref.zarr"
        t0 = time.perf_counter()
        onnx_state.analyze(model, x[:n_train], labels=y[:n_train], attach_to=LAYERS,
                           parity=False).save(ref)  # fmt: skip
        t_ref = time.perf_counter() - t0
        for name, ood in sets.items():
            t0 = time.perf_counter()
            a = audit(model, test, reference=ref, ood_data=ood, calibration=cal,
                      attach_to=LAYERS)  # fmt: skip
            t_audit = time.perf_counter() - t0
            assert a.detection is not None
            row = {"set": name, **a.detection.to_dict(), "seconds": t_audit,
                   "in_flagged": a.ood_fraction}  # fmt: skip
            if not args.no_exact:
                e = audit(model, test, reference=ref, ood_data=ood, novelty="exact",
                          attach_to=LAYERS)  # fmt: skip
                assert e.detection is not None
                row["exact_auroc"], row["exact_fpr95"] = e.detection.auroc, e.detection.fpr95
            rows.append(row)

    keys = ["auroc", "fpr95", "msp_auroc", "msp_fpr95"] + (
        [] if args.no_exact else ["exact_auroc", "exact_fpr95"]
    )
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if args.json:
        print(json.dumps({"rows": rows, "mean": means, "reference_seconds": t_ref,
                          "n_test": len(test), "n_calibration": args.calibration},
                         indent=1, sort_keys=True))  # fmt: skip
        return
    head = f"{'OOD set':14s} {'hamming AUROC':>13s} {'FPR95':>6s}   "
    head += f"{'softmax AUROC':>13s} {'FPR95':>6s}"
    if not args.no_exact:
        head += f"   {'exact AUROC':>11s} {'FPR95':>6s}"
    head += f"   {'flagged':>7s} {'s':>5s}"
    calibrated = args.calibration or "leave one out of the reference"
    print(f"in-distribution: {len(test)} held-out digits; calibration: {calibrated}; "
          f"reference {t_ref:.1f} s")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r['set']:14s} {r['auroc']:13.4f} {r['fpr95']:6.3f}   "
                f"{r['msp_auroc']:13.4f} {r['msp_fpr95']:6.3f}")  # fmt: skip
        if not args.no_exact:
            line += f"   {r['exact_auroc']:11.4f} {r['exact_fpr95']:6.3f}"
        line += f"   {100 * (r['ood_fraction'] or 0):6.1f}% {r['seconds']:5.1f}"
        print(line)
    print("-" * len(head))
    line = (f"{'mean':14s} {means['auroc']:13.4f} {means['fpr95']:6.3f}   "
            f"{means['msp_auroc']:13.4f} {means['msp_fpr95']:6.3f}")  # fmt: skip
    if not args.no_exact:
        line += f"   {means['exact_auroc']:11.4f} {means['exact_fpr95']:6.3f}"
    print(line)
    flagged_in = rows[0]["in_flagged"] if rows else None
    if flagged_in is not None:
        print(f"in-distribution test digits flagged: {100 * flagged_in:.1f}%")


if __name__ == "__main__":
    main()
