"""Several inputs of different kinds in one model: an image CNN and a point-cloud network on the
same events, e.g. a jet image and the jet's constituents.

    one tower per image or points input: an existing family's body on that input alone (its own
        head left out), `towers: {jet: {name: cvn, width: 0.25}, cands: {name: particlenet}}`
    the towers' embeddings side by side (in job order) + scalar inputs
        -> [Linear -> ReLU -> Dropout] per `head` width -> Linear(n_outputs)

A tower's embedding is what its family's head would read: CVN's and ResNet's globally pooled
features, seed_cnn's flattened or pooled ones, calo3d's branches, the point families' pooled
points or class token. An image or points input not named in `towers` gets a default tower
(resnet for an image, particlenet for points), so every input the job reads is used. A tower's
config keys that only shape its family's head (cvn's `dropout`, particlenet's `head`, ...) are
an error when set to other than their defaults. film conditions on scalars, which go to the
combined head here, so it is not a tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from hepray.models.calo3d import Calo3D, Calo3DConfig
from hepray.models.common import MLPHead, ModelSpec, Width, gather_scalars, scalar_width
from hepray.models.cvn import CVN, CVNConfig
from hepray.models.deepsets import DeepSets, DeepSetsConfig
from hepray.models.particlenet import ParticleNet, ParticleNetConfig
from hepray.models.resnet import ResNet, ResNetConfig
from hepray.models.seed_cnn import SeedCNN, SeedCNNConfig
from hepray.models.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class TowerFamily:
    model: type[nn.Module]
    ranks: tuple[int, ...]  # input shape lengths it takes: 2 points, 3 a 2-D image, 4 a 3-D image
    head_modules: tuple[str, ...]  # what its forward applies after embedding(): left out of a tower
    head_keys: frozenset[str]  # its config keys that only shape those modules


TOWER_FAMILIES = {
    "cvn": TowerFamily(CVN, (3,), ("dropout", "out"), frozenset({"dropout"})),
    "resnet": TowerFamily(ResNet, (3, 4), ("dropout", "out"), frozenset({"dropout"})),
    "seed_cnn": TowerFamily(SeedCNN, (3,), ("head",), frozenset({"dense", "dropout"})),
    "calo3d": TowerFamily(Calo3D, (4,), ("head",), frozenset({"dense", "dropout"})),
    "deepsets": TowerFamily(DeepSets, (2,), ("head",), frozenset({"head", "dropout"})),
    "particlenet": TowerFamily(ParticleNet, (2,), ("head",), frozenset({"head", "dropout"})),
    "transformer": TowerFamily(Transformer, (2,), ("head",), frozenset({"head"})),  # its dropout also acts inside
}
RANK_NAMES = {2: "points [max_points, 1 + features]", 3: "a 2-D image", 4: "a 3-D image"}

TowerConfig = Annotated[
    CVNConfig | ResNetConfig | SeedCNNConfig | Calo3DConfig | DeepSetsConfig | ParticleNetConfig | TransformerConfig,
    Field(discriminator="name"),
]


class CombinedConfig(ModelSpec):
    name: Literal["combined"]
    towers: dict[str, TowerConfig] = Field(
        {}, description="input name -> the family whose body reads it; other image/points inputs get the default"
    )
    head: list[Width] = Field([128], description="hidden widths after the towers' embeddings (+ scalars)")
    dropout: float = Field(0.1, ge=0, lt=1, description="after each head layer")

    @model_validator(mode="after")
    def _no_tower_head_keys(self):
        # Only values other than the default: a resolved job (job.yaml, model.pt) lists every key.
        for name, tower in self.towers.items():
            fields = type(tower).model_fields
            ignored = [
                key
                for key in sorted(TOWER_FAMILIES[tower.name].head_keys)
                if getattr(tower, key) != fields[key].default
            ]
            if ignored:
                raise ValueError(
                    f"towers.{name}: {', '.join(ignored)} only shape(s) {tower.name}'s own head, which a tower "
                    "leaves out; the combined model's head and dropout replace it"
                )
        return self


def default_tower(rank: int) -> TowerConfig:
    return ParticleNetConfig(name="particlenet") if rank == 2 else ResNetConfig(name="resnet")


def build_tower(name: str, shape: tuple[int, ...], config: TowerConfig) -> tuple[nn.Module, int]:
    """The family's body on input `name` alone, without its head, and its embedding's width."""
    family = TOWER_FAMILIES[config.name]
    if len(shape) not in family.ranks:
        takes = " or ".join(RANK_NAMES[rank] for rank in family.ranks)
        raise ValueError(f"combined: tower {name!r} is {config.name}, which takes {takes}; {name!r} has shape {shape}")
    try:
        body = family.model(config, {name: shape}, 1)
    except ValueError as error:
        raise ValueError(f"combined: tower {name!r}: {error}") from error
    # Built without scalars, the head's first Linear reads exactly the embedding.
    first = next(m for part in family.head_modules for m in getattr(body, part).modules() if isinstance(m, nn.Linear))
    for part in family.head_modules:
        delattr(body, part)
    return body, first.in_features


class Combined(nn.Module):
    def __init__(self, config: CombinedConfig, input_shapes: dict[str, tuple[int, ...]], n_outputs: int):
        super().__init__()
        self.input_shapes = input_shapes
        unknown = sorted(set(config.towers) - set(input_shapes))
        if unknown:
            raise ValueError(
                f"combined: towers name {unknown}, which are not inputs; the job has {sorted(input_shapes)}"
            )
        scalars = [name for name in config.towers if len(input_shapes[name]) == 1]
        if scalars:
            raise ValueError(f"combined: {scalars} are scalar inputs, which join the head without a tower")
        self.names = [name for name, shape in input_shapes.items() if len(shape) in RANK_NAMES]
        if not self.names:
            raise ValueError(f"combined: needs at least one image or points input; the job has {input_shapes}")
        towers = [
            build_tower(name, input_shapes[name], config.towers.get(name) or default_tower(len(input_shapes[name])))
            for name in self.names
        ]
        self.towers = nn.ModuleList(tower for tower, _ in towers)  # parallel to self.names (names may hold dots)
        width = sum(width for _, width in towers)
        self.head = MLPHead(width, scalar_width(input_shapes), config.head, config.dropout, n_outputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        embeddings = torch.cat([tower.embedding(inputs) for tower in self.towers], dim=1)
        return self.head(embeddings, gather_scalars(inputs, self.input_shapes))
