"""Flip: where the image had to change for the model to change its mind.

A targeted projected gradient descent (PGD; Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018) in pixel space: for a row whose class is not the prediction, the image
moves towards that class (the cross-entropy of the class falls); for a row whose class is already predicted,
away from it. Each step moves by 2.5 budget / steps along the normalised gradient (L2) or its sign (L-inf),
is projected back into the budget ball and into [0, 1] (a value already outside it can only move back),
and a row stops at the first step where the model predicts its class (or, away, anything else): the change
is as small as this search finds, not the budget. The map is the change's size per pixel (its L2 norm over
the colour channels), unsigned (a change that brightens and one that darkens count alike), blurred by a
Gaussian of 1.5% of the image's side so that a change scattered over single pixels reads as its region. `flip_towards`
also says which rows reached their class within the budget.

The attack is a screen of code rather than torchattacks': a per-row stop at the first flip, which the
smallest change needs, and inputs in the model's normalised space are its own here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from cnnvis_cli.techniques.base import Explanation, Technique, TechniqueContext, normalise_maps

NORMS = ("l2", "linf")
DEFAULT_BUDGET = {"l2": 3.0, "linf": 8 / 255}  # L2: at 224 x 224 px, scaled with the side; L-inf: per value
REFERENCE_SIDE = 224
SMOOTHING = 0.015  # the map's Gaussian blur, as a share of the image's side (1.4 px at 96 px)


@dataclass(frozen=True)
class Flipped:
    """The change of each row (R x C x H x W, pixel units) and whether it made the model predict the row's
    class (away rows: any other class)."""

    change: torch.Tensor
    reached: torch.Tensor


def budget_for(norm: str, budget: float | None, height: int, width: int) -> float:
    """The budget in pixel units of this image size: L2 budgets are given at 224 x 224 and grow with the
    square root of the pixel count, as the norm of a change of fixed size per pixel does."""
    value = DEFAULT_BUDGET[norm] if budget is None else budget
    return value * (height * width) ** 0.5 / REFERENCE_SIDE if norm == "l2" else value


def flip_towards(model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, *, mean: torch.Tensor,
                 std: torch.Tensor, norm: str = "l2", budget: float = 1.0, steps: int = 50) -> Flipped:
    """PGD from `pixels` (R x C x H x W in [0, 1]) towards each row's target class, or away from it where the
    model already predicts it; rows stop as soon as they reach it."""
    step = 2.5 * budget / steps
    change = torch.zeros_like(pixels)
    # the valid range, [0, 1], widened to hold any value already outside it: a change never moves a value out
    lowest, highest = pixels.clamp(max=0.0), pixels.clamp(min=1.0)
    with torch.no_grad():
        towards = model((pixels - mean) / std).argmax(dim=1) != targets
    reached = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)
    for taken in range(steps + 1):
        active = torch.nonzero(~reached)[:, 0]
        if len(active) == 0:
            break
        moving = change[active].requires_grad_(True)
        with torch.enable_grad():
            logits = model((pixels[active] + moving - mean) / std).float()
            predicted = logits.argmax(dim=1)
            wins = torch.where(towards[active], predicted == targets[active], predicted != targets[active])
            reached[active] = wins
            if taken == steps:  # the last check: no step after it
                break
            loss = F.cross_entropy(logits, targets[active], reduction="none")
            loss = torch.where(towards[active], -loss, loss)
            (gradient,) = torch.autograd.grad(loss.sum(), [moving])
        gradient = gradient.float()
        if norm == "l2":
            direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        else:
            direction = gradient.sign()
        keep = ~wins[:, None, None, None]
        moved = moving.detach() + step * direction * keep
        moved = _project(moved, norm, budget)
        change[active] = torch.clamp(pixels[active] + moved, lowest[active], highest[active]) - pixels[active]
    return Flipped(change, reached)


def smoothed(maps: torch.Tensor) -> torch.Tensor:
    """R x H x W maps blurred by a Gaussian of SMOOTHING times the image's side, so that a change scattered
    over single pixels reads as the region it lies in."""
    sigma = max(SMOOTHING * max(maps.shape[-2:]), 0.5)
    side = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(maps[:, None], [side, side], [sigma, sigma])[:, 0]


def _project(change: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    if norm == "l2":
        size = change.flatten(1).norm(dim=1).clamp_min(1e-12)
        return change * (budget / size).clamp(max=1.0)[:, None, None, None]
    return change.clamp(-budget, budget)


class Flip(Technique):
    name = "flip"
    summary = "Flip (PGD, Madry et al., 2018): the smallest change found that makes the model predict the target"
    cost = "up to S forwards + S backwards to the input (S = technique.flip.steps)"
    cheaper = "fewer technique.flip.steps"

    def __init__(self, model: nn.Module, *, norm: str = "l2", budget: float | None = None, steps: int = 50,
                 mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
        super().__init__(model)
        self.norm, self.budget, self.steps, self.mean, self.std = norm, budget, steps, mean, std

    @classmethod
    def from_context(cls, context: TechniqueContext) -> Flip:
        options = context.options.flip
        return cls(context.model, norm=options.norm, budget=options.budget, steps=options.steps,
                   mean=context.mean, std=context.std)

    def passes_per_image(self, example: torch.Tensor) -> int:
        return 1 + 3 * self.steps

    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        size = self.change(images, image_rows, targets).norm(dim=1)
        return Explanation(normalise_maps(smoothed(size)))

    def change(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's change (R x C x H x W, pixel units), found with the model in eval mode."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        pixels = images[image_rows] * std + mean
        height, width = images.shape[-2:]
        flipped = flip_towards(self.model, pixels, targets, mean=mean, std=std, norm=self.norm,
                               budget=budget_for(self.norm, self.budget, height, width), steps=self.steps)
        return flipped.change
