"""analyze() on Dask workers against in-process analyze(threads=1), side by side in one run.

    python benchmarks/bench_distributed.py [--samples 50000] [--chunk 2000] [--repeat 3]
    python benchmarks/bench_distributed.py --smoke     # 5,000 samples, one repeat

The data is a zarr array (on local disk, zstd-compressed) of bundled LeNet-5 digits tiled
with noise. Variants, each timed in the same run, best of --repeat:

* ``in-process``: ``analyze(zarr path, threads=1)`` (counting overlaps on the spare core);
* ``1 worker``: a local cluster of one worker process with one thread;
* ``2 workers``: two worker processes with one thread each.

Cluster start-up is not timed; every cluster runs one small warm-up call first (the session
is built once per worker and cached), and the first, cold call's time is printed too.
Targets: 2 workers >= 1.8x the throughput of 1 worker; 1 worker <= 1.1x the in-process time.

Also measured, for the README's estimate: the bytes each worker read (zarr chunks), the
pickled counter bytes per layer of one range, the time to merge eight range results, and
the peak RSS of each worker.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import onnx_state
from onnx_state.analysis import _AnalyzeRanges
from onnx_state.capture import Instrumented, load_array
from onnx_state.data import example_paths
from onnx_state.distributed import local_cluster


def make_data(path: Path, n: int, chunk: int) -> str:
    import zarr

    _, data, _ = example_paths()
    base = np.asarray(load_array(data))
    rng = np.random.default_rng(0)
    z = zarr.create_array(str(path), shape=(n, 1, 28, 28), chunks=(chunk, 1, 28, 28),
                          dtype=np.float32)  # fmt: skip
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        noise = rng.normal(0, 0.05, (b - a, 1, 28, 28)).astype(np.float32)
        z[a:b] = base[rng.integers(0, len(base), b - a)] + noise
    return str(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class Variant:
    """One way to run analyze: best wall time over the repeats, and its CPU seconds (all
    threads of this process and of the workers), which load on a shared machine bends
    less than wall time."""

    def __init__(self, name: str, run, cpu) -> None:
        self.name, self.run, self.cpu = name, run, cpu
        self.seconds = self.cpu_s = float("inf")
        self.result = None

    def measure(self) -> None:
        c, t = self.cpu(), time.perf_counter()
        self.result = self.run()
        seconds, cpu_s = time.perf_counter() - t, self.cpu() - c
        if seconds < self.seconds:
            self.seconds, self.cpu_s = seconds, cpu_s


def cluster_variant(stack, workers: int, model: str, data: str, warm: str, bs: int):
    from distributed import Client

    cluster = stack.enter_context(local_cluster(workers))  # as cluster=N starts it
    client = stack.enter_context(Client(cluster))
    t = time.perf_counter()
    onnx_state.analyze(model, warm, batch_size=bs, cluster=client, progress=False)
    cold = time.perf_counter() - t

    def cpu() -> float:
        return cpu_seconds() + sum(client.run(cpu_seconds).values())

    v = Variant(f"{workers} worker" + "s" * (workers > 1), lambda: onnx_state.analyze(
        model, data, batch_size=bs, cluster=client, progress=False), cpu)  # fmt: skip
    v.cold, v.client = cold, client
    return v


def range_figures(model: str, data: str, bs: int, range_samples: int) -> dict:
    """Counter bytes shipped per layer for one range, and the time to merge eight."""
    import zarr

    inst = Instrumented(model, threads=1)
    work = _AnalyzeRanges(model, inst.sha256, (None, (), "after", None, False, False, False),
                          (None, 1, "all"), None, bs, {}, False)  # fmt: skip
    context = work.build(1)
    z = zarr.open_array(data, mode="r")
    parts = [
        work.count(context, [{"x": z[a : a + range_samples]}], a, None, None)
        for a in range(0, 8 * range_samples, range_samples)
    ]
    per_layer = {
        c.name: len(pickle.dumps(parts[0].tables[(c.tensor, c.axis)])) for c in inst.captures
    }
    t = time.perf_counter()
    work.merge(parts)
    return {"bytes": per_layer, "merge8": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--chunk", type=int, default=2_000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="5,000 samples, one repeat")
    args = p.parse_args()
    if args.smoke:
        args.samples, args.chunk, args.repeat = 5_000, 500, 1
    model, _, _ = example_paths()
    bs = args.batch_size
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        data = make_data(Path(tmp) / "x.zarr", args.samples, args.chunk)
        warm = make_data(Path(tmp) / "warm.zarr", 2 * bs, bs)
        stored = sum(f.stat().st_size for f in Path(data).rglob("*") if f.is_file())
        local = Variant("in-process", lambda: onnx_state.analyze(
            model, data, batch_size=bs, threads=1, progress=False), cpu_seconds)  # fmt: skip
        one = cluster_variant(stack, 1, model, data, warm, bs)
        two = cluster_variant(stack, 2, model, data, warm, bs)
        for _ in range(args.repeat):  # alternating, so that load shifts hit all alike
            for v in (local, one, two):
                v.measure()
        rss = {v.name: sorted(v.client.run(peak_rss_mb).values()) for v in (one, two)}
        figures = range_figures(model, data, bs, min(args.samples // 8, 4 * args.chunk))
    for v in (one, two):
        got, want = v.result.to_dict(), local.result.to_dict()
        # (the run record says how each ran: the cluster's workers, not this process)
        differ = [k for k in want if k != "run" and got.get(k) != want[k]]
        differ += [f"{a['name']}.{k}" for a, b in zip(got["layers"], want["layers"])
                   for k in b if a.get(k) != b[k]]  # fmt: skip
        assert not differ, f"{v.name} differs from in-process in {differ}"
        print(f"run record, {v.name}: {got['run']}\nrun record, in-process: {want['run']}")
    n = args.samples
    print(f"{n} samples ({stored / 1e6:.1f} MB of zarr chunks of {args.chunk}), batch {bs}, "
          f"best of {args.repeat}; results identical: yes")  # fmt: skip
    print(f"{'variant':12s} {'seconds':>8s} {'samples/s':>10s} {'CPU s':>7s} {'cold call':>10s}"
          "  peak RSS")  # fmt: skip
    print(f"{'in-process':12s} {local.seconds:8.3f} {n / local.seconds:10.0f} "
          f"{local.cpu_s:7.2f} {'':>10s}  {peak_rss_mb():.0f} MB (this process)")  # fmt: skip
    for v in (one, two):
        per = ", ".join(f"{m:.0f}" for m in rss[v.name])
        print(f"{v.name:12s} {v.seconds:8.3f} {n / v.seconds:10.0f} {v.cpu_s:7.2f} "
              f"{v.cold:10.3f}  {per} MB per worker")  # fmt: skip
    print(f"2 workers / 1 worker throughput: {one.seconds / two.seconds:.2f}x (target >= 1.8)")
    print(f"1 worker / in-process time: {one.seconds / local.seconds:.2f}x (target <= 1.1); "
          f"CPU seconds {one.cpu_s / local.cpu_s:.2f}x")  # fmt: skip
    print(f"bytes read per worker (2 workers): {stored / 2 / 1e6:.1f} MB compressed, "
          f"{n * 28 * 28 * 4 / 2 / 1e6:.1f} MB decoded")  # fmt: skip
    rs = min(args.samples // 8, 4 * args.chunk)
    for layer, size in figures["bytes"].items():
        print(f"counter bytes shipped for one range of {rs} samples, {layer}: {size}")
    print(f"merge of 8 range results: {figures['merge8'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
