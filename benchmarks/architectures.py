"""Real architectures with random weights, for benchmarks: built here, nothing downloaded.

    python benchmarks/architectures.py FOLDER [--model NAME ...]

Each builder makes a torch module with fixed seeds (random weights, BatchNorm statistics
drawn away from the identity so folding would show), exports it with our exporter
(``exporters.from_torch.export``: BatchNorm unfolded, layer metadata) and saves it. The
int8 model is ``onnxruntime.quantization.quantize_static`` (QDQ, after ``quant_pre_process``,
which folds BatchNorm into Conv) of the ResNet-style one, calibrated on random data. Sizes
are chosen so one batch takes roughly 20-100 ms on two threads.

``MODELS`` maps a name to its ``Arch``: batch size, input maker and the selection the
benchmark captures.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODELS", "Arch", "build", "make_data"]


@dataclass(frozen=True)
class Arch:
    """A benchmark model: how to build it and how to feed and capture it.

    ``shape`` is one sample's input shape; ``vocab`` makes the input int64 token ids below it
    instead of float32 noise. ``attach_to`` is the selection ``analyze`` gets (None: the
    default, Conv/ConvTranspose/Gemm/MatMul).
    """

    name: str
    batch_size: int
    shape: tuple[int, ...]
    attach_to: tuple[str, ...] | None
    description: str
    vocab: int = 0


def _models(*archs: Arch) -> dict[str, Arch]:
    return {a.name: a for a in archs}


MODELS = _models(
    Arch("yolo", 8, (3, 128, 128), ("Conv",),
         "YOLOv8n-style detector: Conv-BN-SiLU, C2f Split/Concat, SPPF, Resize, DFL head"),
    Arch("resnet50", 8, (3, 112, 112), ("Conv",),
         "ResNet-50-style: 53 convs in bottlenecks [3, 4, 6, 3], BN + ReLU, residual Adds"),
    Arch("bert", 8, (64,), ("MatMul", "Gemm"),
         "BERT-style encoder: embeddings, 4 layers of 4-head attention, GELU, LayerNorm",
         vocab=1000),
    Arch("ocr", 16, (1, 32, 128), ("Conv", "LSTM", "MatMul"),
         "CRNN OCR: Conv-BN-ReLU stack, 2-layer bidirectional LSTM, Linear over 80 classes"),
    Arch("resnet50_qdq", 8, (3, 112, 112), ("Conv",),
         "the ResNet-50-style model in int8 QDQ (quantize_static, random calibration)"),
)  # fmt: skip


def make_data(arch: Arch, n: int, seed: int = 0) -> np.ndarray:
    """*n* samples of input for *arch* (float32 noise or int64 token ids), reproducibly."""
    rng = np.random.default_rng(seed)
    if arch.vocab:
        return rng.integers(0, arch.vocab, (n, *arch.shape), dtype=np.int64)
    return rng.standard_normal((n, *arch.shape), dtype=np.float32)


# -- torch modules (torch imported inside the builders only) -----------------------------------
def _randomize_norms(net: Any) -> None:
    """Draw BatchNorm statistics and affine parameters away from the identity."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)


