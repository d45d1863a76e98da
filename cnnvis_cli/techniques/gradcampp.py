"""Grad-CAM++: Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
Convolutional Networks", WACV 2018 (eq. 19, with the score's exponential folded into the gradients).

    alpha_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3 + 1e-6),  g = d score_c / d A_k(i, j)  (0 where g = 0)
    weight_k      = sum_ij alpha_k(i, j) ReLU(g)
    map           = ReLU(sum_k weight_k A_k)

The 1e-6 (as in pytorch-grad-cam) keeps the ratio finite where the denominator nears zero, which happens
with activations that can be negative (hard-swish in MobileNetV3); it makes the two libraries agree.
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.base import CamTechnique

EPSILON = 1e-6


class GradCAMPlusPlus(CamTechnique):
    name = "gradcampp"
    summary = "Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted per position"

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert gradient is not None
        squared = gradient.pow(2)
        activation_sums = activation[image_rows].sum(dim=(2, 3), keepdim=True)
        denominator = 2 * squared + activation_sums * squared * gradient + EPSILON
        alpha = torch.where(gradient != 0, squared / denominator, 0.0)
        return (alpha * gradient.clamp(min=0)).sum(dim=(2, 3))
