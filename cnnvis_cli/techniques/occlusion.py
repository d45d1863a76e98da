"""Occlusion: Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.

A square window slides over the image (all colour channels at once), and each pixel's attribution is the
mean, over the windows that cover it, of how much covering them lowers the target's logit:

    attribution(p) = mean over windows w containing p of S_c(x) - S_c(x with w filled)

The fill is the mean colour by default (the paper's grey square), or black, the blurred image or noise
(`baselines.py`). A black window is something the model reacts to in itself: on the demo, the black-fill
maps of different images resemble one another, and those of a model trained on shuffled labels (README,
"Sanity check"). Windows start every `stride` pixels and stay inside the image (as in Captum; pixels past
the last window get 0). Every (image, window) pair is one forward pass, streamed through the model
`batch_size` at a time; each pass serves every target of its image.

A region the model ignores gets exactly 0. The unoccluded image is scored in the same stream of passes as
the windows (as a window that covers nothing), and a drop within float32 rounding of the scores being
compared (`ROUNDING` of the largest of them) counts as 0: the same input scored in batches of different
shapes can differ in its last bits, and a map should not show that as evidence.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnvis_cli.techniques.attribution import SignedTechnique
from cnnvis_cli.techniques.base import TechniqueContext, inputs_per_pass, score_pairs
from cnnvis_cli.techniques.baselines import baseline_images

ROUNDING = 1e-5  # drops below this share of the largest |score| compared are rounding, not evidence


def window_masks(height: int, width: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """P x H x W float masks, 1 inside each window position, row by row."""
    window_h, window_w = min(window, height), min(window, width)
    tops = torch.arange(0, height - window_h + 1, stride, device=device)
    lefts = torch.arange(0, width - window_w + 1, stride, device=device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside_rows = (rows[None] >= tops[:, None]) & (rows[None] < tops[:, None] + window_h)  # T x H
    inside_cols = (cols[None] >= lefts[:, None]) & (cols[None] < lefts[:, None] + window_w)  # L x W
    return (inside_rows[:, None, :, None] & inside_cols[None, :, None, :]).flatten(0, 1).float()


class Occlusion(SignedTechnique):
    needs_gradients = False
    name = "occlusion"
    summary = "Occlusion (Zeiler and Fergus, 2014): the score lost when a sliding window hides each region"
    cost = "1 + P forwards (P window positions)"
    cheaper = "a larger technique.occlusion.stride"

    def __init__(self, model: nn.Module, *, amp: bool = False, window: int = 32, stride: int = 16,
                 fill: str = "mean", mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                 std: tuple[float, ...] = (1.0, 1.0, 1.0), batch_size: int = 64) -> None:
        super().__init__(model, amp=amp)
        self.window, self.stride, self.fill, self.mean, self.std = window, stride, fill, mean, std
        self.batch_size = batch_size

    @classmethod
    def from_context(cls, context: TechniqueContext) -> Occlusion:
        options = context.options.occlusion
        return cls(context.model, amp=context.amp, window=options.window, stride=options.stride, fill=options.fill,
                   mean=context.mean, std=context.std, batch_size=inputs_per_pass(context))

    def passes_per_image(self, example: torch.Tensor) -> int:
        height, width = example.shape[-2:]
        rows, columns = ((side - min(self.window, side)) // self.stride + 1 for side in (height, width))
        return 1 + rows * columns  # the windows window_masks makes, and the unoccluded image

    @torch.no_grad()
    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_images, _, height, width = images.shape
        masks = window_masks(height, width, self.window, self.stride, images.device)  # P x H x W
        covers = torch.cat([masks.new_zeros((1, height, width)), masks])  # 0: the unoccluded image
        fills = baseline_images(self.fill, images, self.mean, self.std)
        classes, class_of_row = torch.unique(targets, return_inverse=True)

        def score(image_index: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
            covered = covers[window_index][:, None]
            with self.autocast(images):
                return self.model(torch.lerp(images[image_index], fills[image_index], covered))

        scores = score_pairs(num_images, len(covers), classes, self.batch_size, score)[image_rows, :, class_of_row]
        drops = scores[:, :1] - scores[:, 1:]  # R x P
        rounding = ROUNDING * scores.abs().amax(dim=1, keepdim=True)
        drops = torch.where(drops.abs() <= rounding, 0.0, drops)
        coverage = masks.sum(dim=0).clamp(min=1)
        return ((drops @ masks.flatten(1)).view(-1, height, width) / coverage)[:, None]
