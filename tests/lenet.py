"""LeNet-5 helpers only the tests need; the builders the examples share stay in examples.lenet."""

from __future__ import annotations

from typing import Any

import numpy as np


def copy_torch_to_keras(net: Any, model: Any) -> None:
    """Give the Keras LeNet-5 the torch one's weights (kernels transposed to HWIO)."""

    def arr(t):
        return t.detach().cpu().numpy()

    for name in ("conv_1", "conv_2", "conv_3"):
        conv = getattr(net, name)
        model.get_layer(name).set_weights([arr(conv.weight).transpose(2, 3, 1, 0), arr(conv.bias)])
    for name in ("norm_1", "norm_2", "norm_3"):
        bn = getattr(net, name)
        model.get_layer(name).set_weights(
            [arr(bn.weight), arr(bn.bias), arr(bn.running_mean), arr(bn.running_var)]
        )
    model.get_layer("pred").set_weights([arr(net.pred.weight).T, arr(net.pred.bias)])


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW digits as the Keras LeNet-5 takes them: channels last, contiguous."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