def _yolo() -> Any:
    import torch
    from torch import nn

    class ConvBN(nn.Module):  # YOLOv8's Conv: Conv2d (no bias) + BatchNorm2d + SiLU
        def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x: Any) -> Any:
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool) -> None:
            super().__init__()
            self.cv1, self.cv2, self.add = ConvBN(c, c, 3), ConvBN(c, c, 3), shortcut

        def forward(self, x: Any) -> Any:
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):  # cv1 -> Split in two -> n bottlenecks -> Concat -> cv2
        def __init__(self, c1: int, c2: int, n: int, shortcut: bool = True) -> None:
            super().__init__()
            self.c = c2 // 2
            self.cv1 = ConvBN(c1, 2 * self.c)
            self.cv2 = ConvBN((2 + n) * self.c, c2)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x: Any) -> Any:
            y = list(self.cv1(x).split((self.c, self.c), 1))
            for m in self.m:
                y.append(m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1: int, c2: int) -> None:
            super().__init__()
            self.cv1, self.cv2 = ConvBN(c1, c1 // 2), ConvBN(c1 // 2 * 4, c2)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x: Any) -> Any:
            y = [self.cv1(x)]
            for _ in range(3):
                y.append(self.pool(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class Head(nn.Module):  # per scale: box (4 x 16 DFL bins) and class branches
        def __init__(self, chs: tuple[int, ...], nc: int = 80, reg: int = 16) -> None:
            super().__init__()
            self.nc, self.reg = nc, reg
            c2, c3 = max(16, chs[0] // 4, 4 * reg), max(chs[0], min(nc, 100))
            self.box = nn.ModuleList(
                nn.Sequential(ConvBN(c, c2, 3), ConvBN(c2, c2, 3), nn.Conv2d(c2, 4 * reg, 1))
                for c in chs
            )
            self.cls = nn.ModuleList(
                nn.Sequential(ConvBN(c, c3, 3), ConvBN(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                for c in chs
            )
            self.dfl = nn.Conv2d(reg, 1, 1, bias=False).requires_grad_(False)
            self.dfl.weight.data[:] = torch.arange(reg, dtype=torch.float32).view(1, reg, 1, 1)

        def forward(self, feats: list[Any]) -> Any:
            n = feats[0].shape[0]
            maps = [torch.cat((b(f), c(f)), 1) for f, b, c in zip(feats, self.box, self.cls)]
            flat = torch.cat([m.view(n, 4 * self.reg + self.nc, -1) for m in maps], 2)
            box, cls = flat.split((4 * self.reg, self.nc), 1)
            a = box.shape[-1]
            dist = self.dfl(box.view(n, 4, self.reg, a).transpose(2, 1).softmax(1))
            return torch.cat((dist.view(n, 4, a), cls.sigmoid()), 1)

    class Yolo(nn.Module):
        def __init__(self, w: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
            super().__init__()
            self.b0, self.b1 = ConvBN(3, w[0], 3, 2), ConvBN(w[0], w[1], 3, 2)
            self.b2, self.b3 = C2f(w[1], w[1], 1), ConvBN(w[1], w[2], 3, 2)
            self.b4, self.b5 = C2f(w[2], w[2], 2), ConvBN(w[2], w[3], 3, 2)
            self.b6, self.b7 = C2f(w[3], w[3], 2), ConvBN(w[3], w[4], 3, 2)
            self.b8, self.b9 = C2f(w[4], w[4], 1), SPPF(w[4], w[4])
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.n12 = C2f(w[4] + w[3], w[3], 1, False)
            self.n15 = C2f(w[3] + w[2], w[2], 1, False)
            self.n16, self.n18 = ConvBN(w[2], w[2], 3, 2), C2f(w[2] + w[3], w[3], 1, False)
            self.n19, self.n21 = ConvBN(w[3], w[3], 3, 2), C2f(w[3] + w[4], w[4], 1, False)
            self.head = Head((w[2], w[3], w[4]))

        def forward(self, x: Any) -> Any:
            p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p4 = self.b6(self.b5(p3))
            p5 = self.b9(self.b8(self.b7(p4)))
            h4 = self.n12(torch.cat((self.up(p5), p4), 1))
            h3 = self.n15(torch.cat((self.up(h4), p3), 1))
            o4 = self.n18(torch.cat((self.n16(h3), h4), 1))
            o5 = self.n21(torch.cat((self.n19(o4), p5), 1))
            return self.head([h3, o4, o5])

    return Yolo()


def _resnet50(base: int = 32) -> Any:
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in: int, width: int, stride: int) -> None:
            super().__init__()
            out = width * 4
            self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
            self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
            self.downsample = None
            if stride != 1 or c_in != out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )

        def forward(self, x: Any) -> Any:
            h = self.relu1(self.bn1(self.conv1(x)))
            h = self.relu2(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            skip = x if self.downsample is None else self.downsample(x)
            return self.relu3(h + skip)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.bn1, self.relu = nn.BatchNorm2d(base), nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages, c = [], base
            for i, blocks in enumerate((3, 4, 6, 3)):
                width = base * 2**i
                layer = []
                for j in range(blocks):
                    layer.append(Bottleneck(c, width, 2 if (j == 0 and i > 0) else 1))
                    c = width * 4
                stages.append(nn.Sequential(*layer))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c, 1000)

        def forward(self, x: Any) -> Any:
            h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
            return self.fc(self.avgpool(h).flatten(1))

    return ResNet()


def _bert(vocab: int = 1000, seq: int = 64, d: int = 256, heads: int = 4, layers: int = 4) -> Any:
    import torch
    from torch import nn

    class SelfAttention(nn.Module):  # decomposed: Q Kᵀ MatMul, Softmax, · V MatMul
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.out = nn.Linear(d, d)

        def forward(self, x: Any) -> Any:
            n, t, _ = x.shape
            q, k, v = (
                f(x).view(n, t, heads, d // heads).transpose(1, 2)
                for f in (self.query, self.key, self.value)
            )
            scores = torch.matmul(q, k.transpose(-1, -2)) * (d // heads) ** -0.5
            ctx = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(n, t, d)
            return self.out(ctx)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.norm1 = SelfAttention(), nn.LayerNorm(d)
            self.intermediate, self.act = nn.Linear(d, 4 * d), nn.GELU()
            self.output, self.norm2 = nn.Linear(4 * d, d), nn.LayerNorm(d)

        def forward(self, x: Any) -> Any:
            x = self.norm1(x + self.attention(x))
            return self.norm2(x + self.output(self.act(self.intermediate(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word, self.position = nn.Embedding(vocab, d), nn.Embedding(seq, d)
            self.norm = nn.LayerNorm(d)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.pooler, self.classifier = nn.Linear(d, d), nn.Linear(d, 2)

        def forward(self, ids: Any) -> Any:
            pos = torch.arange(ids.shape[1], device=ids.device)
            x = self.norm(self.word(ids) + self.position(pos))
            for layer in self.layers:
                x = layer(x)
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))

    return Encoder()


def _ocr(classes: int = 80, hidden: int = 128) -> Any:
    from torch import nn

    def block(c1: int, c2: int, pool: tuple[int, int] | None) -> list[Any]:
        mods = [nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()]
        return mods + ([nn.MaxPool2d(pool, pool)] if pool else [])

    class CRNN(nn.Module):  # 1 x 32 x 128 -> 256 x 2 x 32 -> 32 steps of 512 features
        def __init__(self) -> None:
            super().__init__()
            self.cnn = nn.Sequential(
                *block(1, 32, (2, 2)), *block(32, 64, (2, 2)), *block(64, 128, None),
                *block(128, 128, (2, 1)), *block(128, 256, None), *block(256, 256, (2, 1)),
            )  # fmt: skip
            self.rnn = nn.LSTM(512, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(2 * hidden, classes)

        def forward(self, x: Any) -> Any:
            f = self.cnn(x)  # (N, C, H, W)
            n, c, h, w = f.shape
            seq = f.permute(0, 3, 1, 2).reshape(n, w, c * h)
            return self.fc(self.rnn(seq)[0]).log_softmax(-1)

    return CRNN()


_TORCH_BUILDERS: dict[str, Callable[[], Any]] = {
    "yolo": _yolo,
    "resnet50": _resnet50,
    "bert": _bert,
    "ocr": _ocr,
}


def _export(arch: Arch, path: Path) -> None:
    import torch

    from exporters.from_torch import export

    torch.manual_seed(0)
    net = _TORCH_BUILDERS[arch.name]()
    _randomize_norms(net)
    net.eval()
    sample = torch.from_numpy(make_data(arch, 2, seed=99))
    export(net, sample, path)


def _quantize(source: Path, arch: Arch, path: Path, batches: int = 4) -> None:
    """int8 QDQ by onnxruntime's static quantization, calibrated on random inputs, after its
    pre-processing (which folds BatchNorm into Conv, as a deployed int8 model has it)."""
    import logging

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.left = [make_data(arch, arch.batch_size, seed=100 + i) for i in range(batches)]

        def get_next(self) -> dict[str, np.ndarray] | None:
            return {name: self.left.pop()} if self.left else None

    logging.getLogger().setLevel(logging.ERROR)  # quantization logs through the root logger
    prepared = path.with_name(f".{path.stem}.prep.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)


def build(name: str, folder: str | os.PathLike[str]) -> Path:
    """Build model *name* into *folder* (once: an existing file is reused); its path."""
    arch = MODELS[name]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    tmp = folder / f".{name}.partial.onnx"
    if name == "resnet50_qdq":
        _quantize(build("resnet50", folder), arch, tmp)
    else:
        _export(arch, tmp)
    os.replace(tmp, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--model", action="append", choices=sorted(MODELS))
    args = p.parse_args()
    for name in args.model or list(MODELS):
        print(name, build(name, args.folder))


if __name__ == "__main__":
    main()
