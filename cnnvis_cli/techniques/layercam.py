"""LayerCAM: Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
IEEE Transactions on Image Processing 30, 2021.

    map = ReLU(sum_k ReLU(d score_c / d A_k) * A_k)   (element-wise positive gradients)
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.base import CamTechnique


class LayerCAM(CamTechnique):
    name = "layercam"
    summary = "LayerCAM (Jiang et al., 2021): positive gradients times activation, position by position"

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert gradient is not None
        return gradient.clamp(min=0)
