"""Study 004's model (DeepCalo, ATLAS electron/photon energy regression): a CNN over
multi-channel calorimeter cells whose every block is conditioned on the event's scalars by
FiLM (Perez et al. 2018). Block i:

    conv -> BatchNorm (no affine) -> x <- gamma_i(z) * x + beta_i(z) -> ReLU -> maxpool 2

with z = all scalar inputs concatenated and (gamma_i, beta_i) from a small MLP per block
(gamma starts near 1, beta near 0). Then flatten, concatenate z, Dense -> ReLU -> Dropout ->
linear. Works on 2-D or 3-D cells; needs at least one scalar input.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hepray.models.common import DenseHead, ModelSpec, gather_scalars, layer_nd, scalar_width, select_images


class FiLMConfig(ModelSpec):
    name: Literal["film"]
    image: str | None = Field(None, description="cells input to convolve; default the job's first image")
    filters: int = Field(32, gt=0, description="conv filters in every block")
    blocks: int = Field(3, gt=0)
    kernel: int = Field(3, gt=0)
    film_hidden: int = Field(32, gt=0, description="hidden width of each block's gamma/beta MLP")
    dense: int = Field(128, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class FiLMBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, n_scalars: int, hidden: int, dims: int):
        super().__init__()
        self.conv = layer_nd("Conv", dims)(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.norm = layer_nd("BatchNorm", dims)(c_out, affine=False)  # FiLM supplies the affine part
        self.film = nn.Sequential(nn.Linear(n_scalars, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * c_out))
        self.pool = layer_nd("MaxPool", dims)(2, ceil_mode=True)
        self.dims = dims

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(z).view(z.shape[0], 2, -1, *([1] * self.dims)).unbind(1)
        x = (1 + gamma) * self.norm(self.conv(x)) + beta
        return self.pool(torch.relu(x))


class FiLMNet(nn.Module):
    def __init__(self, config: FiLMConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.image = select_images(None if config.image is None else [config.image], input_shapes, (2, 3), "film")[0]
        n_scalars = scalar_width(input_shapes)
        if n_scalars == 0:
            raise ValueError(f"film: conditions on scalar inputs but the job has none: {input_shapes}")
        channels, *size = input_shapes[self.image]
        self.blocks = nn.ModuleList()
        for block in range(config.blocks):
            self.blocks.append(
                FiLMBlock(
                    channels if block == 0 else config.filters,
                    config.filters,
                    config.kernel,
                    n_scalars,
                    config.film_hidden,
                    len(size),
                )
            )
            size = [-(-n // 2) for n in size]  # ceil-mode pooling
        n_features = config.filters
        for n in size:
            n_features *= n
        self.head = DenseHead(n_features, n_scalars, config.dense, config.dropout, n_outputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        z = gather_scalars(inputs, self.input_shapes)
        x = inputs[self.image]
        for block in self.blocks:
            x = block(x, z)
        return self.head(x.flatten(1), z)
