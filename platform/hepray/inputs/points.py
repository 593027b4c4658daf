"""Per-constituent features as a point cloud (jet constituents, hits): kind `points`.

Each feature is a jagged branch or an expression of jagged branches (`log(pfcand_ptrel)`), one
value per point. Points are ordered by `sort_by` (descending, e.g. pT; default: the file's order),
the first `max` kept and the rest dropped. The model's tensor is (max, 1 + F): channel 0 is the
mask (1 for a point, 0 for padding), channels 1..F the features in the order listed; padding rows
are all zero and follow the points. Points travel ragged (only the kept points, no padding) and
are padded in the worker that feeds the model.
"""

from __future__ import annotations

from typing import Literal

import awkward as ak
import numpy as np
import torch
from pydantic import Field

from hepray.expr import Expression
from hepray.inputs.base import Encoder, Strict
from hepray.inputs.kernels import ArrayLike, Ragged, check_finite, flatten


class PointCloud(Strict):
    """Per-point features of a jagged collection, sorted, truncated or padded to `max` points."""

    kind: Literal["points"]
    features: list[str] = Field(min_length=1, description="jagged branches or expressions, one value per point")
    sort_by: str | None = Field(
        None, description="points in descending order of this (e.g. pfcand_ptrel); default the file's order"
    )
    max: int = Field(64, gt=0, description="points kept per event: more are dropped, fewer padded")

    def shape(self) -> tuple[int, ...]:
        return (self.max, 1 + len(self.features))


class PointsEncoder(Encoder):
    kind = "points"
    spec_class = PointCloud

    def __init__(self, spec: PointCloud):
        super().__init__(spec)
        self.features = [Expression(text) for text in spec.features]
        self.sort_key = Expression(spec.sort_by) if spec.sort_by else None

    def branches(self) -> set[str]:
        expressions = [*self.features, *([self.sort_key] if self.sort_key else [])]
        return {name for expression in expressions for name in expression.branches}

    @property
    def travels_ragged(self) -> bool:
        return True

    def ragged(self, arrays: dict[str, ArrayLike]) -> Ragged:
        counts, values = self._kept_points(arrays)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return Ragged(offsets, {str(k): values[:, k] for k in range(values.shape[1])})

    def ragged_dtypes(self) -> dict[str, np.dtype]:
        return {str(k): np.dtype(np.float32) for k in range(len(self.features))}

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        return self.decode(self.ragged(arrays))

    def decode(self, travelled: np.ndarray | Ragged) -> np.ndarray:
        if not isinstance(travelled, Ragged):
            return travelled
        counts = np.diff(travelled.offsets)
        event = np.repeat(np.arange(len(counts)), counts)
        slot = np.arange(len(event)) - np.repeat(travelled.offsets[:-1], counts)
        padded = np.zeros((len(counts), *self.spec.shape()), dtype=np.float32)
        padded[event, slot, 0] = 1.0
        for k in range(len(self.features)):
            padded[event, slot, 1 + k] = travelled.columns[str(k)]
        return padded

    def decode_tensors(
        self, offsets: torch.Tensor, columns: dict[str, torch.Tensor], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`decode` on the tensors' device: the points copied into their slots, mask 1; no arithmetic,
        so the same bits on any device. Event i lands in row rows[i] if given."""
        n_points = len(columns["0"])  # known on the host: building the index never waits on a GPU
        event = torch.repeat_interleave(offsets.diff(), output_size=n_points)
        slot = torch.arange(n_points, device=offsets.device) - offsets[:-1].index_select(0, event)
        row = event if rows is None else rows.index_select(0, event)
        padded = torch.zeros((len(offsets) - 1, *self.spec.shape()), dtype=torch.float32, device=offsets.device)
        padded[row, slot, 0] = 1.0
        padded[row, slot, 1:] = torch.stack([columns[str(k)] for k in range(len(self.features))], dim=1)
        return padded

    def _kept_points(self, arrays: dict[str, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        """Points per event after truncation and their (points, F) float32 features, event by event."""
        columns, counts = [], None
        for expression in self.features:
            flat, these = _per_point(expression, arrays)
            if counts is not None and not np.array_equal(counts, these):
                raise ValueError(
                    f"'{self.spec.features[0]}' and '{expression.text}' have different numbers of points per event"
                )
            columns.append(flat)
            counts = these
        values = np.stack(columns, axis=1).astype(np.float32)
        event = np.repeat(np.arange(len(counts)), counts)
        if self.sort_key is not None:
            key, key_counts = _per_point(self.sort_key, arrays)
            if not np.array_equal(key_counts, counts):
                raise ValueError(f"sort_by '{self.sort_key.text}' has other numbers of points than the features")
            order = np.lexsort((-key, event))  # by event, then descending key; ties keep the file's order
            values = values[order]
        slot = np.arange(len(event)) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.minimum(counts, self.spec.max), values[slot < self.spec.max]


def _per_point(expression: Expression, arrays: dict[str, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """An expression's flat float64 values per point and points per event, checked finite."""
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN/inf are reported just below, naming the feature
        values = expression.evaluate(arrays)
    if not isinstance(values, ak.Array) or values.ndim != 2:
        raise ValueError(f"'{expression.text}' has one value per event; points need a list per event")
    flat, counts = flatten(values)
    flat = np.asarray(flat, dtype=np.float64)
    check_finite(flat, expression.text, counts)
    return flat, counts
