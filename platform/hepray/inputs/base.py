"""What every input kind provides: its job-file spec, the branches it reads, how a read task
encodes a slice of events, and how a worker turns what travelled into the model's tensor (on
the worker's device, with torch: `decode_tensors`; `decode` is its numpy twin, which the dense
path and the tests use)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from hepray.inputs.kernels import ArrayLike, Ragged, SparseImages, densify, densify_tensors

# Per event, over all channels; log1p is sign(x) * log1p(|x|) so negative noise stays finite.
Norm = Literal["none", "l1", "l2", "max", "log1p"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Encoder:
    """One input kind. Subclasses set `kind` and `spec_class` and implement `branches` and
    `dense`. A kind whose events can travel as a variable number of rows says `travels_ragged`:
    image kinds that are sums of point values implement `sparse` (their in-window points, ~10x
    fewer bytes than pixels), other kinds `ragged`, `ragged_dtypes`, `decode` and `decode_tensors`."""

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

    def derived_values(self, arrays: dict[str, ArrayLike], n_events: int) -> list[tuple[str, np.ndarray]]:
        """Per-event values this input computes from its branches, as (what, float32 values), for
        read tasks to check finite event by event (the branches themselves are checked anyway)."""
        return []

    @property
    def travels_ragged(self) -> bool:
        """Whether a read task ships this input's events as `ragged` rows instead of dense tensors."""
        return False

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        """An image kind's in-window points for a slice of events; densify gives `dense`'s images."""
        raise TypeError(f"input kind {self.kind!r} has no sparse form")

    def ragged(self, arrays: dict[str, ArrayLike]) -> Ragged:
        """What a read task ships for a slice of events when the input travels ragged."""
        images = self.sparse(arrays)
        return Ragged(images.offsets, {"pixel": images.pixel, "value": images.value})

    def ragged_dtypes(self) -> dict[str, np.dtype]:
        """The columns `ragged` gives (what an empty slice ships)."""
        return {"pixel": np.dtype(np.int32), "value": np.dtype(np.float32)}

    def decode(self, travelled: np.ndarray | Ragged) -> np.ndarray:
        """A worker's dense float32 tensor data from what a read task shipped."""
        if isinstance(travelled, Ragged):
            images = SparseImages(
                travelled.offsets, travelled.columns["pixel"], travelled.columns["value"], self.spec.shape()
            )
            return densify(images, self.spec.norm)
        return travelled

    def decode_tensors(
        self, offsets: torch.Tensor, columns: dict[str, torch.Tensor], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`decode` of a batch's ragged rows as torch ops on their device (offsets: int64, from 0):
        the same float32 (N, *shape) tensor, bit for bit on CPU; event i lands in row rows[i] if given."""
        return densify_tensors(offsets, columns["pixel"], columns["value"], self.spec.shape(), self.spec.norm, rows)
