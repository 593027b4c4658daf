"""Study 000's baseline CNN: [Conv-BN-ReLU-MaxPool] x blocks, a pooled or flattened head, Dense."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import DenseHead, ModelSpec, gather_scalars, image_inputs, scalar_width


class SeedCNNConfig(ModelSpec):
    name: Literal["seed_cnn"]
    image: str | None = Field(None, description="input to convolve; default the job's first image")
    filters: int = Field(64, gt=0)
    blocks: int = Field(3, gt=0)
    kernel: int = Field(3, gt=0)
    batchnorm: bool = True
    head: Literal["flatten", "max", "avg", "maxavg"] = "flatten"
    dense: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class SeedCNN(nn.Module):
    def __init__(self, config: SeedCNNConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.image = config.image or image_inputs(input_shapes)[0]
        self.input_shapes = input_shapes
        channels, height, width = input_shapes[self.image]
        layers: list[nn.Module] = []
        for block in range(config.blocks):
            layers.append(
                nn.Conv2d(
                    channels if block == 0 else config.filters,
                    config.filters,
                    config.kernel,
                    padding=config.kernel // 2,
                    bias=not config.batchnorm,
                )
            )
            if config.batchnorm:
                layers.append(nn.BatchNorm2d(config.filters))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        self.features = nn.Sequential(*layers)
        self.head_kind = config.head
        # Spatial size after `blocks` ceil-mode halvings, for the flatten head.
        for _ in range(config.blocks):
            height, width = -(-height // 2), -(-width // 2)
        n_features = {
            "flatten": config.filters * height * width,
            "max": config.filters,
            "avg": config.filters,
            "maxavg": 2 * config.filters,
        }[config.head]
        self.head = DenseHead(n_features, scalar_width(input_shapes), config.dense, config.dropout, n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The conv blocks' output flattened or pooled (`head`), what the dense head reads."""
        x = self.features(inputs[self.image])
        if self.head_kind == "flatten":
            return x.flatten(1)
        if self.head_kind == "max":
            return x.amax(dim=(2, 3))
        if self.head_kind == "avg":
            return x.mean(dim=(2, 3))
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embedding(inputs), gather_scalars(inputs, self.input_shapes))
