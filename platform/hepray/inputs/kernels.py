"""Shared pieces of the input kernels: reading jagged branches as flat arrays, grid indices,
summing points into images, and per-event norms.

Every kernel works on a whole batch at once, never looping over events or points:
jagged per-point branches become flat numpy values plus points per event, each point gets
a flat pixel index computed from float64 offsets, points outside the window are sent to a
dump bin, and the values are summed into a zeroed float32 buffer with `np.add.at`.
A sparse input stops before the sum: the in-window points (pixel, value) per event, which
the read tasks ship instead of dense images; `densify` turns them into the exact dense images,
and `densify_tensors` does the same with torch ops where the tensors are (the training device).
The norms are one torch function, `normalize_`, for the read tasks' dense images and the device
alike, so on CPU both ways give the same bits.

Conventions shared by the image kinds:

- Centred grids: a coordinate d (offset from the centre) lands in pixel
  floor(d / cell + size / 2) and is kept only if that lies in [0, size). A point exactly on
  a pixel edge goes to the upper pixel; points outside the window are dropped, never
  clipped into the edge row (study 000's int(22 + d / 0.0174) did both wrong).
- Norms act per event over all channels together. `max` divides by the largest |value|;
  `log1p` is sign(x) * log1p(|x|), so negative energies (noise) stay finite.
- Any NaN or inf in a branch an input reads, inside the window or not, raises ValueError
  naming the branch; the caller adds the file and entry range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import awkward as ak
import numpy as np
import torch

ArrayLike = ak.Array | np.ndarray

TWO_PI = 2.0 * math.pi


@dataclass
class Ragged:
    """A variable number of rows per event, as a read task ships them: event i owns rows
    offsets[i]:offsets[i+1] of every column (each 1-D). The input's encoder made it and decodes it."""

    offsets: np.ndarray  # int64, n_events + 1, starting at 0
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + sum(column.nbytes for column in self.columns.values())

    def slice(self, begin: int, stop: int) -> Ragged:
        offsets = self.offsets[begin : stop + 1]
        return Ragged(
            offsets - offsets[0], {name: column[offsets[0] : offsets[-1]] for name, column in self.columns.items()}
        )

    @staticmethod
    def empty(dtypes: dict[str, np.dtype]) -> Ragged:
        return Ragged(np.zeros(1, dtype=np.int64), {name: np.zeros(0, dtype=dtype) for name, dtype in dtypes.items()})

    @staticmethod
    def concat(parts: list[Ragged], order: np.ndarray | None = None) -> Ragged:
        """The parts' rows end to end; with `order` (a permutation of all their rows), row i of the
        result is row order[i] of that (a read task's shuffle)."""
        if order is None:
            shift = np.cumsum([0] + [part.offsets[-1] for part in parts[:-1]])
            offsets = np.concatenate([parts[0].offsets[:1]] + [part.offsets[1:] + s for part, s in zip(parts, shift)])
            return Ragged(
                offsets, {name: np.concatenate([part.columns[name] for part in parts]) for name in parts[0].columns}
            )
        # Each part's values are written straight to the places `order` gives their events: one copy
        # of the points where concatenating and then gathering made two, and a fancy assignment from a
        # contiguous source instead of a fancy gather: ~1.6x faster (benchmarks/RESULTS.md, issue 21).
        counts = np.concatenate([np.diff(part.offsets) for part in parts])
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(counts[order], out=offsets[1:])
        place = np.empty_like(order)
        place[order] = np.arange(len(order))  # where each event goes
        columns = {name: np.empty(offsets[-1], dtype=column.dtype) for name, column in parts[0].columns.items()}
        first = 0
        for part in parts:  # one pass per part: each point's destination is its event's new start + its rank
            destination = np.repeat(
                offsets[place[first : first + len(part)]] - part.offsets[:-1], np.diff(part.offsets)
            )
            destination += np.arange(part.offsets[-1])
            for name, column in columns.items():
                column[destination] = part.columns[name]
            first += len(part)
        return Ragged(offsets, columns)


