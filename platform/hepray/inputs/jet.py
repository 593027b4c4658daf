"""Jet constituents in the jet frame (study 003): kind `jet`.

image[0, i_eta, i_phi] on [-extent, extent) in both axes, cell = 2 * extent / size.
Preprocessing steps run in the fixed order translate, rotate, flip, whatever order the list
gives; all are pT-weighted per event: translate moves the centroid to the origin; rotate turns
the major principal axis of the second-moment tensor (about the origin) onto the eta axis; flip
mirrors eta and phi separately so that at least half the pT has eta >= 0 and at least half has
phi >= 0 (strictly: sum(pT * sign(x)) >= 0), which puts the leading prong of a two-prong jet on +eta.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from hepray.inputs.base import Encoder, Norm, Strict
from hepray.inputs.kernels import (
    ArrayLike,
    Scatter,
    SparseImages,
    accumulate,
    grid_index,
    normalize_in_place,
    per_event_sum,
    pixel_coordinate,
    point_set,
    safe_divide,
)


class JetImage(Strict):
    """Jet constituents in the jet frame (study 003), with optional standard preprocessing."""

    kind: Literal["jet"]
    eta: str
    phi: str
    value: str
    size: int = Field(33, gt=0, description="odd, so the jet axis is a pixel centre after translate")
    extent: float = Field(0.825, gt=0, description="half-width of the image in eta and phi")
    preprocess: set[Literal["translate", "rotate", "flip"]] = Field(
        {"translate", "rotate", "flip"}, description="always applied in the order translate, rotate, flip"
    )
    norm: Norm = "l1"

    def shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size)


class JetEncoder(Encoder):
    kind = "jet"
    spec_class = JetImage

    def branches(self) -> set[str]:
        return {self.spec.eta, self.spec.phi, self.spec.value}

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        return normalize_in_place(accumulate(*_jet(self.spec, arrays)), self.spec.norm)

    @property
    def travels_ragged(self) -> bool:
        return True

    def sparse(self, arrays: dict[str, ArrayLike]) -> SparseImages:
        return SparseImages.from_scatter(_jet(self.spec, arrays))


def _jet(spec: JetImage, arrays: dict[str, ArrayLike]) -> Scatter:
    (eta, phi, pt), counts = point_set(arrays, [spec.eta, spec.phi, spec.value])
    n_events = len(counts)
    event = np.repeat(np.arange(n_events), counts)
    eta = eta.astype(np.float64)  # copies: preprocessing updates them in place
    phi = phi.astype(np.float64)
    pt = pt.astype(np.float64, copy=False)
    steps = set(spec.preprocess)

    if "translate" in steps:
        total = per_event_sum(event, pt, n_events)
        eta -= safe_divide(per_event_sum(event, pt * eta, n_events), total)[event]
        phi -= safe_divide(per_event_sum(event, pt * phi, n_events), total)[event]
    if "rotate" in steps:
        eta, phi = _rotate_principal_axis_to_eta(eta, phi, pt, event, n_events)
    if "flip" in steps:
        for coordinate in (eta, phi):
            balance = per_event_sum(event, pt * np.sign(coordinate), n_events)
            coordinate *= np.where(balance < 0, -1.0, 1.0)[event]

    cell = 2 * spec.extent / spec.size
    index, inside = grid_index(
        [pixel_coordinate(eta, cell, spec.size / 2), pixel_coordinate(phi, cell, spec.size / 2)], (spec.size, spec.size)
    )
    return Scatter(n_events, spec.shape(), [index], [inside], [pt], [counts])


def _rotate_principal_axis_to_eta(
    eta: np.ndarray, phi: np.ndarray, pt: np.ndarray, event: np.ndarray, n_events: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each event about the origin so its major pT-weighted axis lies along eta."""
    moment_eta = per_event_sum(event, pt * eta * eta, n_events)
    moment_phi = per_event_sum(event, pt * phi * phi, n_events)
    moment_mixed = per_event_sum(event, pt * eta * phi, n_events)
    # The major axis is at angle theta from +eta; turning every point by -theta puts it on eta.
    # Isotropic events (and single points) give theta = 0: no rotation.
    theta = 0.5 * np.arctan2(2 * moment_mixed, moment_eta - moment_phi)
    cos, sin = np.cos(theta)[event], np.sin(theta)[event]
    return cos * eta + sin * phi, cos * phi - sin * eta
