"""Pieces every model family shares: config base, input bookkeeping, the scalar-aware head."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class ModelSpec(BaseModel):
    """Base of each family's YAML config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def image_inputs(input_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Names of image-like inputs (channels + 2 or 3 spatial dims), in job order."""
    return [name for name, shape in input_shapes.items() if len(shape) >= 3]


def scalar_width(input_shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(shape[0] for shape in input_shapes.values() if len(shape) == 1)


def gather_scalars(inputs: dict[str, torch.Tensor], input_shapes: dict[str, tuple[int, ...]]) -> torch.Tensor | None:
    """Concatenate every scalar input (shape [B, n]) in job order, or None if there are none."""
    parts = [inputs[name] for name, shape in input_shapes.items() if len(shape) == 1]
    return torch.cat(parts, dim=1) if parts else None


class DenseHead(nn.Module):
    """Features (+ scalars) -> Dense(hidden) -> ReLU -> Dropout -> Linear(n_outputs)."""

    def __init__(self, n_features: int, n_scalars: int, hidden: int, dropout: float, n_outputs: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features + n_scalars, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, features: torch.Tensor, scalars: torch.Tensor | None) -> torch.Tensor:
        if scalars is not None:
            features = torch.cat([features, scalars], dim=1)
        return self.net(features)