@dataclass
class SparseImages:
    """A batch of images as the points inside them: event i owns pixel[offsets[i]:offsets[i+1]] and
    the same slice of value. pixel indexes the flattened (C, ...) image; points sharing a pixel sum.
    The norm is not applied yet: `densify` applies it, so sums over shared pixels come first."""

    offsets: np.ndarray  # int64, n_events + 1, starting at 0
    pixel: np.ndarray  # int32
    value: np.ndarray  # float32
    shape: tuple[int, ...]  # of one event's image

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def from_scatter(scatter: Scatter) -> SparseImages:
        """The in-window points of a kernel's scatter, ordered by event (densify sums them)."""
        n_events, shape, pixels, inside, weights, counts = scatter
        kept = []  # per point set: points inside the image per event
        for ok, set_counts in zip(inside, counts):
            inside_before = np.zeros(len(ok) + 1, dtype=np.int64)  # inside points before each point
            np.cumsum(ok, out=inside_before[1:])
            kept.append(np.diff(inside_before[np.concatenate([[0], np.cumsum(set_counts)])]))
        pixel = np.concatenate([i[ok] for i, ok in zip(pixels, inside)]).astype(np.int32, copy=False)
        value = np.concatenate([w[ok] for w, ok in zip(weights, inside)]).astype(np.float32, copy=False)
        if len(pixels) > 1:  # several point sets: bring each event's points together
            event = np.concatenate([np.repeat(np.arange(n_events), k) for k in kept])
            order = np.argsort(event, kind="stable")
            pixel, value = pixel[order], value[order]
        offsets = np.zeros(n_events + 1, dtype=np.int64)
        np.cumsum(sum(kept), out=offsets[1:])
        return SparseImages(offsets, pixel, value, shape)


def densify(images: SparseImages, norm: str) -> np.ndarray:
    """Dense float32 (N, *shape) images with the norm applied: equal to make_input's for the same events."""
    dense = accumulate(
        len(images),
        images.shape,
        [images.pixel],
        [np.ones(len(images.pixel), dtype=bool)],
        [images.value],
        [np.diff(images.offsets)],
    )
    return normalize_in_place(dense, norm)


