"""Deep Sets / Particle Flow Network (Zaheer et al. arXiv:1703.06114; Komiske, Metodiev, Thaler
arXiv:1810.05165) on a points input [B, P, 1 + F] (channel 0 the mask):

    each point: [Linear -> ReLU] per `phi` width      (the same weights for every point)
    pool over the real points: sum (PFN) or mean      (padded points are masked out)
    + scalar inputs -> [Linear -> ReLU -> Dropout] per `head` width -> Linear(n_outputs)

The defaults are the PFN sizes of the EnergyFlow package (Phi 100, 100, 128; F 100, 100, 100).
With `input_norm` the point features first go through a BatchNorm whose statistics count real
points only. Sum pooling keeps the number of points; mean pooling does not.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import (
    MaskedBatchNorm,
    MLPHead,
    ModelSpec,
    Width,
    gather_scalars,
    masked_mean,
    scalar_width,
    select_points,
    split_points,
)


class DeepSetsConfig(ModelSpec):
    name: Literal["deepsets"]
    points: str | None = Field(None, description="points input [max_points, 1 + F]; default the job's only one")
    input_norm: bool = Field(True, description="masked BatchNorm on the point features")
    phi: list[Width] = Field([100, 100, 128], min_length=1, description="per-point MLP widths")
    pool: Literal["sum", "mean"] = "sum"
    head: list[Width] = Field([100, 100, 100], description="hidden widths after pooling (+ scalars)")
    dropout: float = Field(0.0, ge=0, lt=1, description="after each head layer")


class DeepSets(nn.Module):
    def __init__(self, config: DeepSetsConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.points = select_points(config.points, input_shapes, "deepsets")
        width = input_shapes[self.points][1] - 1
        self.norm = MaskedBatchNorm(width) if config.input_norm else None
        layers: list[nn.Module] = []
        for out in config.phi:
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True)]
            width = out
        self.phi = nn.Sequential(*layers)
        self.pool = config.pool
        self.head = MLPHead(width, scalar_width(input_shapes), config.head, config.dropout, n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-point MLP's output pooled over the real points, what the head reads."""
        x, mask = split_points(inputs[self.points])
        if self.norm is not None:
            x = self.norm(x, mask)
        x = self.phi(x) * mask
        return x.sum(1) if self.pool == "sum" else masked_mean(x, mask, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embedding(inputs), gather_scalars(inputs, self.input_shapes))
