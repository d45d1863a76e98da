"""Contrastive targets (`targets=[contrast]`): why the predicted class and not the true one. The score
explained is the difference of the two logits (Prabhushankar et al., "Contrastive Explanations in Neural
Networks", ICIP 2020; Finer-CAM, 2025, weighs the same difference between similar classes).

Any technique explains it unchanged: while its map is computed the model's output becomes the pair
(logit_pred - logit_true, 0), and the technique explains class 0 of that output. A gradient technique then
takes the gradient of the difference, which is the difference of the two gradients, so wherever a map is
linear in the score (gradient x input, integrated gradients, the CAMs' weighted sums before their ReLU) the
contrast map is the predicted class's map minus the true class's. The perturbation techniques score it as
they score a class: occlusion and Ablation-CAM read the difference itself; Score-CAM and RISE read it through
their softmax, which over the pair is p_pred / (p_pred + p_true), the predicted class's share of the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def scoring_pair(model: nn.Module, target: int, against: int) -> Iterator[None]:
    """While inside, `model` returns B x 2 scores: its logit of `target` minus that of `against`, and 0."""

    def pair(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        difference = output[:, target] - output[:, against]
        return torch.stack([difference, torch.zeros_like(difference)], dim=1)

    handle = model.register_forward_hook(pair)
    try:
        yield
    finally:
        handle.remove()
