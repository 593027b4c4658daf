"""A small ResNet (He et al. 2016, basic blocks) as a strong modern default for any study:

    stem conv 3x3 -> BN -> ReLU -> stages (`depth` basic blocks each; every stage after the
    first starts with stride 2) -> global average pool -> (+ scalars) -> dropout -> linear.

2-D or 3-D convolutions are chosen from the image's dims. The stem keeps full resolution (no
7x7/2 + pool) because detector images are small; each block's last BN starts at zero so the
network starts close to identity mappings.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import ModelSpec, gather_scalars, layer_nd, scalar_width, select_images


class ResNetConfig(ModelSpec):
    name: Literal["resnet"]
    image: str | None = Field(None, description="input to convolve; default the job's first image")
    widths: list[Annotated[int, Field(gt=0)]] = Field([32, 64, 128], min_length=1, description="channels per stage")
    depth: int = Field(2, gt=0, description="basic blocks per stage")
    dropout: float = Field(0.0, ge=0, lt=1)


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, dims: int):
        super().__init__()
        Conv, BN = layer_nd("Conv", dims), layer_nd("BatchNorm", dims)
        self.conv1 = Conv(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = BN(c_out)
        self.conv2 = Conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = BN(c_out)
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(Conv(c_in, c_out, 1, stride, bias=False), BN(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.image = select_images(None if config.image is None else [config.image], input_shapes, (2, 3), "resnet")[0]
        channels, *size = input_shapes[self.image]
        dims = len(size)
        self.stem = nn.Sequential(
            layer_nd("Conv", dims)(channels, config.widths[0], 3, padding=1, bias=False),
            layer_nd("BatchNorm", dims)(config.widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks, c_in = [], config.widths[0]
        for stage, width in enumerate(config.widths):
            for i in range(config.depth):
                blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1, dims))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(c_in + scalar_width(input_shapes), n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last stage's output averaged over the image (2-D or 3-D), what the head reads."""
        return self.blocks(self.stem(inputs[self.image])).flatten(2).mean(dim=2)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding(inputs)
        scalars = gather_scalars(inputs, self.input_shapes)
        if scalars is not None:
            x = torch.cat([x, scalars], dim=1)
        return self.out(self.dropout(x))
