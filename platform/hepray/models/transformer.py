"""A Particle-Transformer-style model (Qu, Li, Qian, arXiv:2202.03772) on a points input
[B, P, 1 + F] (channel 0 the mask):

    masked BatchNorm on the point features; per point Linear(dim) -> GELU -> Linear(dim)
    `layers` x particle attention block: x += MHA(LN(x)) [+ pair bias]; x += FFN(LN(x))
    a learned class token; `class_layers` x class attention block: the class token attends to
        itself and the points, cls += MHA(LN(cls), LN([cls, x])); cls += FFN(LN(cls))
    LN(cls) + scalar inputs -> [Linear -> ReLU -> Dropout] per `head` -> Linear(n_outputs)

Blocks are pre-LayerNorm; FFN is Linear(ffn) -> GELU -> Dropout -> Linear(dim). Padded points
are masked out as keys (their score is 1e9 below the others, so an event without any real point
still gets a finite softmax); the class token is always a valid key.

`pair_features: {eta, phi, pt}` (0-based feature indices, raw values, pt > 0) adds ParT's
interaction bias: for every pair of real points ln dR and ln kT = ln(min(pt_i, pt_j) dR), with
dR^2 = d_eta^2 + d_phi^2 (d_phi wrapped into [-pi, pi)), both clamped at 1e-8 before the log, go
through a per-pair MLP (`pair_hidden` widths, GELU) to one number per head, added to every
particle attention block's scores. ParT's full size is dim 128, heads 8, layers 8, ffn 512,
pair_hidden [64, 64, 64] (with two more pair features); the defaults here are smaller.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from hepray.models.common import (
    MaskedBatchNorm,
    MLPHead,
    ModelSpec,
    Width,
    gather_scalars,
    scalar_width,
    select_points,
    split_points,
)

MASKED = -1e9  # added to the attention score of a padded key
EPS = 1e-8  # clamp of dR and kT before the log


class PairFeatures(ModelSpec):
    """Indices (0-based among the points' F features) of eta, phi and pt."""

    eta: int = Field(ge=0)
    phi: int = Field(ge=0)
    pt: int = Field(ge=0)


class TransformerConfig(ModelSpec):
    name: Literal["transformer"]
    points: str | None = Field(None, description="points input [max_points, 1 + F]; default the job's only one")
    input_norm: bool = Field(True, description="masked BatchNorm on the point features")
    dim: int = Field(64, gt=0, description="embedding width of each point")
    heads: int = Field(4, gt=0, description="attention heads; must divide dim")
    layers: int = Field(4, ge=0, description="particle self-attention blocks")
    class_layers: int = Field(2, gt=0, description="class-attention blocks")
    ffn: int = Field(256, gt=0, description="hidden width of each block's feed-forward MLP")
    pair_features: PairFeatures | None = Field(None, description="pairwise ln dR, ln kT as attention bias")
    pair_hidden: list[Width] = Field([32, 32], description="hidden widths of the per-pair bias MLP")
    head: list[Width] = Field([128], description="hidden widths after the class token (+ scalars)")
    dropout: float = Field(0.1, ge=0, lt=1, description="in attention, feed-forward and head")

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers through `widths` (the first is the input width), GELU between them."""
    layers: list[nn.Module] = [nn.Linear(widths[0], widths[1])]
    for a, b in zip(widths[1:-1], widths[2:]):
        layers += [nn.GELU(), nn.Linear(a, b)]
    return nn.Sequential(*layers)


def pair_features(x: torch.Tensor, mask: torch.Tensor, eta: int, phi: int, pt: int) -> torch.Tensor:
    """Raw features [B, P, F], mask [B, P, 1] -> [B, P, P, 2]: ln dR and ln kT of every pair
    (0 where either point is padding)."""
    d_eta = x[..., eta].unsqueeze(2) - x[..., eta].unsqueeze(1)
    d_phi = x[..., phi].unsqueeze(2) - x[..., phi].unsqueeze(1)
    d_phi = d_phi - 2 * math.pi * torch.floor((d_phi + math.pi) / (2 * math.pi))
    delta = torch.sqrt(d_eta.pow(2) + d_phi.pow(2))
    pt_min = torch.minimum(x[..., pt].unsqueeze(2), x[..., pt].unsqueeze(1))
    features = torch.stack([delta.clamp(min=EPS).log(), (pt_min * delta).clamp(min=EPS).log()], dim=-1)
    return features * (mask.unsqueeze(2) * mask.unsqueeze(1))


class Attention(nn.Module):
    """Multi-head attention of queries [B, Q, dim] over keys [B, K, dim] with an additive score
    bias broadcastable to [B, heads, Q, K]."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key_value, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)  # [B, heads, L, dim / heads]

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = self.split(self.query(queries))
        k, v = (self.split(t) for t in self.key_value(keys).chunk(2, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LN transformer block: x += Attention(LN(x) over LN(keys)); x += FFN(LN(x)). Self-
    attention without `points`; class attention with them: x attends to [x, points]."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm_attention, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        keys = self.norm_attention(x if points is None else torch.cat([x, points], dim=1))
        x = x + self.dropout(self.attention(keys[:, : x.shape[1]], keys, bias))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        self.points = select_points(config.points, input_shapes, "transformer")
        width = input_shapes[self.points][1] - 1
        pairs = config.pair_features
        self.pair_index = None if pairs is None else (pairs.eta, pairs.phi, pairs.pt)
        if self.pair_index is not None and max(self.pair_index) >= width:
            raise ValueError(
                f"transformer: pair_features {pairs.model_dump()} index the {width} "
                f"features of {self.points!r} (0-based)"
            )
        self.norm = MaskedBatchNorm(width) if config.input_norm else None
        self.embed = mlp([width, config.dim, config.dim])
        self.pair_embed = None if pairs is None else mlp([2, *config.pair_hidden, config.heads])
        blocks = (Block(config.dim, config.heads, config.ffn, config.dropout) for _ in range(config.layers))
        self.blocks = nn.ModuleList(blocks)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        blocks = (Block(config.dim, config.heads, config.ffn, config.dropout) for _ in range(config.class_layers))
        self.class_blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(config.dim)
        self.head = MLPHead(config.dim, scalar_width(input_shapes), config.head, config.dropout, n_outputs)

    def embedding(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The normalised class token after the class-attention blocks, what the head reads."""
        raw, mask = split_points(inputs[self.points])
        x = raw if self.norm is None else self.norm(raw, mask)
        x = self.embed(x) * mask
        keys = MASKED * (1 - mask.transpose(1, 2)).unsqueeze(1)  # [B, 1, 1, P]
        bias = keys
        if self.pair_embed is not None:
            pairs = pair_features(raw, mask, *self.pair_index)
            bias = keys + self.pair_embed(pairs).permute(0, 3, 1, 2)  # [B, heads, P, P]
        for block in self.blocks:
            x = block(x, bias)
        cls = self.cls.expand(x.shape[0], -1, -1)
        class_keys = torch.cat([torch.zeros_like(keys[..., :1]), keys], dim=-1)  # the class token is valid
        for block in self.class_blocks:
            cls = block(cls, class_keys, x)
        return self.final_norm(cls.squeeze(1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embedding(inputs), gather_scalars(inputs, self.input_shapes))
