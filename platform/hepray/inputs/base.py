"""What every input kind provides: its job-file spec, the branches it reads, how a read task
encodes a slice of events, and how a worker turns what travelled into the model's tensor."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from hepray.inputs.kernels import ArrayLike, SparseImages, densify

# Per event, over all channels; log1p is sign(x) * log1p(|x|) so negative noise stays finite.
Norm = Literal["none", "l1", "l2", "max", "log1p"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Encoder:
    """One input kind. Subclasses set `kind` and `spec_class` and implement `branches` and
    `dense`; a kind whose image is a sum of point values also implements `sparse`, and its
    events then travel as their in-window points (SparseImages), ~10x fewer bytes than pixels."""

    kind: ClassVar[str]
    spec_class: ClassVar[type[BaseModel]]

    def __init__(self, spec: BaseModel):
        self.spec = spec

    def branches(self) -> set[str]:
        """The branch names this input reads."""
        raise NotImplementedError

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        """The model's input for a slice of events: float32 (N, *shape), norm applied."""
        raise NotImplementedError

    @property
    def travels_sparse(self) -> bool:
        """Whether `sparse` is available for this spec (the read task then ships points)."""
        return False

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        """The in-window points of a slice of events; `decode` gives `dense`'s images."""
        raise TypeError(f"input kind {self.kind!r} has no sparse form")

    def encode(self, arrays: dict[str, ArrayLike], sparse: bool) -> np.ndarray | SparseImages:
        """What a read task ships for a slice of events: points when asked and possible, else dense."""
        return self.sparse(arrays) if sparse and self.travels_sparse else self.dense(arrays)

    def decode(self, travelled: np.ndarray | SparseImages) -> np.ndarray:
        """A worker's dense float32 tensor data from what a read task shipped."""
        if isinstance(travelled, SparseImages):
            return densify(travelled, self.spec.norm)
        return travelled
