"""Calorimeter towers around a centre on an eta-phi grid (study 000): kind `etaphi`.

image[c, i_eta, i_phi] on a centred grid; phi offsets are wrapped into [-pi, pi). One channel
per point set, or per value of `channel_branch`: a point whose channel value is not an integer
in [0, n_channels) is dropped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from hepray.inputs.base import Encoder, Norm, Strict
from hepray.inputs.kernels import (
    ArrayLike,
    Scatter,
    SparseImages,
    accumulate,
    grid_index,
    jagged,
    normalize_in_place,
    per_event,
    per_event_sum,
    pixel_coordinate,
    point_set,
    safe_divide,
    wrap_phi,
)


class PointSet(Strict):
    """Jagged per-event points: branch names of their eta, phi and value (energy, pT)."""

    eta: str
    phi: str
    value: str


class EtaPhiCenter(Strict):
    eta: str
    phi: str


class EtaPhiImage(Strict):
    """Calorimeter towers around a centre on a centred eta-phi grid (study 000).

    Pixel of a point: floor(d / cell + size / 2), d the offset from the centre, phi offsets
    wrapped into [-pi, pi). One channel per point set, or per value of `channel_branch`.
    """

    kind: Literal["etaphi"]
    points: list[PointSet] = Field(min_length=1)
    center: EtaPhiCenter | Literal["centroid"] = "centroid"
    size: int = Field(47, gt=0)
    cell: float = Field(0.0174, gt=0, description="pixel size in eta (and in phi unless cell_phi is given)")
    cell_phi: float | None = Field(None, gt=0, description="pixel size in phi, e.g. 2*pi/360 for a 360-cell ring")
    channel_branch: str | None = None
    n_channels: int | None = Field(None, gt=0, description="number of channel_branch values, 0..n-1")
    norm: Norm = "none"

    @model_validator(mode="after")
    def _channels(self) -> EtaPhiImage:
        if self.channel_branch is not None:
            if len(self.points) != 1:
                raise ValueError("channel_branch needs exactly one point set")
            if self.n_channels is None:
                raise ValueError("channel_branch needs n_channels")
        elif self.n_channels is not None:
            raise ValueError("n_channels goes with channel_branch (otherwise one channel per point set)")
        return self

    @property
    def phi_cell(self) -> float:
        return self.cell_phi or self.cell

    @property
    def channels(self) -> int:
        return self.n_channels if self.channel_branch else len(self.points)

    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)


class EtaPhiEncoder(Encoder):
    kind = "etaphi"
    spec_class = EtaPhiImage

    def branches(self) -> set[str]:
        spec = self.spec
        names = {name for points in spec.points for name in (points.eta, points.phi, points.value)}
        if spec.center != "centroid":
            names |= {spec.center.eta, spec.center.phi}
        if spec.channel_branch is not None:
            names.add(spec.channel_branch)
        return names

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        return normalize_in_place(accumulate(*_etaphi(self.spec, arrays)), self.spec.norm)

    @property
    def travels_ragged(self) -> bool:
        return True

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        return SparseImages.from_scatter(_etaphi(self.spec, arrays))


def _etaphi(spec: EtaPhiImage, arrays: dict[str, ArrayLike]) -> Scatter:
    sets = [point_set(arrays, [p.eta, p.phi, p.value]) for p in spec.points]
    n_events = len(sets[0][1])
    for (_, counts), points in zip(sets, spec.points):
        if len(counts) != n_events:
            raise ValueError(f"branch {points.eta!r}: {len(counts)} events, expected {n_events}")

    if spec.center == "centroid":
        eta_center, phi_center = _etaphi_centroid(sets, n_events)
    else:
        eta_center = per_event(arrays, spec.center.eta, n_events)
        phi_center = per_event(arrays, spec.center.phi, n_events)

    size = spec.size
    flat_index, inside, weights = [], [], []
    for set_number, ((eta, phi, value), counts) in enumerate(sets):
        # np.repeat of per-event values is cheaper than gathering them through an event index.
        eta_offset = eta.astype(np.float64)
        eta_offset -= np.repeat(eta_center, counts)
        phi_offset = phi.astype(np.float64)
        phi_offset -= np.repeat(phi_center, counts)
        pixels = [
            pixel_coordinate(eta_offset, spec.cell, size / 2),
            pixel_coordinate(wrap_phi(phi_offset), spec.phi_cell, size / 2),
        ]
        index, ok = grid_index(pixels, (size, size))
        if spec.channel_branch is not None:
            channel, ok = _channel_of_points(arrays, spec, counts, ok)
            index += channel * (size * size)
        elif set_number > 0:
            index += set_number * size * size
        flat_index.append(index)
        inside.append(ok)
        weights.append(value)
    return Scatter(n_events, spec.shape(), flat_index, inside, weights, [counts for _, counts in sets])


def _etaphi_centroid(sets: list[tuple[list[np.ndarray], np.ndarray]], n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """Value-weighted centre over all point sets: mean eta, circular mean phi; (0, 0) if no weight."""
    total = np.zeros(n_events)
    eta_sum = np.zeros(n_events)
    sin_sum = np.zeros(n_events)
    cos_sum = np.zeros(n_events)
    for (eta, phi, value), counts in sets:
        event = np.repeat(np.arange(n_events), counts)
        value = value.astype(np.float64)
        # float32 sin/cos run ~20x faster than float64 here and leave the centre good to ~1e-7 rad,
        # far below a cell; the sums are float64.
        phi = phi.astype(np.float32, copy=False)
        total += per_event_sum(event, value, n_events)
        eta_sum += per_event_sum(event, value * eta, n_events)
        sin_sum += per_event_sum(event, value * np.sin(phi), n_events)
        cos_sum += per_event_sum(event, value * np.cos(phi), n_events)
    return safe_divide(eta_sum, total), np.arctan2(sin_sum, cos_sum)


def _channel_of_points(
    arrays: dict[str, ArrayLike], spec: EtaPhiImage, counts: np.ndarray, inside: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Channel of each point from `channel_branch`; non-integer or out-of-range values are dropped."""
    values, channel_counts = jagged(arrays, spec.channel_branch)
    if not np.array_equal(channel_counts, counts):
        raise ValueError(
            f"branches {spec.points[0].eta!r} and {spec.channel_branch!r} have different numbers of points per event"
        )
    with np.errstate(invalid="ignore"):
        channel = values.astype(np.int64)
    inside = inside & (channel >= 0) & (channel < spec.n_channels)
    if values.dtype.kind == "f":
        inside &= channel == values
    return channel, inside
