"""Reference images for techniques that compare an image with a version of it that lacks the evidence:
the baseline of integrated gradients and the fill of occlusion.

All are built in pixel space and returned normalised, as the model sees them (Sturmfels et al.,
"Visualizing the Impact of Feature Attribution Baselines", Distill 2020, compares these choices):
- black:   every pixel 0;
- mean:    the model's normalisation mean colour (0 after normalisation);
- blurred: the image under a Gaussian blur with sigma = 1/16 of its shorter side;
- noise:   uniform random pixels in [0, 1], from the run's seed.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.functional import gaussian_blur

from cnnvis_cli.config import BASELINES

BLUR_FRACTION = 1 / 16  # sigma of the blurred baseline, as a fraction of the image's shorter side


def baseline_images(kind: str, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """B x C x H x W baselines for B normalised images."""
    shift = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    scale = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    if kind == "black":
        return ((0 - shift) / scale).expand_as(images).clone()
    if kind == "mean":
        return torch.zeros_like(images)
    if kind == "blurred":
        return blur(images)
    if kind == "noise":
        pixels = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return (pixels - shift) / scale
    raise ValueError(f"unknown baseline '{kind}'; choose one of {', '.join(BASELINES)}")


def blur(images: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur with sigma = 1/16 of the shorter side (kernel 3 sigma each way, within the image)."""
    shorter = min(images.shape[-2:])
    sigma = max(shorter * BLUR_FRACTION, 0.5)
    radius = min(math.ceil(3 * sigma), shorter - 1)  # reflection padding needs radius < size
    if radius < 1:
        return images.clone()
    return gaussian_blur(images, kernel_size=[2 * radius + 1] * 2, sigma=[sigma] * 2)
