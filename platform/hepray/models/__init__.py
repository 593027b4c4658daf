"""Model families, one file each; `build_model` turns a YAML config into a torch module.

Every model takes a dict of named inputs (images [B, C, H, W] or [B, C, D, H, W], points
[B, max_points, 1 + F] with channel 0 the mask, scalars [B, n]) and returns [B, n_outputs] raw
outputs (logits or regression values).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from hepray.models.calo3d import Calo3D, Calo3DConfig
from hepray.models.combined import Combined, CombinedConfig
from hepray.models.cvn import CVN, CVNConfig
from hepray.models.deepsets import DeepSets, DeepSetsConfig
from hepray.models.film import FiLMConfig, FiLMNet
from hepray.models.particlenet import ParticleNet, ParticleNetConfig
from hepray.models.resnet import ResNet, ResNetConfig
from hepray.models.seed_cnn import SeedCNN, SeedCNNConfig
from hepray.models.transformer import Transformer, TransformerConfig

MODEL_FAMILIES: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN,  # study 000 baseline
    "calo3d": Calo3D,  # study 001, LCD calorimeter energy regression
    "cvn": CVN,  # study 003, NOvA CVN
    "film": FiLMNet,  # study 004, DeepCalo
    "resnet": ResNet,  # small ResNet, any study
    "deepsets": DeepSets,  # point clouds: Deep Sets / Particle Flow Network
    "particlenet": ParticleNet,  # point clouds: ParticleNet (-Lite by default)
    "transformer": Transformer,  # point clouds: Particle-Transformer-style attention
    "combined": Combined,  # one tower per image / points input (the families above), one head
}

ModelConfig = Annotated[
    SeedCNNConfig
    | Calo3DConfig
    | CVNConfig
    | FiLMConfig
    | ResNetConfig
    | DeepSetsConfig
    | ParticleNetConfig
    | TransformerConfig
    | CombinedConfig,
    Field(discriminator="name"),
]


def build_model(config, input_shapes: dict[str, tuple[int, ...]], n_outputs: int) -> nn.Module:
    return MODEL_FAMILIES[config.name](config, {k: tuple(v) for k, v in input_shapes.items()}, n_outputs)
