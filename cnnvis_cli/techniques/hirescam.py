"""HiRes-CAM: Draelos and Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv:2011.08891, 2020.

    map = ReLU(sum_k (d score_c / d A_k) * A_k)       (element-wise: no averaging of the gradients)
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.base import CamTechnique


class HiResCAM(CamTechnique):
    name = "hirescam"
    summary = "HiRes-CAM (Draelos and Carin, 2020): gradient times activation, position by position"

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert gradient is not None
        return gradient
