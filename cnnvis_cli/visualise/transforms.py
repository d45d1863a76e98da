"""Transformation robustness (Olah et al., Distill 2017; Mordvintsev et al., "Inceptionism", 2015): at every
step each image is shifted, scaled and rotated at random before the model sees it, so that the optimisation
finds patterns the model responds to wherever they sit, not a high-frequency pattern tuned to one pixel grid.

Lucent's standard transforms (for 128 px renderings) pad 12 px of grey, jitter 8 px, scale by 0.9 to 1.1,
rotate by -10 to 10 degrees and jitter 4 px, with one draw for the whole batch. Here the same kinds are one
affine map per image (a fresh draw for every image and step), sampled bilinearly in a single `grid_sample`,
with grey (0.5) wherever the map looks outside the image. Shifts are given in pixels at 224 px and scaled
with the image's side: 12 px at 224 (5 px on the demo's 96 px images), as a feature of a model trained at
224 px moves by the same share of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224  # the image side at which `jitter` is given in pixels
GREY = 0.5


@dataclass(frozen=True)
class Transforms:
    """Ranges of the random transformations: shift in pixels at 224 px (scaled with the image), scale
    factors, rotation in degrees."""

    jitter: float = 12.0
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0

    def draw(self, count: int, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """`count` random affine maps (count x 2 x 3) in `affine_grid`'s coordinates, from output pixels to
        input pixels."""
        uniform = torch.rand((count, 4), generator=generator).to(device)
        shift = (2 * uniform[:, :2] - 1) * self.jitter * size / REFERENCE_SIZE * 2 / size  # in [-1, 1] units
        low, high = self.scale
        scale = low + (high - low) * uniform[:, 2]
        angle = torch.deg2rad((2 * uniform[:, 3] - 1) * self.rotate)
        return affine(shift, scale, angle)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each image transformed by its own random draw; the images' size is kept."""
        return warp(images, self.draw(len(images), images.shape[-1], generator, images.device))


NONE = Transforms(jitter=0.0, scale=(1.0, 1.0), rotate=0.0)


def affine(shift: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Affine maps (N x 2 x 3) that show each image enlarged by `scale`, rotated by `angle` (radians) and moved
    by `shift` (N x 2, in [-1, 1] units): an output point p looks at R(-angle) p / scale - shift."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    return torch.cat([rotation, -shift[:, :, None]], dim=-1)


def warp(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """`images` resampled through the affine `maps` (bilinear, align_corners=False), grey outside."""
    grid = F.affine_grid(maps.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images - GREY, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + GREY


