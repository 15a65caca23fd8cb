"""Counter vs the numpy reference and vs x.sum(), side by side in one run.

    python benchmarks/bench_counter.py [--repeat 3]

Prints the best-of-N time of each and the ratios. Run by hand; not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onnx_state.count import StateCounter, count_states


def numpy_reference(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    bits = np.moveaxis(x > 0, axis, -1).reshape(-1, x.shape[axis])
    packed = np.packbits(bits, axis=1, bitorder="little")
    return np.unique(packed, axis=0, return_counts=True)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def structured(rng: np.random.Generator, shape: tuple[int, ...], latent: int) -> np.ndarray:
    """Activations with realistic state reuse: the channels mix a few latent binary
    features, so there are at most 2**latent distinct states (like a trained layer)."""
    n, c, h, w = shape
    z = np.sign(rng.standard_normal((n, latent, h, w), dtype=np.float32))
    mix = rng.standard_normal((c, latent)).astype(np.float32)
    return np.einsum("nkhw,ck->nchw", z, mix, optimize=True).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = {
        "conv_1 10000x20x24x24 (structured)": structured(rng, (10_000, 20, 24, 24), 8),
        "conv_1 10000x20x24x24 (iid noise)": rng.standard_normal(
            (10_000, 20, 24, 24), dtype=np.float32
        ),
        "big 32x256x56x56 (structured)": structured(rng, (32, 256, 56, 56), 12),
        "big 32x256x56x56 (iid noise)": rng.standard_normal((32, 256, 56, 56), dtype=np.float32),
    }
    print(
        f"{'case':38s} {'sum':>8s} {'thr=1':>8s} {'thr=2':>8s} {'numpy':>8s}"
        f" {'t1/sum':>7s} {'t2/sum':>7s} {'np/t1':>7s} {'uniq':>9s}"
    )
    for name, x in cases.items():
        t_sum = best(lambda x=x: x.sum(), args.repeat)
        t_one = best(lambda x=x: StateCounter().update(x), args.repeat)
        t_two = best(lambda x=x: count_states(x, threads=2), args.repeat)
        t_np = best(lambda x=x: numpy_reference(x, 1), 1)
        ids, counts = numpy_reference(x, 1)
        c = StateCounter().update(x)
        assert c.n_unique == len(ids) and c.state_count == counts.sum()
        print(
            f"{name:38s} {t_sum:8.3f} {t_one:8.3f} {t_two:8.3f} {t_np:8.3f}"
            f" {t_one / t_sum:7.2f} {t_two / t_sum:7.2f} {t_np / t_one:7.1f} {len(ids):9d}"
        )


if __name__ == "__main__":
    main()
