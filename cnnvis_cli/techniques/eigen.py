"""Eigen-CAM: Muhammad and Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.

With the layer's activation as a matrix M (positions x channels), centred per channel,

    map = M v_1      (v_1 the first right singular vector of M: the first principal component)

It uses neither gradients nor the target, so every target of an image gets the same map. The sign of a
singular vector is arbitrary (it depends on the SVD routine); cnnvis fixes it so that the map correlates
positively with the sum of the layer's channels, which is where the layer is active.
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.cam import CamTechnique


class EigenCAM(CamTechnique):
    """The first principal component of the layer's activations."""

    name = "eigencam"
    summary = "Eigen-CAM (Muhammad and Yeasin, 2020): the activations' first principal component; class-agnostic"
    cost = "1 forward (no backward; the same map for every target)"
    needs_gradients = False
    amp_safe = True  # a principal component of activations

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                  image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        batch, _, height, width = activation.shape
        matrix = activation.flatten(2).transpose(1, 2)  # B x positions x channels
        centred = matrix - matrix.mean(dim=1, keepdim=True)
        first_component = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # B x channels
        projection = (centred @ first_component[:, :, None])[:, :, 0]  # B x positions
        activity = matrix.sum(dim=2)
        sign = torch.where((projection * (activity - activity.mean(dim=1, keepdim=True))).sum(dim=1) < 0, -1.0, 1.0)
        return (projection * sign[:, None]).view(batch, height, width)[image_rows]
