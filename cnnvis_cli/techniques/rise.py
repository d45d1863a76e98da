"""RISE: Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.

N random masks: a grid x grid field of cells kept with probability `keep`, upsampled bilinearly to
(grid + 1) cells of the image size and cropped at a random offset within one cell, so the masks are
smooth and not aligned to the grid. The saliency of a pixel is the target's probability on the masked
image, averaged over the masks, weighted by how much each mask keeps the pixel:

    map = sum_i (softmax(f(x * M_i))_c - mean_j softmax(f(x * M_j))_c) M_i / (N keep)

cnnvis subtracts the mean score over the masks before weighting (a control variate): in expectation
this shifts the map by a constant, which min-max normalisation removes, and it removes the pattern of
the masks' random density, so a model that ignores its input gets a zero map rather than mask noise.
The masks come from the run's seed, the same for every image. Each (image, mask) pair is one forward
pass, streamed through the model `batch_size` at a time; each pass serves every target of its image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.techniques.base import (
    Explanation,
    Technique,
    TechniqueContext,
    inputs_per_pass,
    normalise_maps,
    report_passes,
)


class RISE(Technique):
    name = "rise"
    summary = "RISE (Petsiuk et al., 2018): probabilities of randomly masked images, averaged per pixel"
    cost = "N forwards (N masks)"
    cheaper = "fewer technique.rise.masks"
    needs_gradients = False
    amp_safe = True  # scores are probabilities

    def __init__(self, model: nn.Module, *, amp: bool = False, masks: int = 2000, grid: int = 7,
                 keep: float = 0.5, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__(model, amp=amp)
        self.num_masks, self.grid, self.keep, self.batch_size = masks, grid, keep, batch_size
        self.cells, self.offsets = self.mask_fields(seed)

    @classmethod
    def from_context(cls, context: TechniqueContext) -> RISE:
        options = context.options.rise
        return cls(context.model, amp=context.amp, masks=options.masks, grid=options.grid, keep=options.keep,
                   seed=context.seed, batch_size=inputs_per_pass(context))

    def mask_fields(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks' random cells (N x 1 x grid x grid) and crop offsets as fractions of a cell (N x 2),
        drawn on the CPU from the seed, so every device gets the same masks."""
        generator = torch.Generator().manual_seed(seed)
        cells = (torch.rand((self.num_masks, 1, self.grid, self.grid), generator=generator) < self.keep).float()
        return cells, torch.rand((self.num_masks, 2), generator=generator)

    def masks(self, start: int, stop: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Masks start..stop-1 at the image size: (stop - start) x H x W in [0, 1]."""
        cell_h, cell_w = math.ceil(height / self.grid), math.ceil(width / self.grid)
        size = ((self.grid + 1) * cell_h, (self.grid + 1) * cell_w)
        upsampled = F.interpolate(self.cells[start:stop].to(device), size=size, mode="bilinear",
                                  align_corners=False)[:, 0]
        tops = (self.offsets[start:stop, 0] * cell_h).long().to(device)
        lefts = (self.offsets[start:stop, 1] * cell_w).long().to(device)
        rows = tops[:, None] + torch.arange(height, device=device)[None]  # n x H
        cols = lefts[:, None] + torch.arange(width, device=device)[None]  # n x W
        index = torch.arange(len(rows), device=device)[:, None, None]
        return upsampled[index, rows[:, :, None], cols[:, None, :]].clamp_(0, 1)  # rounding can pass 1

    def passes_per_image(self, example: torch.Tensor) -> int:
        return self.num_masks

    @torch.no_grad()
    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        num_images, _, height, width = images.shape
        per_pass = max(1, self.batch_size // num_images)  # masks per forward pass (each over the whole batch)
        spans = [(start, min(start + per_pass, self.num_masks)) for start in range(0, self.num_masks, per_pass)]
        scores = []  # per span: masks x R target probabilities
        for start, stop in spans:
            masks = self.masks(start, stop, height, width, images.device)
            masked = (masks[:, None, None] * images[None]).flatten(0, 1)  # (mask, image) pairs
            with self.autocast(images):
                probabilities = self.model(masked).float().softmax(dim=1).view(len(masks), num_images, -1)
            scores.append(probabilities[:, image_rows, targets])
            report_passes(stop, self.num_masks)
        centred = torch.cat(scores) - torch.cat(scores).mean(dim=0)  # N x R
        saliency = images.new_zeros((len(targets), height * width), dtype=torch.float32)
        for start, stop in spans:  # the masks again (cheap to redraw), weighted by the centred scores
            saliency += centred[start:stop].T @ self.masks(start, stop, height, width, images.device).flatten(1)
        return Explanation(normalise_maps((saliency / (self.num_masks * self.keep)).view(-1, height, width)))
