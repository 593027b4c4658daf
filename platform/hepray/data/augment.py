"""Train-time augmentations of image batches on torch tensors (CPU or GPU), one whole batch at a time.

- `hflip`: mirror the last axis (phi for etaphi images) of each event with probability 1/2.
- `vflip`: mirror the second-to-last axis (eta) of each event with probability 1/2.
- `phi_roll`: roll the last axis by a random integer shift in [0, width) per event. This is a
  symmetry only for images that span the full 2*pi in phi; on a window around an object it
  wraps one edge onto the other.

Each event draws its own choice, and the choices are applied with masks or gathers, never a
loop over events. Only 2-D images (4-D tensors [B, C, H, W]) are augmented; every other
entry of the batch is passed through untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Augmentation = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def augment(
    batch: dict[str, torch.Tensor], image_names: list[str], ops: list[str], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A new batch dict with `ops` applied in order to each named 4-D image; inputs are not modified."""
    unknown = [op for op in ops if op not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}: expected some of {sorted(AUGMENTATIONS)}")
    out = dict(batch)
    for name in image_names:
        images = batch[name]
        if images.dim() != 4:
            continue
        for op in ops:
            images = AUGMENTATIONS[op](images, generator)
        out[name] = images
    return out


def _draw_device(images: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Random draws must be made on the generator's device; results then move to the images'."""
    return generator.device if generator is not None else images.device


def _flip_half(images: torch.Tensor, generator: torch.Generator | None, axis: int) -> torch.Tensor:
    draws = torch.rand(images.shape[0], generator=generator, device=_draw_device(images, generator))
    chosen = (draws < 0.5).to(images.device)
    return torch.where(chosen[:, None, None, None], images.flip(axis), images)


def hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip_half(images, generator, axis=-1)


def vflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip_half(images, generator, axis=-2)


def phi_roll(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """out[b, ..., j] = images[b, ..., (j - shift[b]) % width], as torch.roll does per event."""
    batch, channels, height, width = images.shape
    shift = torch.randint(width, (batch,), generator=generator, device=_draw_device(images, generator))
    shift = shift.to(images.device)
    source = (torch.arange(width, device=images.device)[None, :] - shift[:, None]) % width
    return images.gather(-1, source[:, None, None, :].expand(batch, channels, height, width))


AUGMENTATIONS: dict[str, Augmentation] = {"hflip": hflip, "vflip": vflip, "phi_roll": phi_roll}
