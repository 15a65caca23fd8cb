"""Rebuild the bundled example: LeNet-5 trained on scikit-learn's digits, exported to ONNX.

    pip install -e '.[torch]' scikit-learn && python scripts/make_example.py

Writes onnx_state/data/lenet5_digits.onnx and onnx_state/data/digits28.npz. Deterministic on
one machine (seeded); torch kernels may differ in the last bits across machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from exporters.from_torch import export

OUT = Path(__file__).resolve().parents[1] / "onnx_state" / "data"


class LeNet5(nn.Module):
    """The LeNet-5 of TensorState's tutorials: ELU, BatchNorm, max-pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(1, 20, kernel_size=5)
        self.elu_1 = nn.ELU()
        self.norm_1 = nn.BatchNorm2d(20)
        self.maxp_1 = nn.MaxPool2d(2, stride=2)
        self.conv_2 = nn.Conv2d(20, 50, kernel_size=5)
        self.elu_2 = nn.ELU()
        self.norm_2 = nn.BatchNorm2d(50)
        self.maxp_2 = nn.MaxPool2d(2, stride=2)
        self.conv_3 = nn.Conv2d(50, 100, kernel_size=4)
        self.elu_3 = nn.ELU()
        self.norm_3 = nn.BatchNorm2d(100)
        self.flatten = nn.Flatten()
        self.pred = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxp_1(self.norm_1(self.elu_1(self.conv_1(x))))
        x = self.maxp_2(self.norm_2(self.elu_2(self.conv_2(x))))
        x = self.norm_3(self.elu_3(self.conv_3(x)))
        return self.pred(self.flatten(x))


def digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to [0, 1], upsampled 3x and padded to 28x28."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    big = np.kron(images, np.ones((3, 3), dtype=np.float32))  # 24x24
    x = np.pad(big, ((0, 0), (2, 2), (2, 2)))[:, None]
    return x.astype(np.float32), digits.target.astype(np.int64)


def main() -> None:
    torch.manual_seed(0)
    x, y = digits28()
    n_train = int(0.8 * len(x))
    xt, yt = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    model = LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(8):
        model.train()
        order = torch.randperm(n_train)
        for start in range(0, n_train, 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(x[n_train:])).argmax(1).numpy() == y[n_train:]).mean()
        print(f"epoch {epoch + 1}: held-out accuracy {acc:.3f}")
    export(model, torch.from_numpy(x[:2]), OUT / "lenet5_digits.onnx")
    np.savez_compressed(OUT / "digits28.npz", x=x, y=y, n_train=np.int64(n_train))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
