"""Study 003's model: NOvA's Convolutional Visual Network (Aurisano et al., JINST 11 P09001),
a GoogLeNet adaptation. Each detector view (each 2-D image input) gets its own tower

    conv 7x7/2 -> maxpool 3/2 -> LRN -> conv 1x1 -> conv 3x3 -> LRN -> maxpool 3/2
    -> inception x tower_inception -> maxpool 3/2

the towers are concatenated along channels, followed by inception x merged_inception, global
average pooling, dropout and a linear layer (scalars, if any, join just before it).

Inception channel counts follow GoogLeNet (3a, 3b, 4a, ...) scaled by `width`; `width: 1.0`
with 2 + 1 modules is the paper's network. Pools are padded so every stride-2 step maps n to
ceil(n / 2): any image size works. Views of different sizes are average-pooled to the
smallest tower output before merging.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import ModelSpec, gather_scalars, scalar_width, select_images

# GoogLeNet's inception modules: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
GOOGLENET_INCEPTION = [
    (64, 96, 128, 16, 32, 32),  # 3a
    (128, 128, 192, 32, 96, 64),  # 3b
    (192, 96, 208, 16, 48, 64),  # 4a
    (160, 112, 224, 24, 64, 64),  # 4b
    (128, 128, 256, 24, 64, 64),  # 4c
    (112, 144, 288, 32, 64, 64),  # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
]


class CVNConfig(ModelSpec):
    name: Literal["cvn"]
    views: list[str] | None = Field(None, description="2-D inputs, one tower each; default all, in job order")
    width: float = Field(1.0, gt=0, description="multiplies every channel count (1.0 = paper)")
    tower_inception: int = Field(2, ge=0, description="inception modules per view tower (paper: 2)")
    merged_inception: int = Field(1, ge=0, description="inception modules after merging the views (paper: 1)")
    lrn: bool = Field(True, description="LocalResponseNorm(5) after the stem pool and the 3x3 conv, as in the paper")
    batchnorm: bool = Field(False, description="BatchNorm after every conv (not in the paper)")
    dropout: float = Field(0.4, ge=0, lt=1)


def conv_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def maxpool() -> nn.MaxPool2d:
    """3x3 stride-2 max pool, padded so n -> ceil(n / 2)."""
    return nn.MaxPool2d(3, stride=2, padding=1)


def shrink(size: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    """Average pool mapping `size` exactly onto `target` (identity if equal). Windows of fixed
    size tile the input edge to edge, so unlike AdaptiveAvgPool2d it exports to ONNX."""
    if size == target:
        return nn.Identity()
    stride = tuple(n // m for n, m in zip(size, target))
    kernel = tuple(n - (m - 1) * s for n, m, s in zip(size, target, stride))
    return nn.AvgPool2d(kernel, stride)


class Inception(nn.Module):
    """Four parallel branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | maxpool 3x3 -> 1x1."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, batchnorm: bool):
        super().__init__()
        self.b1 = conv_relu(c_in, c1, 1, batchnorm=batchnorm)
        self.b3 = nn.Sequential(
            conv_relu(c_in, c3r, 1, batchnorm=batchnorm), conv_relu(c3r, c3, 3, batchnorm=batchnorm)
        )
        self.b5 = nn.Sequential(
            conv_relu(c_in, c5r, 1, batchnorm=batchnorm), conv_relu(c5r, c5, 5, batchnorm=batchnorm)
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(c_in, cp, 1, batchnorm=batchnorm))
        self.c_out = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


def inception_stack(c_in: int, first: int, count: int, width: float, batchnorm: bool) -> tuple[nn.Sequential, int]:
    """`count` inception modules using GoogLeNet's channel table from entry `first` (last entry
    repeats); returns the stack and its output channels."""
    modules = []
    for i in range(first, first + count):
        channels = [max(1, round(c * width)) for c in GOOGLENET_INCEPTION[min(i, len(GOOGLENET_INCEPTION) - 1)]]
        modules.append(Inception(c_in, *channels, batchnorm=batchnorm))
        c_in = modules[-1].c_out
    return nn.Sequential(*modules), c_in


class Tower(nn.Module):
    """One view: stem (conv 7x7/2, pool, LRN, conv 1x1, conv 3x3, LRN, pool), inceptions, pool."""

    def __init__(self, channels: int, config: CVNConfig):
        super().__init__()
        w, bn = config.width, config.batchnorm
        c64, c192 = max(1, round(64 * w)), max(1, round(192 * w))
        lrn = (lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)) if config.lrn else nn.Identity
        self.stem = nn.Sequential(
            conv_relu(channels, c64, 7, stride=2, batchnorm=bn),
            maxpool(),
            lrn(),
            conv_relu(c64, c64, 1, batchnorm=bn),
            conv_relu(c64, c192, 3, batchnorm=bn),
            lrn(),
            maxpool(),
        )
        self.inception, self.c_out = inception_stack(c192, 0, config.tower_inception, w, bn)
        self.pool = maxpool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.inception(self.stem(x)))


class CVN(nn.Module):
    def __init__(self, config: CVNConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.views = select_images(config.views, input_shapes, (2,), "cvn")
        self.towers = nn.ModuleList(Tower(input_shapes[view][0], config) for view in self.views)
        # Four n -> ceil(n/2) steps per tower; views of unequal size are pooled to the smallest.
        sizes = []
        for view in self.views:
            size = input_shapes[view][1:]
            for _ in range(4):
                size = tuple(-(-n // 2) for n in size)
            sizes.append(size)
        common = tuple(min(s[d] for s in sizes) for d in range(2))
        self.align = nn.ModuleList(shrink(size, common) for size in sizes)
        c_merged = sum(tower.c_out for tower in self.towers)
        self.merged, c_out = inception_stack(
            c_merged, config.tower_inception, config.merged_inception, config.width, config.batchnorm
        )
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(c_out + scalar_width(input_shapes), n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The merged inceptions' output averaged over the image, what the head reads."""
        x = torch.cat(
            [align(tower(inputs[view])) for view, tower, align in zip(self.views, self.towers, self.align)], dim=1
        )
        return self.merged(x).mean(dim=(2, 3))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding(inputs)
        scalars = gather_scalars(inputs, self.input_shapes)
        if scalars is not None:
            x = torch.cat([x, scalars], dim=1)
        return self.out(self.dropout(x))
