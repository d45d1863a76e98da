"""Feature inversion: the image whose representation at a layer matches a given image's.

Mahendran and Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015: minimise

    ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2  +  lambda_a R_a(x) / (H W B^a)  +  lambda_tv R_tv(x) / (H W V^b)

with R_a the alpha-norm (a = 6) of the centred image, which keeps its values in range, and R_tv the total
variation (b = 2), which keeps it smooth; B is the image's typical range and V = B / 6.5 its typical step
between neighbours, so that both terms are near 1 for a natural image. Inverting the same image at several
layers is one batch, one forward and backward pass per step: each row is compared at its own layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnvis_cli.layouts import Layout
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.techniques.base import eval_mode
from cnnvis_cli.visualise.objectives import Activations
from cnnvis_cli.visualise.render import Pixels

ALPHA = 6.0
BETA = 2.0
RANGE = 0.5  # B: a centred image in [0, 1] lies within +-0.5
STEP = RANGE / 6.5  # V


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 400
    lr: float = 0.05
    alpha_weight: float = 0.01  # lambda_a
    tv_weight: float = 0.01  # lambda_tv


@dataclass(frozen=True)
class Inversion:
    """Per layer: the inverted image (3 x H x W in [0, 1]), the relative representation distance at the start
    and the end, and the Pearson correlation of the inverted image with the original."""

    images: torch.Tensor
    start: torch.Tensor
    distance: torch.Tensor
    correlation: torch.Tensor


def alpha_norm(images: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """R_a per image: the sum of |x - 0.5| ** a over pixels and channels."""
    return (images - 0.5).abs().pow(alpha).sum(dim=(1, 2, 3))


def total_variation(images: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """R_tv per image: sum over pixels of ((dx)^2 + (dy)^2) ** (b / 2), with forward differences."""
    dx = images[:, :, :-1, 1:] - images[:, :, :-1, :-1]
    dy = images[:, :, 1:, :-1] - images[:, :, :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).pow(beta / 2).sum(dim=(1, 2, 3))


def invert(model: nn.Module, image: torch.Tensor, layers: Sequence[str], layouts: dict[str, Layout], *,
           pixels: Pixels, settings: InversionSettings = InversionSettings(), seed: int = 0,
           progress: bool = False) -> Inversion:
    """Invert `image` (3 x H x W in [0, 1]) at each of `layers` at once."""
    count, (_, height, width) = len(layers), image.shape
    activations = Activations(model, {layer: layouts[layer] for layer in layers})
    generator = torch.Generator().manual_seed(seed)
    start_image = 0.5 + 0.1 * torch.randn((count, 3, height, width), generator=generator).to(image)
    inverted = start_image.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([inverted], lr=settings.lr)
    pixel_count = height * width
    with eval_mode(model), activations.hooked(), progress_bar(progress) as bar:
        with torch.no_grad():
            model(pixels.normalise(image[None]))
            targets = [activations.outputs[layer][0].float().clone() for layer in layers]
            start = _distances(model, start_image, pixels, activations, layers, targets)
        task = bar.add_task("invert", total=settings.steps, unit="steps")
        for _ in range(settings.steps):
            distance = _distances(model, inverted, pixels, activations, layers, targets)
            loss = distance.sum() \
                + settings.alpha_weight * (alpha_norm(inverted) / (pixel_count * RANGE ** ALPHA)).sum() \
                + settings.tv_weight * (total_variation(inverted) / (pixel_count * STEP ** BETA)).sum()
            optimiser.zero_grad(set_to_none=True)
            (inverted.grad,) = torch.autograd.grad(loss, [inverted])
            optimiser.step()
            with torch.no_grad():
                inverted.clamp_(0, 1)
            bar.advance(task)
        with torch.no_grad():
            final = _distances(model, inverted, pixels, activations, layers, targets)
    result = inverted.detach()
    return Inversion(result.cpu(), start.cpu(), final.cpu(), _correlation(result, image).cpu())


def _distances(model: nn.Module, images: torch.Tensor, pixels: Pixels, activations: Activations,
               layers: Sequence[str], targets: list[torch.Tensor]) -> torch.Tensor:
    """||phi_l(x_l) - phi_l(x0)||^2 / ||phi_l(x0)||^2 for each row l (a vector)."""
    model(pixels.normalise(images))
    rows = [(activations.outputs[layer][row].float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
            for row, (layer, target) in enumerate(zip(layers, targets, strict=True))]
    return torch.stack(rows)


def _correlation(images: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each image with `original` over all pixels and channels."""
    flat = images.flatten(1) - images.flatten(1).mean(dim=1, keepdim=True)
    reference = original.flatten() - original.flatten().mean()
    return (flat @ reference) / (flat.norm(dim=1) * reference.norm()).clamp_min(1e-12)
