"""Study 001's model (LCD calorimeter energy regression, a Keras original): one Conv3D branch
per 3-D calorimeter image (ECAL 25x25x25, HCAL 5x5x60), each Conv3D -> ReLU -> MaxPool3D ->
flatten; branches (and any scalars) concatenated -> Dense(1000) -> ReLU -> Dropout(0.5) -> linear.

`profile: true` adds, per branch, the image summed over all but its last axis (the depth: the
longitudinal shower profile) to the head's input. The response of a sampling calorimeter with
thicker rear layers, and what leaks out of it, depend on how deep each shower develops, a linear
function of that profile which a Conv3D -> ReLU -> MaxPool branch only sees blurred.
`transverse: true` adds the image summed over its depth axis (the energy map seen face-on, channels x
the other axes). Soft background deposits scattered over the face away from the shower add to the
summed energy; a weighted sum of that map can leave them out, which is the cells' linear function a
calibration would use, again blurred by pooling.

As in Keras the convolutions are 'valid' (unpadded). To work on any input size the kernel and
pool are clipped per dimension to the size they see, so no dimension ever drops below 1
(HCAL 5x5x60 with kernel 4, pool 2: conv -> 2x2x57, pool -> 1x1x28).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import DenseHead, ModelSpec, gather_scalars, scalar_width, select_images


class Calo3DConfig(ModelSpec):
    name: Literal["calo3d"]
    inputs: list[str] | None = Field(None, description="3-D inputs, one branch each; default all, in job order")
    filters: int = Field(3, gt=0, description="Conv3D filters per branch (study: 3)")
    kernel: int = Field(4, gt=0, description="cubic Conv3D kernel, clipped to each dimension")
    pool: int = Field(2, gt=0, description="cubic MaxPool3D size, clipped so no dimension drops below 1")
    dense: int = Field(1000, gt=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    profile: bool = Field(False, description="also feed each image's profile along its last (depth) axis to the head")
    transverse: bool = Field(False, description="also feed each image summed over its last (depth) axis to the head")


class Calo3DBranch(nn.Module):
    """Conv3D(filters, kernel, valid) -> ReLU -> MaxPool3D -> flatten, for one calorimeter image,
    optionally followed by the image's depth profile (channels x last axis) and its face-on map
    (channels x the other axes)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        filters: int,
        kernel: int,
        pool: int,
        profile: bool = False,
        transverse: bool = False,
    ):
        super().__init__()
        channels, *size = shape
        self.profile, self.transverse = profile, transverse
        projection_features = channels * ((size[-1] if profile else 0) + (size[0] * size[1] if transverse else 0))
        kernel_size = tuple(min(kernel, n) for n in size)
        size = [n - k + 1 for n, k in zip(size, kernel_size)]
        pool_size = tuple(min(pool, n) for n in size)
        size = [n // p for n, p in zip(size, pool_size)]
        self.conv = nn.Conv3d(channels, filters, kernel_size)
        self.pool = nn.MaxPool3d(pool_size)
        self.n_features = filters * size[0] * size[1] * size[2] + projection_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.pool(torch.relu(self.conv(x))).flatten(1)]
        if self.profile:
            parts.append(x.sum(dim=(2, 3)).flatten(1))
        if self.transverse:
            parts.append(x.sum(dim=4).flatten(1))
        return torch.cat(parts, dim=1)


class Calo3D(nn.Module):
    def __init__(self, config: Calo3DConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.names = select_images(config.inputs, input_shapes, (3,), "calo3d")
        self.branches = nn.ModuleList(  # parallel to self.names (input names may not be attribute-safe)
            Calo3DBranch(
                input_shapes[name], config.filters, config.kernel, config.pool, config.profile, config.transverse
            )
            for name in self.names
        )
        n_features = sum(branch.n_features for branch in self.branches)
        self.head = DenseHead(n_features, scalar_width(input_shapes), config.dense, config.dropout, n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The branches' features side by side, what the dense head reads."""
        return torch.cat([branch(inputs[name]) for name, branch in zip(self.names, self.branches)], dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embedding(inputs), gather_scalars(inputs, self.input_shapes))
