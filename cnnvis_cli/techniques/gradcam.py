"""Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017.

    weight_k = mean over positions (i, j) of d score_c / d A_k(i, j)
    map      = ReLU(sum_k weight_k A_k)
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.base import CamTechnique


class GradCAM(CamTechnique):
    name = "gradcam"
    summary = "Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient"

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert gradient is not None
        return gradient.mean(dim=(2, 3))
