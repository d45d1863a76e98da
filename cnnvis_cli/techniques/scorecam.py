"""Score-CAM: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR Workshops 2020.

    H_k      = min-max normalised A_k, upsampled to the input size
    weight_k = softmax(f(X * H_k))_c          (the target's probability when only H_k's region is shown)
    map      = ReLU(sum_k weight_k A_k)

As in the authors' code, a constant channel (no region to show) gets weight 0, and the weight is the
probability itself, without subtracting a baseline. `max_channels=K` scores only the K channels with the
largest mean activation (the "Faster Score-CAM" idea); the others get weight 0. Masked images are streamed
through the model `batch_size` at a time, so memory stays bounded whatever the channel count, and each
masked image serves every target of its image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.device import autocast
from cnnvis_cli.techniques.base import CamTechnique, normalise_maps


class ScoreCAM(CamTechnique):
    name = "scorecam"
    summary = "Score-CAM (Wang et al., 2020): channels weighted by the score of the image they mask"
    needs_gradients = False

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False, batch_size: int = 64,
                 max_channels: int | None = None) -> None:
        super().__init__(model, layers, amp=amp)
        self.batch_size = batch_size
        self.max_channels = max_channels

    @classmethod
    def from_options(cls, model: nn.Module, layers: Sequence[str], options: TechniqueConfig,
                     amp: bool = False) -> ScoreCAM:
        return cls(model, layers, amp=amp, batch_size=options.batch_size, max_channels=options.max_channels)

    @torch.no_grad()
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_images, num_channels = activation.shape[:2]
        scored = min(self.max_channels or num_channels, num_channels)
        channels = activation.mean(dim=(2, 3)).topk(scored, dim=1).indices  # B x scored
        classes, class_of_row = torch.unique(targets, return_inverse=True)
        scores = activation.new_zeros((num_images, scored, len(classes)))  # target probabilities
        pair_image = torch.arange(num_images, device=images.device).repeat_interleave(scored)
        pair_slot = torch.arange(scored, device=images.device).repeat(num_images)
        for start in range(0, len(pair_image), self.batch_size):
            image_index = pair_image[start:start + self.batch_size]
            slot = pair_slot[start:start + self.batch_size]
            channel_maps = activation[image_index, channels[image_index, slot]]
            masks = normalise_maps(F.interpolate(channel_maps[:, None], size=images.shape[-2:],
                                                 mode="bilinear", align_corners=False)[:, 0])
            with autocast(images.device, self.amp):
                logits = self.model(images[image_index] * masks[:, None])
            has_region = masks.flatten(1).amax(dim=1, keepdim=True) > 0  # constant channels score 0
            scores[image_index, slot] = logits.float().softmax(dim=1)[:, classes] * has_region
        row_scores = scores[image_rows, :, class_of_row]  # R x scored
        weights = activation.new_zeros((len(targets), num_channels))
        return weights.scatter_(1, channels[image_rows], row_scores)
