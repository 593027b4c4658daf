"""ParticleNet (Qu and Gouskos, arXiv:1902.08570): a dynamic graph CNN on a points input
[B, P, 1 + F] (channel 0 the mask).

    masked BatchNorm on the point features
    EdgeConv block per `blocks` entry; the neighbours of each point are its k nearest other real
        points, in the `coords` features (e.g. eta, phi) for the first block and in the previous
        block's output features after that
    mean over the real points; + scalar inputs -> [Linear -> ReLU -> Dropout] per `head` -> Linear

An EdgeConv block: for point i and each neighbour j the edge feature (x_i, x_j - x_i) goes
through [Linear -> BatchNorm -> ReLU] per width, is averaged over the neighbours, added to a
shortcut (Linear -> BatchNorm of x_i, identity if the width is unchanged) and ReLU'd.

The defaults are the paper's ParticleNet-Lite (k 7; blocks (32, 32, 32), (64, 64, 64); FC 128 with
dropout 0.1: 26k parameters for 7 features); ParticleNet is k 16, blocks (64,)*3, (128,)*3,
(256,)*3, head [256].

Padding never acts: in the kNN distances every padded point (and the point itself) is pushed
1e30 away, as the reference implementation shifts padded coordinates far away, and a neighbour
slot that still lands on one (a point with fewer than k other real points) is left out of the
neighbour mean; BatchNorm statistics and the pooling count real points only. A point with no
real neighbour keeps only its shortcut.
"""

from __future__ import annotations

from typing import Annotated, Literal

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

FAR = 1e30  # squared distance given to padded points and to the point itself


class ParticleNetConfig(ModelSpec):
    name: Literal["particlenet"]
    points: str | None = Field(None, description="points input [max_points, 1 + F]; default the job's only one")
    coords: list[Annotated[int, Field(ge=0)]] = Field(
        [0, 1], min_length=1, description="feature indices (0-based among the F) of the first graph's coordinates"
    )
    k: int = Field(7, gt=0, description="neighbours per point")
    blocks: list[Annotated[list[Width], Field(min_length=1)]] = Field(
        [[32, 32, 32], [64, 64, 64]], min_length=1, description="EdgeConv blocks: each one's edge MLP widths"
    )
    input_norm: bool = Field(True, description="masked BatchNorm on the point features")
    head: list[Width] = Field([128], description="hidden widths after pooling (+ scalars)")
    dropout: float = Field(0.1, ge=0, lt=1, description="after each head layer")


def nearest_neighbours(coords: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For coords [B, P, D] and mask [B, P, 1]: the indices [B, P, k'] of each point's k' = min(k,
    P - 1) (at least 1) nearest other points, and [B, P, k', 1] = 1 where that neighbour is a real point
    (and the point itself is real). Padded points and the point itself are pushed FAR away, so
    they come last and only fill slots of points with fewer than k' other real points."""
    points = coords.shape[1]
    with torch.autocast(coords.device.type, enabled=False):  # rank in float32 even under bf16 autocast
        coords = coords.detach().float()  # only the ranking is used
        square = coords.pow(2).sum(-1)
        distance = square.unsqueeze(2) + square.unsqueeze(1) - 2 * coords @ coords.transpose(1, 2)
        myself = torch.eye(points, device=coords.device)
        distance = distance + FAR * (1 - mask.float().transpose(1, 2) + myself)
    index = distance.topk(max(1, min(k, points - 1)), dim=-1, largest=False).indices
    others = index != torch.arange(points, device=index.device).unsqueeze(1)
    real = torch.gather(mask.squeeze(-1), 1, index.flatten(1)).reshape(index.shape)
    return index, (real * others * mask).unsqueeze(-1)


def gather_neighbours(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, P, C], index [B, P, k] -> the indexed points' features [B, P, k, C]."""
    flat = index.flatten(1).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, flat).reshape(*index.shape, x.shape[-1])


class EdgeConv(nn.Module):
    """Edge MLP on (x_i, x_j - x_i) over the k nearest neighbours j, mean over them, + shortcut."""

    def __init__(self, c_in: int, widths: list[int], k: int):
        super().__init__()
        self.k = k
        ins = [2 * c_in, *widths[:-1]]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(ins, widths))
        self.norms = nn.ModuleList(MaskedBatchNorm(b) for b in widths)
        self.shortcut = None if c_in == widths[-1] else nn.Linear(c_in, widths[-1], bias=False)
        self.shortcut_norm = None if self.shortcut is None else MaskedBatchNorm(widths[-1])

    def forward(self, coords: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        index, edges = nearest_neighbours(coords, mask, self.k)
        centre = x.unsqueeze(2).expand(-1, -1, index.shape[2], -1)
        h = torch.cat([centre, gather_neighbours(x, index) - centre], dim=-1)
        for linear, norm in zip(self.linears, self.norms):
            h = torch.relu(norm(linear(h), edges))
        h = masked_mean(h, edges, 2)
        shortcut = x if self.shortcut is None else self.shortcut_norm(self.shortcut(x), mask)
        return torch.relu(shortcut + h) * mask


class ParticleNet(nn.Module):
    def __init__(self, config: ParticleNetConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.points = select_points(config.points, input_shapes, "particlenet")
        width = input_shapes[self.points][1] - 1
        if max(config.coords) >= width:
            raise ValueError(
                f"particlenet: coords {config.coords} index the {width} features of {self.points!r} (0-based)"
            )
        self.coords = list(config.coords)
        self.norm = MaskedBatchNorm(width) if config.input_norm else None
        self.blocks = nn.ModuleList()
        for widths in config.blocks:
            self.blocks.append(EdgeConv(width, widths, config.k))
            width = widths[-1]
        self.head = MLPHead(width, scalar_width(input_shapes), config.head, config.dropout, n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last block's features averaged over the real points, what the head reads."""
        x, mask = split_points(inputs[self.points])
        coords = x[..., self.coords]
        if self.norm is not None:
            x = self.norm(x, mask)
        for i, block in enumerate(self.blocks):
            x = block(coords if i == 0 else x, x, mask)
        return masked_mean(x, mask, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embedding(inputs), gather_scalars(inputs, self.input_shapes))
