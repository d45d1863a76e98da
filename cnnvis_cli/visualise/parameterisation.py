"""The image being optimised, parameterised so that plain gradient steps make natural-looking images.

Olah et al., "Feature Visualization" (Distill 2017), section "Preconditioning and parameterization":
- the image is the inverse real FFT of a learned spectrum, each frequency scaled by 1 / max(f, 1/max(h, w))
  to the power `decay` (1: the 1/f falloff of natural images), so that every frequency learns at a similar
  rate instead of the highest ones winning;
- colours are decorrelated: the three learned channels are mapped to RGB by the square root of ImageNet's
  colour covariance (`COLOUR_CORRELATION_SQRT`), then squashed into [0, 1] by a sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn

# The square root of the covariance of ImageNet's RGB pixel values, U sqrt(S) from its SVD: a luminance
# column and two chroma columns, orthogonal to each other (Olah et al. 2017; lucid's and lucent's
# `color_correlation_svd_sqrt`). Columns are scaled by the largest column norm, so luminance keeps unit gain.
COLOUR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                        [0.27, 0.00, -0.05],
                                        [0.27, -0.09, 0.03]])
COLOUR_MATRIX = COLOUR_CORRELATION_SQRT / COLOUR_CORRELATION_SQRT.norm(dim=0).max()
# Standard deviation of the initial spectrum. Lucent's 0.01 starts from grey within +-0.3%, where a network
# whose units are all off for a flat input (the demo's, at its normalisation) has exactly zero gradient;
# 0.1 starts from a faint noise of +-3%.
SPECTRUM_SD = 0.1
IMAGE_GAIN = 4.0  # the spatial image is divided by this before the colour map and the sigmoid (as in lucid)


def spectrum_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """The factor of each frequency of an rfft2 spectrum (height x width // 2 + 1):
    1 / max(|f|, 1 / max(height, width)) ** decay, with |f| in cycles per pixel."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / frequency.clamp_min(1.0 / max(height, width)) ** decay


class ImageBatch(nn.Module):
    """N learnable RGB images in [0, 1] (N x 3 x H x W): a Fourier spectrum, or the pixels themselves, through
    the colour decorrelation (or not) and a sigmoid."""

    def __init__(self, count: int, height: int, width: int, *, fourier: bool = True, decorrelate: bool = True,
                 decay: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = (height, width)
        self.fourier = fourier
        self.decorrelate = decorrelate
        if fourier:
            shape = (count, 3, height, width // 2 + 1, 2)
            self.register_buffer("scale", spectrum_scale(height, width, decay)[..., None])
        else:
            shape = (count, 3, height, width)
        self.values = nn.Parameter(torch.randn(shape, generator=generator) * SPECTRUM_SD)

    def forward(self) -> torch.Tensor:
        if self.fourier:
            spectrum = torch.view_as_complex((self.values * self.scale).contiguous())
            image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        else:
            image = self.values
        image = image / IMAGE_GAIN
        if self.decorrelate:
            image = torch.einsum("ij,njhw->nihw", COLOUR_MATRIX.to(image), image)
        return torch.sigmoid(image)


def image_from_pixels(pixels: torch.Tensor, *, decorrelate: bool = True) -> ImageBatch:
    """An `ImageBatch` in pixel space that starts at `pixels` (N x 3 x H x W in (0, 1)): the inverse of its
    sigmoid and colour map. Deep dream starts from a photograph."""
    count, _, height, width = pixels.shape
    batch = ImageBatch(count, height, width, fourier=False, decorrelate=decorrelate).to(pixels.device)
    logits = torch.logit(pixels.clamp(1e-4, 1 - 1e-4))
    if decorrelate:
        logits = torch.einsum("ij,njhw->nihw", torch.linalg.inv(COLOUR_MATRIX).to(logits), logits)
    with torch.no_grad():
        batch.values.copy_(logits * IMAGE_GAIN)
    return batch
