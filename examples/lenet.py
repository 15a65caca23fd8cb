"""TensorState's tutorial LeNet-5 in PyTorch and Keras 3, its training, offline digits.

conv_1 20@5x5 ELU → BatchNorm → 2x2 max-pool → conv_2 50@5x5 ELU → BatchNorm → max-pool →
conv_3 100@4x4 ELU → BatchNorm → flatten → dense 10. Frameworks are imported inside the
functions, so this module imports without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to [0, 1], upsampled 3x and padded to 28x28 (NCHW)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    big = np.kron(images, np.ones((3, 3), dtype=np.float32))  # 24x24
    x = np.pad(big, ((0, 0), (2, 2), (2, 2)))[:, None]
    return x.astype(np.float32), digits.target.astype(np.int64)


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The same digits as shipped inside onnx_state (no scikit-learn needed)."""
    from onnx_state.capture import load_array
    from onnx_state.data import example_paths

    _, x, y = example_paths()
    return np.asarray(load_array(x)), np.asarray(load_array(y))


def torch_lenet5() -> Any:
    """The PyTorch tutorial's LeNet5 module (separate ELU modules, like the tutorial)."""
    from torch import nn

    class LeNet5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_1 = nn.Conv2d(1, 20, kernel_size=5)
            self.elu_1 = nn.ELU()
            self.norm_1 = nn.BatchNorm2d(20, eps=1e-5, momentum=0.9)
            self.maxp_1 = nn.MaxPool2d(2, stride=2)
            self.conv_2 = nn.Conv2d(20, 50, kernel_size=5)
            self.elu_2 = nn.ELU()
            self.norm_2 = nn.BatchNorm2d(50, eps=1e-5, momentum=0.9)
            self.maxp_2 = nn.MaxPool2d(2, stride=2)
            self.conv_3 = nn.Conv2d(50, 100, kernel_size=4)
            self.elu_3 = nn.ELU()
            self.norm_3 = nn.BatchNorm2d(100, eps=1e-5, momentum=0.9)
            self.flatten = nn.Flatten()
            self.pred = nn.Linear(100, 10)

        def forward(self, x):
            x = self.maxp_1(self.norm_1(self.elu_1(self.conv_1(x))))
            x = self.maxp_2(self.norm_2(self.elu_2(self.conv_2(x))))
            x = self.norm_3(self.elu_3(self.conv_3(x)))
            return self.pred(self.flatten(x))

    return LeNet5()


def keras_lenet5() -> Any:
    """The Keras tutorial's LeNet-5 (Conv2D with activation='elu'), channels-last input."""
    import keras

    inp = keras.Input((28, 28, 1), name="input")
    x = keras.layers.Conv2D(20, 5, activation="elu", name="conv_1")(inp)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="norm_1")(x)
    x = keras.layers.MaxPool2D((2, 2), name="maxp_1")(x)
    x = keras.layers.Conv2D(50, 5, activation="elu", name="conv_2")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="norm_2")(x)
    x = keras.layers.MaxPool2D((2, 2), name="maxp_2")(x)
    x = keras.layers.Conv2D(100, 4, activation="elu", name="conv_3")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="norm_3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(10, name="pred")(x)
    return keras.Model(inp, out, name="lenet")


def train_torch(net: Any, x: np.ndarray, y: np.ndarray, epochs: int = 8, seed: int = 0) -> None:
    """A short Adam run (enough for ~96 % held-out accuracy on the digits)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
