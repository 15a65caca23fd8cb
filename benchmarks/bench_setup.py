"""Building the instrumented session: weights handed over from memory vs serialized.

    python benchmarks/bench_setup.py [--model NAME ...] [--repeat 5] [--folder DIR]

For each benchmark architecture (benchmarks/architectures.py, built once into --folder), in
one process after onnxruntime's environment exists, alternating: ``Instrumented(path)`` and
its ``session`` with the weights handed to onnxruntime as in-memory external data
(``capture.weights.detach_weights``, the default) and with that step switched off (the
model serialized with its weights, as before), plus a plain onnxruntime session of the file.
Medians of --repeat; the instrumented model's capture selection is the architecture's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.architectures import MODELS, build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", choices=sorted(MODELS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--folder", help="where the models are built (and reused)")
    args = ap.parse_args()
    from onnx_state.capture import Instrumented, make_session
    from onnx_state.capture import session as session_module

    folder = Path(args.folder or tempfile.mkdtemp(prefix="onnx_state-setup-"))
    supported = session_module.memory_files_supported
    print("model          file MB  plain  serialized  from memory  (session build, ms)")
    for name in args.model or list(MODELS):
        path = build(name, folder)
        attach = list(MODELS[name].attach_to) if MODELS[name].attach_to else None
        make_session(str(path))  # onnxruntime's environment: once per process, not timed
        times: dict[str, list[float]] = {"plain": [], "serialized": [], "from memory": []}
        for _ in range(args.repeat):
            t = time.perf_counter()
            make_session(str(path), threads=2)
            times["plain"].append(time.perf_counter() - t)
            for mode in ("serialized", "from memory"):
                session_module.memory_files_supported = (  # type: ignore[assignment]
                    supported if mode == "from memory" else (lambda: False)
                )
                inst = Instrumented(path, attach_to=attach, threads=2)
                t = time.perf_counter()
                inst.session  # noqa: B018 (built on first use)
                times[mode].append(time.perf_counter() - t)
                del inst
        session_module.memory_files_supported = supported
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"{name:14s} {path.stat().st_size / 1e6:7.1f} {ms['plain']:6.1f} "
              f"{ms['serialized']:11.1f} {ms['from memory']:12.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
