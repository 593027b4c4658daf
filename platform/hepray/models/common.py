"""Pieces every model family shares: config base, input bookkeeping, the scalar-aware head."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
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


def select_images(
    requested: list[str] | None, input_shapes: dict[str, tuple[int, ...]], spatial_dims: tuple[int, ...], family: str
) -> list[str]:
    """The image inputs a family convolves: `requested` (checked) or every input with a fitting
    number of spatial dims, in job order. Raises ValueError if none or if a name does not fit."""
    fits = [name for name, shape in input_shapes.items() if len(shape) - 1 in spatial_dims]
    names = fits if requested is None else list(requested)
    kind = " or ".join(f"{d}-D" for d in spatial_dims)
    for name in names:
        if name not in input_shapes:
            raise ValueError(f"{family}: unknown input {name!r}; the job has {sorted(input_shapes)}")
        if name not in fits:
            raise ValueError(
                f"{family}: input {name!r} has shape {input_shapes[name]}, expected channels + {kind} spatial dims"
            )
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


# --- Point clouds (deepsets, particlenet, transformer) ---------------------------------------
# A points input is [B, P, 1 + F]: channel 0 the mask (1 real point, 0 padding), then F features.

Width = Annotated[int, Field(gt=0)]  # a layer width in a config list


def select_points(requested: str | None, input_shapes: dict[str, tuple[int, ...]], family: str) -> str:
    """The points input a family reads: `requested` (checked) or the job's only [P, 1 + F] input.
    Raises ValueError naming the inputs if it is missing, ambiguous or not a points input."""
    fits = [name for name, shape in input_shapes.items() if len(shape) == 2]
    if requested is None:
        if len(fits) != 1:
            raise ValueError(
                f"{family}: needs exactly one points input ([max_points, 1 + features]) or "
                f"`points:` naming one; the job has {dict(input_shapes)}"
            )
        requested = fits[0]
    if requested not in input_shapes:
        raise ValueError(f"{family}: unknown input {requested!r}; the job has {sorted(input_shapes)}")
    if requested not in fits or input_shapes[requested][1] < 2:
        raise ValueError(
            f"{family}: input {requested!r} has shape {input_shapes[requested]}, expected "
            "points [max_points, 1 + features] with at least one feature"
        )
    return requested


def split_points(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P, 1 + F] -> (features [B, P, F] with padded rows zeroed, mask [B, P, 1] of 0./1.)."""
    mask = (points[..., :1] > 0.5).to(points.dtype)
    return points[..., 1:] * mask, mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `x` over `dim` counting only entries where `mask` (broadcastable, 0./1.) is 1;
    0 where there are none."""
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last (channel) axis of [..., C] whose statistics count only the entries
    where `mask` [..., 1] is 1, so padding changes neither the batch statistics nor the running
    averages; masked entries come out as 0. Evaluation uses the running averages, like BatchNorm."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            dims = tuple(range(x.dim() - 1))
            count = mask.expand(*x.shape[:-1], 1).sum(dims).clamp(min=1.0)
            mean = (x * mask).sum(dims) / count
            var = ((x - mean).pow(2) * mask).sum(dims) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias) * mask


class MLPHead(nn.Module):
    """Pooled features (+ scalars) -> [Linear -> ReLU -> Dropout] per `hidden` width -> Linear(n_outputs)."""

    def __init__(self, n_features: int, n_scalars: int, hidden: list[int], dropout: float, n_outputs: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features + n_scalars
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, scalars: torch.Tensor | None) -> torch.Tensor:
        if scalars is not None:
            features = torch.cat([features, scalars], dim=1)
        return self.net(features)
