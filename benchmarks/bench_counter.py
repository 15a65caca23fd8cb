"""The state counter against numpy, side by side in one run: layouts, dtypes, packed input.

    python benchmarks/bench_counter.py [--repeat 3] [--quick]

For each case it prints nanoseconds per value of: ``x.sum()`` (one read of the data),
``StateCounter().update`` (one thread), ``count_states(threads=2)``, and numpy's best way
to count the same states, ``np.unique`` on the packed rows viewed as single (void) items;
then numpy / one thread and one thread / two threads. Cases: conv maps (neurons on axis 1,
NCHW) and neurons-last tensors (MatMul, Gemm, LSTM outputs: (rows, hidden)) in float32,
float16 and bool; int8 with per-channel zero points and int32 accumulators; bits packed
beforehand (uint8 from ``np.packbits``), as the capture stage can hand them over. Every
case is checked against numpy's counts before it is timed. Run by hand; not a test.
Each case has about 2**25 values (``--quick``: 2**20, timed once, to prove the script
works).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from onnx_state.count import StateCounter, count_states


def numpy_unique_rows(x: np.ndarray, axis: int, zero_point: Any = None) -> np.ndarray:
    """Counts of the distinct states, numpy's fastest way: threshold, packbits along the
    neuron axis, view each packed row as one void item, np.unique(return_counts=True)."""
    if x.dtype == np.uint8 and zero_point == "packed":
        rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    else:
        z = 0 if zero_point is None else zero_point
        if np.ndim(z):
            z = np.reshape(z, [-1 if a == axis else 1 for a in range(x.ndim)])
        bits = np.moveaxis(x > z, axis, -1)
        rows = np.packbits(bits, axis=-1, bitorder="little").reshape(-1, bits.shape[-1] + 7 >> 3)
    rows = np.ascontiguousarray(rows)
    items = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    return np.unique(items, return_counts=True)[1]


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def latent_states(rng: np.random.Generator, rows: int, neurons: int, latent: int) -> np.ndarray:
    """(rows, neurons) float32 activations whose neurons mix a few latent binary features,
    so there are at most 2**latent distinct states (like a trained layer)."""
    z = np.sign(rng.standard_normal((rows, latent), dtype=np.float32))
    mix = rng.standard_normal((latent, neurons)).astype(np.float32)
    return z @ mix


def conv_map(rng: np.random.Generator, n: int, c: int, hw: int, latent: int) -> np.ndarray:
    """(n, c, hw, hw) float32, NCHW, built the same way per position."""
    x = latent_states(rng, n * hw * hw, c, latent).reshape(n, hw, hw, c)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def quantize(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 per-channel (along *axis*) quantization of x, and the zero points
    (c % 21 - 10 for channel c)."""
    shape = [-1 if a == axis else 1 for a in range(x.ndim)]
    zp = np.arange(x.shape[axis]) % 21 - 10
    scale = np.abs(x).max() / 100
    q = np.clip(np.round(x / scale) + zp.reshape(shape), -128, 127).astype(np.int8)
    return q, zp.astype(np.int8)


Case = tuple[str, Callable[[], np.ndarray], int, dict[str, Any]]


def cases(size: int) -> list[Case]:
    """(name, make the array, neuron axis, StateCounter options); about *size* values each
    (8 * size bits for packed input), made one at a time."""
    rng = np.random.default_rng(0)
    per_map = 64 * 24 * 24

    def conv() -> np.ndarray:
        return conv_map(rng, max(1, size // per_map), 64, 24, 12)

    def last(neurons: int) -> Callable[[], np.ndarray]:
        return lambda: latent_states(rng, size // neurons, neurons, 12)

    def q(make: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: quantize(make(), 1)[0]

    zp = (np.arange(256) % 21 - 10).astype(np.int8)  # quantize()'s zero points
    zp64 = zp[:64]
    return [
        ("conv NCHW f32 (N,64,24,24)", conv, 1, {}),
        ("conv NCHW f32, iid noise", lambda: rng.standard_normal(conv().shape, np.float32), 1, {}),
        ("last f32 (rows,256)", last(256), 1, {}),
        ("last f32 (rows,16)", last(16), 1, {}),
        ("last f32 (rows,1024)", last(1024), 1, {}),
        ("conv NCHW f16", lambda: conv().astype(np.float16), 1, {}),
        ("last f16 (rows,256)", lambda: last(256)().astype(np.float16), 1, {}),
        ("last bool (rows,256)", lambda: last(256)() > 0, 1, {}),
        ("conv int8, zp per channel", q(conv), 1, {"zero_point": zp64}),
        ("last int8, zp per channel", q(last(256)), 1, {"zero_point": zp}),
        ("last int32 accumulator", lambda: np.round(last(256)() * 1000).astype(np.int32), 1, {}),
        (
            "conv packed uint8 (N,8,24,24)",
            lambda: np.packbits(conv() > 0, axis=1, bitorder="little"),
            1,
            {"neurons": 64, "packed": True},
        ),
        (
            "last packed uint8 (rows,32)",
            lambda: np.packbits(last(256)() > 0, axis=1, bitorder="little"),
            1,
            {"neurons": 256, "packed": True},
        ),
    ]


def run_case(name: str, x: np.ndarray, axis: int, options: dict[str, Any], repeat: int) -> None:
    """Check one case against numpy, then time and print it."""
    ref_zp = "packed" if options.get("packed") else options.get("zero_point")

    def one() -> StateCounter:
        return StateCounter(**options).update(x, axis)

    def two() -> StateCounter:
        return count_states(x, axis, threads=2, counter=StateCounter(**options))

    want = numpy_unique_rows(x, axis, ref_zp)
    assert np.array_equal(np.sort(one().counts()), np.sort(want)), name
    assert np.array_equal(np.sort(two().counts()), np.sort(want)), name
    values = x.size * (8 if options.get("packed") else 1)
    t_sum = best(x.sum, repeat)
    t_one = best(one, repeat)
    t_two = best(two, repeat)
    t_np = best(lambda: numpy_unique_rows(x, axis, ref_zp), 1)
    ns = 1e9 / values
    print(
        f"{name:32s} {values:11d} {t_sum * ns:6.2f} {t_one * ns:6.2f} {t_two * ns:6.2f}"
        f" {t_np * ns:6.2f} {t_np / t_one:6.1f} {t_one / t_two:6.2f} {len(want):7d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small arrays, once: a smoke run")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    print("ns per value (per neuron of a state; packed input: 8 per byte)")
    print(
        f"{'case':32s} {'values':>11s} {'sum':>6s} {'thr=1':>6s} {'thr=2':>6s} {'numpy':>6s}"
        f" {'np/t1':>6s} {'t1/t2':>6s} {'uniq':>7s}"
    )
    for name, make, axis, options in cases(1 << (20 if args.quick else 25)):
        run_case(name, make(), axis, options, repeat)


if __name__ == "__main__":
    main()
