"""Quantize the bundled LeNet-5 to int8 (static QDQ) and compare it with the fp32 model.

    python -m examples.int8_audit [OUT_DIR]

Writes OUT_DIR/lenet5_int8.onnx (calibrated on 300 digits; without OUT_DIR, in a
temporary folder that is removed afterwards), then prints ``onnx-state compare`` of fp32 vs
int8 on all 1,797 digits.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from onnx_state.capture import load_array
from onnx_state.compare import compare
from onnx_state.data import example_paths


class Calibration(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self.batches = iter([{"x": x[i : i + 100]} for i in range(0, len(x), 100)])

    def get_next(self):
        return next(self.batches, None)


def main() -> None:
    if len(sys.argv) > 1:
        run(Path(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp))


def run(out: Path) -> None:
    model, data, labels = example_paths()
    x = np.asarray(load_array(data))
    int8 = out / "lenet5_int8.onnx"
    quantize_static(model, int8, Calibration(x[:300]), quant_format=QuantFormat.QDQ)
    print(compare(model, int8, data, labels=labels).table())


if __name__ == "__main__":
    main()
