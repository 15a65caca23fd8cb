"""Size and build time of the HTML report: the bundled example, and a synthetic 100-layer model.

    python benchmarks/bench_report.py [--layers 100] [--out DIR]

The example is analysed (LeNet-5 on the 1,797 digits) and reported alone; the synthetic model
(tests/test_report.py ``synthetic``: layers of 16-512 neurons with 50-3,000 distinct states,
a comparison, an audit and a 10-class separation result over the same layers) is reported
with every section. Prints each report's size (budget: 2 MB for 100 layers) and build time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import onnx_state
from onnx_state.capture import load_array
from onnx_state.data import example_paths
from onnx_state.report import save_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' synthetic results
from tests.test_report import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="Keep the reports here.")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    model, data, labels = example_paths()
    a = onnx_state.analyze(model, np.asarray(load_array(data)), labels=labels, progress=False)
    rows = []
    for name, results in (
        ("example (LeNet-5, 4 layers, analysis)", {"analysis": a}),
        (f"synthetic {args.layers} layers, every section", synthetic(args.layers)),
    ):
        start = time.perf_counter()
        path = save_report(out / f"{name.split()[0]}.html", overwrite=True, **results)
        rows.append((name, path.stat().st_size, time.perf_counter() - start))
    for name, size, seconds in rows:
        print(f"{name:45s} {size / 1e6:7.3f} MB {seconds:7.2f} s")
    print(f"reports in {out}")


if __name__ == "__main__":
    main()
