"""3-D grids (study 001): kind `voxels`.

image[0, i_x, i_y, i_z]; flat cells are read in C order (z fastest). Points are binned over
the half-open range [low, high) per axis.
"""

from __future__ import annotations

import math
from typing import Literal

import awkward as ak
import numpy as np
from pydantic import ConfigDict, Field, model_validator

from hepray.inputs.base import Encoder, Norm, Strict
from hepray.inputs.kernels import (
    ArrayLike,
    Scatter,
    SparseImages,
    accumulate,
    check_finite,
    get_branch,
    grid_index,
    normalize_in_place,
    pixel_coordinate,
    point_set,
)


class VoxelPoints(Strict):
    x: str
    y: str
    z: str
    value: str


class VoxelImage(Strict):
    """3D grids (study 001): a flat fixed-length cell branch reshaped to `shape`, or points binned."""

    kind: Literal["voxels"]
    shape_: tuple[int, int, int] = Field(alias="shape")
    cells: str | None = None
    points: VoxelPoints | None = None
    range: list[tuple[float, float]] | None = Field(None, description="(low, high) per axis for points")
    norm: Norm = "none"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> VoxelImage:
        if (self.cells is None) == (self.points is None):
            raise ValueError("give exactly one of cells or points")
        if self.points is not None and (self.range is None or len(self.range) != 3):
            raise ValueError("points need range: [[xlo, xhi], [ylo, yhi], [zlo, zhi]]")
        if self.range is not None and any(low >= high for low, high in self.range):
            raise ValueError("range: each (low, high) needs low < high")
        if any(n <= 0 for n in self.shape_):
            raise ValueError("shape: every size must be > 0")
        return self

    def shape(self) -> tuple[int, ...]:
        return (1, *self.shape_)


class VoxelEncoder(Encoder):
    kind = "voxels"
    spec_class = VoxelImage

    def branches(self) -> set[str]:
        spec = self.spec
        if spec.cells is not None:
            return {spec.cells}
        return {spec.points.x, spec.points.y, spec.points.z, spec.points.value}

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        if self.spec.cells is not None:
            images = _voxel_cells(self.spec, arrays)
        else:
            images = accumulate(*_voxel_points(self.spec, arrays))
        return normalize_in_place(images, self.spec.norm)

    @property
    def travels_ragged(self) -> bool:
        return self.spec.cells is None  # fixed cell arrays are already dense

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        if not self.travels_ragged:
            return super().sparse(arrays)
        return SparseImages.from_scatter(_voxel_points(self.spec, arrays))


def _voxel_cells(spec: VoxelImage, arrays: dict[str, ArrayLike]) -> np.ndarray:
    """Each event's cells, stored flat in C order (or already shaped), reshaped to (1, X, Y, Z)."""
    name, expected = spec.cells, math.prod(spec.shape_)
    values = get_branch(arrays, name)
    try:
        cells = np.asarray(ak.to_numpy(values) if isinstance(values, ak.Array) else values)
    except ValueError:  # jagged lists: each event must still hold exactly `expected` cells
        cells = _jagged_cells(values, name, expected, spec.shape_)
    if cells.ndim < 2:
        raise ValueError(f"branch {name!r}: expected {expected} cells per event, found one number per event")
    cells = cells.reshape(len(cells), -1)
    if cells.shape[1] != expected:
        raise ValueError(
            f"branch {name!r}: expected {expected} cells per event for shape {spec.shape_}, found {cells.shape[1]}"
        )
    check_finite(cells.reshape(-1), name)
    return cells.astype(np.float32).reshape(len(cells), *spec.shape())


def _jagged_cells(values: ak.Array, name: str, expected: int, shape: tuple[int, int, int]) -> np.ndarray:
    while values.ndim > 2:  # nested lists per event: one flat list per event
        values = ak.flatten(values, axis=2)
    counts = ak.to_numpy(ak.num(values, axis=1))
    wrong = np.flatnonzero(counts != expected)
    if len(wrong):
        raise ValueError(
            f"branch {name!r}: expected {expected} cells per event for shape {shape}, "
            f"found {counts[wrong[0]]} in event {wrong[0]} of this batch"
        )
    return ak.to_numpy(ak.flatten(values, axis=1)).reshape(len(counts), expected)


def _voxel_points(spec: VoxelImage, arrays: dict[str, ArrayLike]) -> Scatter:
    names = [spec.points.x, spec.points.y, spec.points.z, spec.points.value]
    (*coordinates, value), counts = point_set(arrays, names)
    pixels = []
    for coordinate, (low, high), bins, name in zip(coordinates, spec.range, spec.shape_, names):
        if not high > low:
            raise ValueError(f"voxels range for {name!r}: low {low} must be below high {high}")
        pixels.append(pixel_coordinate(np.subtract(coordinate, low, dtype=np.float64), (high - low) / bins, 0.0))
    index, inside = grid_index(pixels, spec.shape_)
    return Scatter(len(counts), spec.shape(), [index], [inside], [value], [counts])
