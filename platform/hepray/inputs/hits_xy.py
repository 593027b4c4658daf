"""Drift-chamber hits in the transverse plane (study 002): kind `hits_xy`.

image[0, i_y, i_x] (row = y, column = x, as `imshow(origin="lower")` shows the detector).
`total` and `average` use every hit of the event, inside the window or not. With
`track_branch`, image[k] is the image track k + 1 alone would give (`total` and `average` over
that track's hits); hits whose track value is not an integer in [1, tracks] (noise: 0) are in
no channel. A list of encodings stacks their images as channels, in the list's order (each with
its own norm, and its track channels).
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
    event_offsets,
    grid_index,
    normalize_in_place,
    per_event_sum,
    pixel_coordinate,
    point_set,
    safe_divide,
)

Encoding = Literal["binary", "total", "average", "per_hit"]


class HitsXYImage(Strict):
    """Drift-chamber hits in the transverse plane (study 002): X=(XE+XW)/2, Y=(YE+YW)/2.

    Encodings as the study defines them: binary (1 per hit pixel), total (every hit pixel
    carries the event's summed energy), average (summed energy / number of hits), per_hit
    (each pixel its hits' own energy).
    """

    kind: Literal["hits_xy"]
    xe: str = "XE"
    xw: str = "XW"
    ye: str = "YE"
    yw: str = "YW"
    energy: str = "RC"
    size: int = Field(64, gt=0)
    extent: float = Field(810.0, gt=0, description="half-width of the square window in the hits' length unit")
    encoding: Encoding | list[Encoding] = Field(
        "per_hit",
        description="one encoding, or a list stacked as channels: [binary, per_hit] gives where the hits are "
        "beside what they deposited",
    )
    norm: Norm = "none"
    track_branch: str | None = Field(
        None,
        description="per-hit 1-based track index (the study's TRK): channel k holds the hits of track k + 1 "
        "alone; hits of no track slot (0: noise) are dropped",
    )
    tracks: int | None = Field(None, gt=0, description="track slots (channels) with track_branch")

    @model_validator(mode="after")
    def _channels(self) -> HitsXYImage:
        if (self.track_branch is None) != (self.tracks is None):
            raise ValueError("track_branch and tracks go together (one channel per track slot)")
        if not self.encodings or len(set(self.encodings)) != len(self.encodings):
            raise ValueError(f"encoding: a list of distinct encodings, got {self.encoding}")
        return self

    @property
    def encodings(self) -> list[str]:
        return [self.encoding] if isinstance(self.encoding, str) else list(self.encoding)

    def single(self) -> list[HitsXYImage]:
        """One image spec per encoding, whose channels stacked make this one's."""
        return [self.model_copy(update={"encoding": encoding}) for encoding in self.encodings]

    def shape(self) -> tuple[int, ...]:
        return (len(self.encodings) * (self.tracks or 1), self.size, self.size)


class HitsXYEncoder(Encoder):
    kind = "hits_xy"
    spec_class = HitsXYImage

    def branches(self) -> set[str]:
        spec = self.spec
        names = {spec.xe, spec.xw, spec.ye, spec.yw}
        if set(spec.encodings) != {"binary"}:  # binary images ignore the energy
            names.add(spec.energy)
        if spec.track_branch is not None:
            names.add(spec.track_branch)
        return names

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        stacked = [_dense(one, arrays) for one in self.spec.single()]
        return stacked[0] if len(stacked) == 1 else np.concatenate(stacked, axis=1)

    @property
    def travels_ragged(self) -> bool:
        return self.spec.encoding == "per_hit"  # the other encodings are not sums of hit values

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        if not self.travels_ragged:
            return super().sparse(arrays)
        return SparseImages.from_scatter(_hits_xy(self.spec, arrays))


def _dense(spec: HitsXYImage, arrays: dict[str, ArrayLike]) -> np.ndarray:
    images = _hits_xy(spec, arrays)
    if isinstance(images, Scatter):
        images = accumulate(*images)
    return normalize_in_place(images, spec.norm)


def _hits_xy(spec: HitsXYImage, arrays: dict[str, ArrayLike]) -> Scatter | np.ndarray:
    names = [spec.xe, spec.xw, spec.ye, spec.yw] + ([] if spec.encoding == "binary" else [spec.energy])
    if spec.track_branch is not None:
        names.append(spec.track_branch)
    (xe, xw, ye, yw, *rest), counts = point_set(arrays, names)
    energy = rest[:1] if spec.encoding != "binary" else []
    n_events = len(counts)
    x = np.add(xe, xw, dtype=np.float64)
    x *= 0.5
    y = np.add(ye, yw, dtype=np.float64)
    y *= 0.5
    cell = 2 * spec.extent / spec.size
    index, inside = grid_index(
        [pixel_coordinate(y, cell, spec.size / 2), pixel_coordinate(x, cell, spec.size / 2)], (spec.size, spec.size)
    )
    channels = spec.shape()[0]
    if spec.track_branch is not None:
        channel, on_track = _track_channel(rest[-1], channels)
        inside &= on_track
        index += (channel * (spec.size * spec.size)).astype(np.int32)
    if spec.encoding == "per_hit":
        return Scatter(n_events, spec.shape(), [index], [inside], energy, [counts])

    image_size = channels * spec.size * spec.size
    hit = np.zeros(n_events * image_size, dtype=bool)
    hit[(index + event_offsets(counts, image_size))[inside]] = True
    images = hit.reshape(n_events, *spec.shape()).astype(np.float32)
    if spec.encoding == "binary":
        return images
    # the summed energy per image channel: the event's, or with track channels each track's
    owner = np.repeat(np.arange(n_events), counts)
    weights, hits = energy[0], counts.astype(np.float64)
    if spec.track_branch is not None:
        owner = (owner * channels + channel)[on_track]
        weights = weights[on_track]
        hits = np.bincount(owner, minlength=n_events * channels).astype(np.float64)
    channel_energy = per_event_sum(owner, weights, n_events * channels)
    if spec.encoding == "average":
        channel_energy = safe_divide(channel_energy, hits)
    images *= channel_energy.astype(np.float32).reshape(n_events, channels)[:, :, None, None]
    return images


def _track_channel(track: np.ndarray, tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel (track - 1) of each hit, and whether it has one: an integer track value in [1, tracks]."""
    with np.errstate(invalid="ignore"):
        channel = track.astype(np.int64) - 1
    on_track = (channel >= 0) & (channel < tracks)
    if track.dtype.kind == "f":
        on_track &= channel + 1 == track
    return np.where(on_track, channel, 0), on_track
