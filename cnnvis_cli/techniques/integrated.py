"""Integrated gradients: Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.

    attribution = (x - x') * integral over a in [0, 1] of d S_c(x' + a (x - x')) / d x  da

with x' a baseline (`baselines.py`: black, mean, blurred or noise). The integral is taken with
Gauss-Legendre quadrature on `steps` nodes (as Captum does by default), so the attributions add up to
S_c(x) - S_c(x') to within the quadrature error (completeness). The (image, step) inputs of a batch go
through the model `batch_size` at a time; each forward pass serves every target of its image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnvis_cli.techniques.attribution import InputGradient
from cnnvis_cli.techniques.base import TechniqueContext, inputs_per_pass, report_passes, stacked_rows
from cnnvis_cli.techniques.baselines import baseline_images


def gauss_legendre(steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of Gauss-Legendre quadrature on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (torch.tensor((nodes + 1) / 2, dtype=torch.float32, device=device),
            torch.tensor(weights / 2, dtype=torch.float32, device=device))


class IntegratedGradients(InputGradient):
    name = "integrated_gradients"
    summary = "Integrated gradients (Sundararajan et al., 2017): gradients summed along a path from a baseline"
    cost = "steps x (1 forward + 1 backward to the input)"
    cheaper = "fewer technique.integrated_gradients.steps"
    times_input = True

    def __init__(self, model: nn.Module, *, amp: bool = False, steps: int = 50, baseline: str = "black",
                 mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0),
                 seed: int = 0, batch_size: int = 64) -> None:
        super().__init__(model, amp=amp)
        self.steps, self.baseline, self.mean, self.std = steps, baseline, mean, std
        self.seed, self.batch_size = seed, batch_size

    @classmethod
    def from_context(cls, context: TechniqueContext) -> IntegratedGradients:
        options = context.options
        return cls(context.model, amp=context.amp, steps=options.integrated_gradients.steps,
                   baseline=options.integrated_gradients.baseline, mean=context.mean, std=context.std,
                   seed=context.seed, batch_size=inputs_per_pass(context))

    def baselines(self, images: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        return baseline_images(self.baseline, images, self.mean, self.std, generator)

    def passes_per_image(self, example: torch.Tensor) -> int:
        return 3 * self.steps

    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        baselines = self.baselines(images)
        difference = images - baselines
        nodes, weights = gauss_legendre(self.steps, images.device)
        num_images = len(images)
        per_pass = max(1, self.batch_size // num_images)  # steps per forward pass
        total = images.new_zeros((len(targets), *images.shape[1:]), dtype=torch.float32)
        for start in range(0, self.steps, per_pass):
            alphas = nodes[start:start + per_pass]
            inputs = (baselines[None] + alphas.view(-1, 1, 1, 1, 1) * difference[None]).flatten(0, 1)
            gradients = self.gradients(inputs, stacked_rows(image_rows, len(alphas), num_images),
                                       targets.repeat(len(alphas)))
            total += (weights[start:start + per_pass].view(-1, 1, 1, 1, 1)
                      * gradients.view(len(alphas), len(targets), *images.shape[1:])).sum(dim=0)
            report_passes(start + len(alphas), self.steps)
        return difference[image_rows] * total
