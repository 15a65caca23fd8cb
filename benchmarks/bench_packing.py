"""The observer effect of capturing every Conv, literal float maps vs packed bits.

    python benchmarks/bench_packing.py [--nets resnet,yolo] [--batch-size 8] [--batches 16]
                                       [--threads 2] [--smoke]

Two CNNs built here with onnx.helper and random weights: a ResNet-style net (Conv + BN +
ReLU, residual Adds, 32-64-128 channels, 64x64 input) and a YOLO-style net (Conv + SiLU,
C2f blocks with Split/Concat, SPPF max pools, nearest Resize, two heads, 128x128 input).
Every Conv output is captured. Variants, run in one process, batch by batch in turn:

- ``plain``: the model as it is;
- ``literal``: every Conv output added as a float graph output (what ``add_outputs`` does);
- ``literal-no-nchwc``: the same with onnxruntime's NchwcTransformer disabled (the only
  per-session switch there is; it cannot be limited to the captured Convs);
- ``packed``: ``add_packed_outputs`` (``scale`` route: stays in NCHWc, bits leave as bytes);
- ``packed-compare``: ``add_packed_outputs(method="compare")`` (Greater, out of NCHWc).

Printed per variant: wall time per batch (median and min over the batches), ÷ plain, the
process CPU time per batch (median; with --no-spin it measures work alone, which a loaded
machine disturbs far less than wall time), the ReorderOutput nodes of onnxruntime's
optimized graph, and the bytes leaving the graph per batch. Then checks: packed bytes ==
np.packbits(literal > 0, axis=1, bitorder="little") on every batch, the original outputs
bitwise equal to the literal model's, and their max |diff| from the plain model's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_state.capture.pack import PackRequest, add_packed_outputs
from onnx_state.count.counter import StateCounter


class NetBuilder:
    """Nodes and random initializers of one net; ``convs`` lists (output, channels)."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.k = 0
        self.convs: list[tuple[str, int]] = []

    def name(self, prefix: str) -> str:
        self.k += 1
        return f"{prefix}{self.k}"

    def const(self, a: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        return self.node(op, inputs, **attrs)[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        out = self.op("Conv", [x, self.const(w), self.const(b, "b")], kernel_shape=[k, k],
                      strides=[stride, stride], pads=[k // 2] * 4)  # fmt: skip
        self.convs.append((out, cout))
        return out

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c),
                  r.uniform(0.5, 1.5, c)]  # fmt: skip
        return self.op(
            "BatchNormalization", [x, *(self.const(p.astype(np.float32)) for p in params)]
        )

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, hw: int, outputs: list[str]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "net", [x], outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


def resnet(seed: int = 0) -> tuple[onnx.ModelProto, list[tuple[str, int]], int]:
    """ResNet-style: stem Conv-BN-ReLU, 3 stages x 2 basic blocks (32/64/128), GAP, Gemm."""
    b = NetBuilder(seed)
    x = b.op("Relu", [b.bn(b.conv("x", 3, 32), 32)])
    cin = 32
    for stage, c in enumerate((32, 64, 128)):
        for block in range(2):
            stride = 2 if block == 0 and stage > 0 else 1
            y = b.op("Relu", [b.bn(b.conv(x, cin, c, 3, stride), c)])
            y = b.bn(b.conv(y, c, c), c)
            short = x if stride == 1 and cin == c else b.bn(b.conv(x, cin, c, 1, stride), c)
            x, cin = b.op("Relu", [b.op("Add", [y, short])]), c
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    fc = b.const(b.rng.normal(0, 0.1, (10, cin)).astype(np.float32))
    y = b.op("Gemm", [flat, fc, b.const(np.zeros(10, np.float32), "b")], transB=1)
    return b.model(64, [y]), b.convs, 64


def yolo(seed: int = 0, w: int = 16) -> tuple[onnx.ModelProto, list[tuple[str, int]], int]:
    """YOLOv8-style: Conv-SiLU, C2f (Split, bottlenecks, Concat), SPPF, Resize, 2 heads."""
    b = NetBuilder(seed)

    def cbs(x: str, ci: int, co: int, k: int = 3, stride: int = 1) -> str:
        return b.silu(b.conv(x, ci, co, k, stride))

    def c2f(x: str, ci: int, co: int, n: int = 1, shortcut: bool = True) -> str:
        h = co // 2
        parts = b.node("Split", [cbs(x, ci, co, 1), b.const(np.array([h, h]), "split")], 2, axis=1)
        cur = parts[-1]
        for _ in range(n):
            z = cbs(cbs(cur, h, h), h, h)
            cur = b.op("Add", [cur, z]) if shortcut else z
            parts.append(cur)
        return cbs(b.op("Concat", parts, axis=1), h * (2 + n), co, 1)

    x = cbs(cbs("x", 3, w, 3, 2), w, 2 * w, 3, 2)
    x = c2f(x, 2 * w, 2 * w)
    p3 = c2f(cbs(x, 2 * w, 4 * w, 3, 2), 4 * w, 4 * w, 2)
    p4 = c2f(cbs(p3, 4 * w, 8 * w, 3, 2), 8 * w, 8 * w, 2)
    x = c2f(cbs(p4, 8 * w, 16 * w, 3, 2), 16 * w, 16 * w)
    y = cbs(x, 16 * w, 8 * w, 1)
    m1 = b.op("MaxPool", [y], kernel_shape=[5, 5], pads=[2] * 4)
    m2 = b.op("MaxPool", [m1], kernel_shape=[5, 5], pads=[2] * 4)
    p5 = cbs(b.op("Concat", [y, m1, m2], axis=1), 24 * w, 16 * w, 1)
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    up = b.op("Resize", [p5, "", scales], mode="nearest")
    h4 = c2f(b.op("Concat", [up, p4], axis=1), 24 * w, 8 * w, 1, False)
    up = b.op("Resize", [h4, "", scales], mode="nearest")
    h3 = c2f(b.op("Concat", [up, p3], axis=1), 12 * w, 4 * w, 1, False)
    outs = []
    for h, c in ((h3, 4 * w), (h4, 8 * w)):
        box = b.conv(cbs(cbs(h, c, 4 * w), 4 * w, 4 * w), 4 * w, 64, 1)
        cls = b.conv(cbs(cbs(h, c, 4 * w), 4 * w, 4 * w), 4 * w, 16, 1)
        outs.append(b.op("Concat", [box, cls], axis=1))
    return b.model(128, outs), b.convs, 128


NETS: dict[str, Callable[[], tuple[onnx.ModelProto, list[tuple[str, int]], int]]] = {
    "resnet": resnet,
    "yolo": yolo,
}


def literal(model: onnx.ModelProto, convs: list[tuple[str, int]]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, _ in convs:
        out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def packed(model: onnx.ModelProto, convs: list[tuple[str, int]], method: Any) -> onnx.ModelProto:
    requests = [PackRequest(name, 1, 4, c) for name, c in convs]
    return add_packed_outputs(model, requests, method=method)[0]


SPIN = {"session.force_spinning_stop": "1"}  # what onnx_state's sessions use on the CPU


def session(
    model: onnx.ModelProto, threads: int, no_nchwc: bool, optimized: str | None = None
) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for key, value in SPIN.items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    disabled = ["NchwcTransformer"] if no_nchwc else None
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"],
                                disabled_optimizers=disabled)  # fmt: skip


def optimized_ops(model: onnx.ModelProto, threads: int, no_nchwc: bool) -> Counter[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        session(model, threads, no_nchwc, path)
        return Counter(n.op_type for n in onnx.load(path).graph.node)


def bench(net: str, batch_size: int, batches: int, threads: int) -> None:
    model, convs, hw = NETS[net]()
    variants = {
        "plain": (model, False),
        "literal": (literal(model, convs), False),
        "literal-no-nchwc": (literal(model, convs), True),
        "packed": (packed(model, convs, "auto"), False),
        "packed-compare": (packed(model, convs, "compare"), False),
    }
    sessions = {k: session(m, threads, off) for k, (m, off) in variants.items()}
    rng = np.random.default_rng(1)
    data = [rng.normal(size=(batch_size, 3, hw, hw)).astype(np.float32) for _ in range(batches)]
    for s in sessions.values():  # warm up
        s.run(None, {"x": data[0]})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    out_bytes: dict[str, int] = {}
    n_out = len(model.graph.output)
    exact = parity = True
    worst = 0.0
    counters: dict[str, list[StateCounter]] = {
        k: [StateCounter(c) for _, c in convs] for k in ("literal", "packed")
    }
    count_s = {k: 0.0 for k in counters}
    can_count_packed = hasattr(StateCounter, "update_packed")  # another branch adds it
    for x in data:
        results = {}
        for k, s in sessions.items():
            t, c = time.perf_counter(), time.process_time()
            results[k] = s.run(None, {"x": x})
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
            out_bytes[k] = sum(a.nbytes for a in results[k])
        lit = results["literal"]
        for k in ("packed", "packed-compare"):
            got = [a for a in results[k][n_out:] if a.dtype == np.uint8]
            want = [np.packbits(t > 0, axis=1, bitorder="little") for t in lit[n_out:]]
            exact &= len(got) == len(want) and all(map(np.array_equal, got, want))
            parity &= all(
                a.tobytes() == b.tobytes() for a, b in zip(lit[:n_out], results[k][:n_out])
            )
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in
                             zip(results["plain"][:n_out], lit[:n_out])))  # fmt: skip
        t = time.perf_counter()
        for counter, a in zip(counters["literal"], lit[n_out:]):
            counter.update(a, 1)
        count_s["literal"] += time.perf_counter() - t
        if can_count_packed:
            bits = [a for a in results["packed"][n_out:] if a.dtype == np.uint8]
            t = time.perf_counter()
            for counter, a, (_, c) in zip(counters["packed"], bits, convs):
                counter.update_packed(a, 1, c)  # type: ignore[attr-defined]
            count_s["packed"] += time.perf_counter() - t
    print(f"\n{net}: {len(convs)} Conv captured, batch {batch_size}, {batches} batches, "
          f"{threads} threads")  # fmt: skip
    print(f"{'variant':18s} {'median ms':>10s} {'min ms':>8s} {'÷plain':>7s} {'÷plain(min)':>11s} "
          f"{'CPU ms':>7s} {'÷plain':>7s} {'ReorderOutput':>13s} {'nodes':>6s} "
          f"{'bytes out/batch':>16s}")  # fmt: skip
    base, base_min = np.median(times["plain"]), min(times["plain"])
    base_cpu = np.median(cpu["plain"])
    for k, (m, off) in variants.items():
        ops = optimized_ops(m, threads, off)
        med, low, work = np.median(times[k]), min(times[k]), np.median(cpu[k])
        print(f"{k:18s} {med * 1e3:10.2f} {low * 1e3:8.2f} {med / base:7.2f} "
              f"{low / base_min:11.2f} {work * 1e3:7.1f} {work / base_cpu:7.2f} "
              f"{ops['ReorderOutput']:13d} {sum(ops.values()):6d} {out_bytes[k]:16,d}")  # fmt: skip
    print(f"packed bytes == np.packbits(literal > 0): {exact}; original outputs of packed == "
          f"literal bitwise: {parity}; literal vs plain max |diff|: {worst:.3g}")  # fmt: skip
    ms = {k: v / batches * 1e3 for k, v in count_s.items()}
    line = f"counting per batch (one thread): literal floats {ms['literal']:.1f} ms"
    if can_count_packed:
        same = all(np.array_equal(a.state_ids(), b.state_ids()) and
                   np.array_equal(a.counts(), b.counts())
                   for a, b in zip(counters["literal"], counters["packed"]))  # fmt: skip
        line += f", packed bytes {ms['packed']:.1f} ms (same states and counts: {same})"
    else:
        line += "; packed bytes: needs StateCounter.update_packed"
    print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", default="resnet,yolo")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="2 batches of 2: proves it runs")
    p.add_argument("--no-spin", action="store_true",
                   help="idle onnxruntime threads sleep, so CPU ms measures work")  # fmt: skip
    args = p.parse_args()
    if args.no_spin:
        SPIN["session.intra_op.allow_spinning"] = "0"
    batch_size, batches = (2, 2) if args.smoke else (args.batch_size, args.batches)
    for net in args.nets.split(","):
        bench(net, batch_size, batches, args.threads)


if __name__ == "__main__":
    main()
