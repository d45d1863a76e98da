"""XGrad-CAM: Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
BMVC 2020.

    weight_k = sum_ij (A_k(i, j) / (sum_ab A_k(a, b) + 1e-7)) d score_c / d A_k(i, j)
    map      = ReLU(sum_k weight_k A_k)

The 1e-7 (as in pytorch-grad-cam) keeps an all-zero channel's weight at 0.
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.base import CamTechnique

EPSILON = 1e-7


class XGradCAM(CamTechnique):
    name = "xgradcam"
    summary = "XGrad-CAM (Fu et al., 2020): gradients weighted by the channel's normalised activation"

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert gradient is not None
        rows = activation[image_rows]
        return (gradient * rows).sum(dim=(2, 3)) / (rows.sum(dim=(2, 3)) + EPSILON)
