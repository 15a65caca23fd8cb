"""Rebuild the bundled example: LeNet-5 trained on scikit-learn's digits, exported to ONNX.

    pip install -e '.[torch]' scikit-learn && python -m examples.make_bundled_model

Writes onnx_state/data/lenet5_digits.onnx and onnx_state/data/digits28.npz. Seeded; torch
kernels may differ in the last bits across machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples.lenet import digits28, torch_lenet5, train_torch
from exporters.from_torch import export

OUT = Path(__file__).resolve().parents[1] / "onnx_state" / "data"


def main() -> None:
    import torch

    torch.manual_seed(0)
    x, y = digits28()
    n_train = int(0.8 * len(x))
    net = torch_lenet5()
    train_torch(net, x[:n_train], y[:n_train])
    with torch.no_grad():
        acc = (net(torch.from_numpy(x[n_train:])).argmax(1).numpy() == y[n_train:]).mean()
    print(f"held-out accuracy {acc:.3f}")
    export(net, torch.from_numpy(x[:2]), OUT / "lenet5_digits.onnx")
    np.savez_compressed(OUT / "digits28.npz", x=x, y=y, n_train=np.int64(n_train))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
