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


def scalar_inputs(input_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Names of scalar inputs (shape [n]), in job order."""
    return [name for name, shape in input_shapes.items() if len(shape) == 1]


def select_images(requested: list[str] | None, input_shapes: dict[str, tuple[int, ...]],
                  spatial_dims: tuple[int, ...], family: str) -> list[str]:
    """The image inputs a family convolves: `requested` (checked) or every input with a fitting
    number of spatial dims, in job order. Raises ValueError if none or if a name does not fit."""
    fits = [name for name, shape in input_shapes.items() if len(shape) - 1 in spatial_dims]
    names = fits if requested is None else list(requested)
    kind = " or ".join(f"{d}-D" for d in spatial_dims)
    for name in names:
        if name not in input_shapes:
            raise ValueError(f"{family}: unknown input {name!r}; the job has {sorted(input_shapes)}")
        if name not in fits:
            raise ValueError(f"{family}: input {name!r} has shape {input_shapes[name]}, "
                             f"expected channels + {kind} spatial dims")
    if not names:
        raise ValueError(f"{family}: needs at least one {kind} image input; the job has {input_shapes}")
    return names


def layer_nd(kind: str, spatial_dims: int) -> type[nn.Module]:
    """`layer_nd("Conv", 3)` -> nn.Conv3d; works for Conv, BatchNorm, MaxPool, AvgPool."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"only 2-D and 3-D images are supported, got {spatial_dims} spatial dims")
    return getattr(nn, f"{kind}{spatial_dims}d")


class PositionalInputs(nn.Module):
    """Wraps a dict-input model so it takes its inputs as positional tensors in `names` order,
    which is what `torch.onnx.export` and `torch.jit.trace` want."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))
