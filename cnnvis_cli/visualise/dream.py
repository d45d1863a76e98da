"""Deep dream: a photograph changed to drive up what a layer (or some of its channels) already sees in it.

Mordvintsev, Olah and Tyka, "Inceptionism: Going Deeper into Neural Networks", 2015, and their notebook:
gradient ascent on the mean square of the layer's activation (or a channel's mean), with the step
normalised by its mean absolute gradient, a random jitter (roll) of the image at every step, and octaves: the
image is dreamt at `octaves` scales from the smallest up, each larger scale starting from the smaller one's
detail. Every image of the batch dreams together, one forward and backward pass per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.layouts import Layout
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.techniques.base import eval_mode
from cnnvis_cli.visualise.objectives import Activations
from cnnvis_cli.visualise.render import Pixels


@dataclass(frozen=True)
class DreamSettings:
    """The notebook's defaults: 4 octaves 1.4 apart, 10 steps each of 1.5 grey levels (of 255) along the
    normalised gradient, a jitter of up to 32 px at 224 px."""

    octaves: int = 4
    octave_scale: float = 1.4
    steps: int = 10  # per octave
    step_size: float = 1.5 / 255
    jitter: int = 32


def dream(model: nn.Module, images: torch.Tensor, layer: str, layout: Layout, channels: Sequence[int] | None, *,
          pixels: Pixels, settings: DreamSettings = DreamSettings(), seed: int = 0,
          progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`images` (N x 3 x H x W in [0, 1]) dreamt at `layer` (all its channels when `channels` is None); with the
    objective of each image before and after (N and N), on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    activations = Activations(model, {layer: layout})
    height, width = images.shape[-2:]
    sizes = [(max(8, round(height / settings.octave_scale ** level)), max(8, round(width / settings.octave_scale
                                                                                   ** level)))
             for level in reversed(range(settings.octaves))]
    with eval_mode(model), activations.hooked(), progress_bar(progress) as bar:
        before = _objective(model, images, pixels, activations, layer, channels).detach()
        task = bar.add_task("dream", total=settings.steps * len(sizes), unit="steps")
        detail = torch.zeros_like(F.interpolate(images, size=sizes[0], mode="bilinear", align_corners=False))
        for size in sizes:
            base = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            dreamt = (base + detail).clamp(0, 1)
            jitter = max(1, round(settings.jitter * size[0] / 224))
            for _ in range(settings.steps):
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
                shifted = torch.roll(dreamt, (dy, dx), dims=(2, 3)).requires_grad_(True)
                score = _objective(model, shifted, pixels, activations, layer, channels).sum()
                (gradient,) = torch.autograd.grad(score, [shifted])
                gradient = gradient / gradient.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                dreamt = torch.roll(shifted.detach() + settings.step_size * gradient, (-dy, -dx), dims=(2, 3))
                dreamt = dreamt.clamp(0, 1)
                bar.advance(task)
            detail = dreamt - base
        after = _objective(model, dreamt, pixels, activations, layer, channels).detach()
    return dreamt.detach().cpu(), before.cpu(), after.cpu()


def _objective(model: nn.Module, images: torch.Tensor, pixels: Pixels, activations: Activations, layer: str,
               channels: Sequence[int] | None) -> torch.Tensor:
    """Per image: the mean square of the layer's activation, or the mean of the chosen channels."""
    model(pixels.normalise(images))
    output = activations.outputs[layer].float()
    if channels is None:
        return output.pow(2).mean(dim=(1, 2, 3))
    return output[:, list(channels)].mean(dim=(1, 2, 3))
