"""Does a heatmap show what drove the prediction? Scores of the target class as the map's pixels are taken
away or given back, batched over every (row, step) input.

- Deletion and insertion (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box
  Models", BMVC 2018): pixels are removed from the image (set to black) in the map's order, most important
  first, or inserted into a blurred copy of the image in the same order, in `steps` equal steps; the
  target's probability is read after each step, and the curve's area (trapezoid rule, x in [0, 1]) is
  the score. A faithful map gives a small deletion area (the probability falls at once) and a large
  insertion area.
- Average drop and increase in confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018): the image is
  multiplied by its [0, 1] map, so only the map's region is kept; drop = max(0, p - p_kept) / p, and
  the confidence increased when p_kept > p. Averaged over samples, a small drop and a frequent increase
  mean the region alone carries the evidence.
Ties in a map keep pixel order (row by row), so the curves are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnvis_cli.techniques.base import score_pairs


@dataclass(frozen=True)
class Faithfulness:
    """Per row: the deletion and insertion curves (R x steps + 1), their areas, the drop and the increase;
    a curve that was not asked for is None."""

    deletion_curve: torch.Tensor | None
    insertion_curve: torch.Tensor | None
    kept_probability: torch.Tensor  # R: the target's probability on image x map
    probability: torch.Tensor  # R: on the image itself

    @property
    def deletion_auc(self) -> torch.Tensor:
        return area_under(self.deletion_curve)

    @property
    def insertion_auc(self) -> torch.Tensor:
        return area_under(self.insertion_curve)

    @property
    def drop(self) -> torch.Tensor:
        return (self.probability - self.kept_probability).clamp(min=0) / self.probability.clamp(min=1e-12)

    @property
    def increase(self) -> torch.Tensor:
        return self.kept_probability > self.probability


def area_under(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoid area of R curves sampled at equal steps over [0, 1]."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def pixel_order_masks(maps: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's rank in its map, most important first (R x H x W), and how many pixels are taken at
    each of the steps + 1 points (0 ... H x W)."""
    flat = maps.flatten(1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand_as(order))
    counts = torch.round(torch.linspace(0, flat.shape[1], steps + 1, device=maps.device)).long()
    return ranks.view_as(maps), counts


def faithfulness(model: nn.Module, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor,
                 maps: torch.Tensor, *, steps: int, black: torch.Tensor, blurred: torch.Tensor,
                 mean: tuple[float, ...], std: tuple[float, ...], batch_size: int,
                 curves: tuple[str, ...] = ("deletion", "insertion")) -> Faithfulness:
    """The metrics of R maps (R x H x W in [0, 1]) of the rows (images[image_rows[r]], targets[r]), with
    only the `curves` asked for.

    `images`, `black` and `blurred` are normalised model inputs (B x 3 x H x W); the model is in eval mode.
    """
    ranks, counts = pixel_order_masks(maps, steps)
    classes, class_of_row = torch.unique(targets, return_inverse=True)
    rows = torch.arange(len(targets), device=images.device)
    pixel_mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    pixel_std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).float().softmax(dim=1)

    def curve(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """From `start` (B) towards `end` (B), taking `counts[step]` pixels in map order: R x steps + 1."""

        def score(row: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            taken = (ranks[row] < counts[step][:, None, None])[:, None]
            source = image_rows[row]
            return probabilities(torch.where(taken, end[source], start[source]))

        scores = score_pairs(len(targets), steps + 1, classes, batch_size, score)
        return scores[rows, :, class_of_row]

    with torch.no_grad():
        deletion = curve(images, black) if "deletion" in curves else None
        insertion = curve(blurred, images) if "insertion" in curves else None
        pixels = images[image_rows] * pixel_std + pixel_mean
        kept = probabilities((pixels * maps[:, None] - pixel_mean) / pixel_std)[rows, targets]
        probability = probabilities(images)[image_rows, targets]
    return Faithfulness(deletion, insertion, kept, probability)
