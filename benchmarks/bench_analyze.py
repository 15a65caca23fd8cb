"""analyze() vs plain onnxruntime inference: same model, data, batch size and threads.

    python benchmarks/bench_analyze.py [--samples 10000] [--batch-size 200] [--threads 2]

Each variant runs in a fresh subprocess (so peak RSS is its own), alternating, best of
--repeat. The model is the bundled LeNet-5; the data are its digits tiled with noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
import onnx_state
from onnx_state.data import example_paths
from onnx_state.capture import load_array
variant, n, bs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, data, _ = example_paths()
base = np.asarray(load_array(data))
rng = np.random.default_rng(0)
x = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.05, (n, 1, 28, 28)).astype(np.float32)
x = x.astype(np.float32)
t = time.perf_counter()
if variant == "plain":
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for i in range(0, n, bs):
        sess.run(None, {"x": x[i:i + bs]})
else:
    a = onnx_state.analyze(model, x, batch_size=bs, threads=threads,
                           parity=(variant == "analyze+parity"), progress=False)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"variant": variant, "seconds": dt, "peak_rss_mb": rss}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    variants = ["plain", "analyze", "analyze+parity"]
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for v in variants:
            cmd = [sys.executable, "-c", CHILD, v, str(args.samples), str(args.batch_size),
                   str(args.threads)]  # fmt: skip
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            if v not in best or out["seconds"] < best[v]["seconds"]:
                best[v] = out
    base = best["plain"]["seconds"]
    print(f"{args.samples} samples, batch {args.batch_size}, {args.threads} threads, best of "
          f"{args.repeat}")  # fmt: skip
    for v in variants:
        b = best[v]
        print(f"{v:16s} {b['seconds']:7.3f} s  ratio {b['seconds'] / base:5.2f}  "
              f"peak RSS {b['peak_rss_mb']:7.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