def densify_tensors(
    offsets: torch.Tensor,
    pixel: torch.Tensor,
    value: torch.Tensor,
    shape: tuple[int, ...],
    norm: str,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """`densify` as torch ops on the tensors' device, from a batch's offsets (int64), pixels and values;
    rows: the output row of each event (a permutation), which shuffles the batch as it is densified.

    index_add_ adds in the order of the index (documented), on CPU serially, as np.add.at does, and
    the norm is the same `normalize_`: the same bits as `densify`. On CUDA, index_add_ adds with
    atomics in no fixed order and the norms reduce in CUDA's order, so values may differ from the
    CPU's in the last bits (float32 rounding).
    """
    n_events, image_size = len(offsets) - 1, math.prod(shape)
    # output_size: the number of points is known on the host, so building the index never waits on the GPU
    event = torch.repeat_interleave(offsets.diff(), output_size=len(pixel))
    if rows is not None:
        event = rows.index_select(0, event)  # index_select, take and put_: ~4x faster than [] on CPU
    index = event * image_size + pixel
    dense = torch.zeros(n_events * image_size, dtype=torch.float32, device=value.device)
    dense.index_add_(0, index, value.to(torch.float32))
    if norm in ("max", "log1p"):
        _normalize_hit_pixels_(dense, index, event, n_events, norm)
        return dense.view(n_events, *shape)
    return normalize_(dense.view(n_events, *shape), norm)


def _normalize_hit_pixels_(dense: torch.Tensor, index: torch.Tensor, event: torch.Tensor, n_events: int, norm: str):
    """`normalize_` for the norms an empty pixel cannot change (max |x| over an image's pixels is
    that over its hit ones; log1p(0) = 0 and 0 / scale = 0), applied to the hit pixels alone: the
    same bits at ~1/16 of the memory traffic for 47x47 images of ~130 points. A pixel hit twice
    is read before any is written and gets the same value from both writes."""
    hit = dense.take(index)
    if norm == "log1p":
        dense.put_(index, torch.copysign(torch.log1p(hit.abs()), hit))
        return
    scale = torch.zeros(n_events, dtype=dense.dtype, device=dense.device)
    scale.scatter_reduce_(0, event, hit.abs(), "amax")
    dense.put_(index, hit / torch.where(scale == 0, 1.0, scale).index_select(0, event))


def apply_norm(images: np.ndarray, norm: str) -> np.ndarray:
    """Normalize each event's image (first axis = events); a new array, all-zero images stay zero."""
    copy = np.array(images, dtype=np.result_type(images.dtype, np.float32), order="C")
    return normalize_in_place(copy, norm)


# ---------------------------------------------------------------- reading branches


def get_branch(arrays: dict[str, ArrayLike], name: str) -> ArrayLike:
    try:
        return arrays[name]
    except KeyError:
        raise KeyError(f"branch {name!r} is needed but was not read") from None


def check_finite(values: np.ndarray, name: str, counts: np.ndarray | None = None) -> None:
    """Raise naming the branch (and the first bad event) if any value is NaN or inf."""
    if values.dtype.kind != "f":
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    first = int(bad[0]) if counts is None else int(np.searchsorted(np.cumsum(counts), bad[0], side="right"))
    raise ValueError(f"branch {name!r}: {len(bad)} NaN/inf value(s), first in event {first} of this batch")


def jagged(arrays: dict[str, ArrayLike], name: str) -> tuple[np.ndarray, np.ndarray]:
    """A per-point branch as (flat values, points per event), checked finite."""
    values = get_branch(arrays, name)
    try:
        flat, counts = flatten(values if isinstance(values, ak.Array) else ak.Array(values))
    except (TypeError, ValueError) as error:
        raise ValueError(f"branch {name!r}: {error}") from None
    check_finite(flat, name, counts)
    return flat, counts


def flatten(values: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and points per event of a list-of-numbers array.

    Fast paths for what uproot returns (offsets into a flat buffer: a slice, no copy) and for
    that after an event mask (ordered starts/stops into the same buffer: a run-length mask).
    The generic ak.num / ak.flatten cost ~0.5 ms per branch per 1000 events, mostly overhead.
    """
    layout = ak.to_layout(values)
    content = getattr(layout, "content", None)
    if not layout.parameters and isinstance(content, ak.contents.NumpyArray) and content.data.ndim == 1:
        buffer = np.asarray(content.data)
        if isinstance(layout, ak.contents.ListOffsetArray):
            offsets = np.asarray(layout.offsets.data)
            return buffer[offsets[0] : offsets[-1]], np.diff(offsets).astype(np.int64, copy=False)
        if isinstance(layout, ak.contents.ListArray) and len(layout) > 0:
            starts = np.asarray(layout.starts.data).astype(np.int64, copy=False)
            stops = np.asarray(layout.stops.data).astype(np.int64, copy=False)
            counts = stops - starts
            skipped = starts.copy()  # buffer entries skipped before each event's points
            skipped[1:] -= stops[:-1]
            if (skipped >= 0).all() and (counts >= 0).all():
                runs = np.empty(2 * len(starts), dtype=np.int64)
                runs[0::2], runs[1::2] = skipped, counts
                keep = np.repeat(np.tile([False, True], len(starts)), runs)
                return buffer[: len(keep)][keep], counts
    if values.ndim != 2:
        raise ValueError(f"expected a list of numbers per event, got type {values.type}")
    counts = ak.to_numpy(ak.num(values, axis=1)).astype(np.int64, copy=False)
    return ak.to_numpy(ak.flatten(values, axis=1), allow_missing=False), counts


def point_set(arrays: dict[str, ArrayLike], names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Several per-point branches of the same points: flat values and their shared counts."""
    columns, counts = [], None
    for name in names:
        flat, these_counts = jagged(arrays, name)
        if counts is not None and not np.array_equal(counts, these_counts):
            raise ValueError(f"branches {names[0]!r} and {name!r} have different numbers of points per event")
        columns.append(flat)
        counts = these_counts
    return columns, counts


def per_event(arrays: dict[str, ArrayLike], name: str, n_events: int) -> np.ndarray:
    """A branch with one number per event as a 1-D numpy array, checked finite."""
    values = get_branch(arrays, name)
    try:
        values = np.asarray(ak.to_numpy(values) if isinstance(values, ak.Array) else values)
    except ValueError as error:
        raise ValueError(f"branch {name!r}: expected one number per event: {error}") from None
    if values.shape != (n_events,):
        raise ValueError(f"branch {name!r}: expected one number per event ({n_events}), got shape {values.shape}")
    check_finite(values, name)
    return values.astype(np.float64, copy=False)


# ---------------------------------------------------------------- shared kernel pieces


def pixel_coordinate(offset: np.ndarray, cell: float, shift: float) -> np.ndarray:
    """Continuous pixel coordinate offset / cell + shift (its floor is the pixel), in place on float64 offsets."""
    offset /= cell
    offset += shift
    return offset


def grid_index(coordinates: list[np.ndarray], sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Row-major cell index (int32: casts from float64 to int32 run ~5x faster than to int64) of
    continuous pixel coordinates, and which points fall inside the grid."""
    index = np.zeros(len(coordinates[0]), dtype=np.int32)
    inside = np.ones(len(coordinates[0]), dtype=bool)
    for coordinate, size in zip(coordinates, sizes):
        inside &= coordinate >= 0
        inside &= coordinate < size
        # Truncation equals floor wherever the point is inside; casts of far-away points may
        # overflow, but those points go to the dump bin.
        with np.errstate(invalid="ignore"):
            cell = coordinate.astype(np.int32)
        index *= size
        index += cell
    return index, inside


def event_offsets(counts: np.ndarray, image_size: int) -> np.ndarray:
    """Per point, the flat offset of its event's image in the batch buffer."""
    return np.repeat(np.arange(len(counts), dtype=np.int64) * image_size, counts)


class Scatter(NamedTuple):
    """What a point kernel computes: per point set, each point's flat index within its event's
    image, whether it is inside the image, its value, and the points per event. `accumulate`
    sums it into dense images, `make_sparse` keeps the points."""

    n_events: int
    shape: tuple[int, ...]
    pixels: list[np.ndarray]
    inside: list[np.ndarray]
    weights: list[np.ndarray]
    counts: list[np.ndarray]


def accumulate(
    n_events: int,
    shape: tuple[int, ...],
    pixels: list[np.ndarray],
    inside: list[np.ndarray],
    weights: list[np.ndarray],
    counts: list[np.ndarray],
) -> np.ndarray:
    """Sum weights into a zeroed (n_events, *shape) float32 buffer; points outside go to a dump bin.

    np.add.at into float32 measured ~2.5x faster than np.bincount (float64 output, then a cast).
    """
    dump = n_events * math.prod(shape)
    buffer = np.zeros(dump + 1, dtype=np.float32)
    for pixel, ok, values, set_counts in zip(pixels, inside, weights, counts):
        index = event_offsets(set_counts, math.prod(shape))
        index += pixel
        np.add.at(buffer, np.where(ok, index, dump), values.astype(np.float32, copy=False))
    return buffer[:dump].reshape(n_events, *shape)


def per_event_sum(event: np.ndarray, weights: np.ndarray, n_events: int) -> np.ndarray:
    return np.bincount(event, weights=weights, minlength=n_events)


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (events with no weight)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def wrap_phi(delta: np.ndarray) -> np.ndarray:
    """Wrap angle differences into [-pi, pi), in place (floor form: np.mod is several times slower)."""
    shifted = delta + math.pi
    shifted *= 1 / TWO_PI
    np.floor(shifted, out=shifted)
    shifted *= TWO_PI
    delta -= shifted
    return delta


# ---------------------------------------------------------------- norms


NORMS = ("none", "l1", "l2", "max", "log1p")


def normalize_in_place(images: np.ndarray, norm: str) -> np.ndarray:
    """`normalize_` on a C-contiguous numpy array's own memory (the read tasks' dense images)."""
    normalize_(torch.from_numpy(images), norm)
    return images


def normalize_(images: torch.Tensor, norm: str) -> torch.Tensor:
    """Normalize each event's image (first axis = events) in place, on the images' device; all-zero
    images stay zero. No step reads a value back to the host, so on a GPU nothing waits."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: expected none, l1, l2, max or log1p")
    if norm == "none":
        return images
    flat = images.view(len(images), math.prod(images.shape[1:]))
    if norm == "log1p":
        torch.copysign(torch.log1p(flat.abs()), flat, out=flat)
        return images
    if norm == "l1":
        scale = flat.abs().sum(dim=1)
    elif norm == "l2":
        scale = torch.linalg.vector_norm(flat, dim=1)
    else:
        scale = flat.abs().amax(dim=1)
    flat /= torch.where(scale == 0, 1.0, scale)[:, None]  # all-zero images stay zero
    return images
