"""Signed attributions to the input pixels, and the plainest of them: gradients of the input.

A signed technique computes an R x C x H x W attribution (C = 3 colour channels, or 1 when it scores
pixels, not channels). The signed map is its sum over channels; the [0, 1] map is its positive part (for
attributions, whose values add up to the target's score: what speaks for the target) or its magnitude (for
gradients, whose sign says which way a pixel would move the score, not whether it supports it), min-max
normalised.

- Vanilla gradients (Simonyan et al., ICLR Workshops 2014): attribution = d S_c / d x
- Gradient x input (Shrikumar et al., arXiv:1605.01713, 2016): attribution = x * d S_c / d x

Gradients of the input are taken for every row in one forward pass per batch and one backward pass per
target slot (`row_gradients`), with respect to the input only.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

import torch
from torch import nn

from cnnvis_cli.techniques.base import Explanation, Technique, TechniqueContext, normalise_maps, row_gradients


class SignedTechnique(Technique):
    """A technique whose attributions carry a sign."""

    signed = True
    heat_from: ClassVar[str] = "positive"  # "positive" (attributions) or "magnitude" (gradients)

    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        attribution = self.attribute(images, image_rows, targets).float()
        signed = attribution.sum(dim=1)
        return Explanation(normalise_maps(self.heat(attribution, signed)), signed)

    @abstractmethod
    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """R x C x H x W signed attributions (the model is in eval mode)."""

    def heat(self, attribution: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
        """R x H x W non-negative map, before normalisation."""
        return signed.clamp(min=0) if self.heat_from == "positive" else signed.abs()


def input_gradients(model: nn.Module, inputs: torch.Tensor, input_rows: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """d score(inputs[input_rows[r]])_targets[r] / d input for each row r: R x C x H x W, float32."""
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
    return row_gradients(logits, [inputs], input_rows, targets)[0]


class InputGradient(SignedTechnique):
    """Attribution from the gradient of the target's score with respect to the input: the gradient itself,
    or times the input; subclasses may change how gradients flow backwards (`backward_rules`)."""

    times_input: ClassVar[bool] = False
    cost = "1 forward + 1 backward to the input"

    @classmethod
    def from_context(cls, context: TechniqueContext) -> InputGradient:
        return cls(context.model, amp=context.amp)

    def backward_rules(self) -> AbstractContextManager[object]:
        """A context in which the model's backward pass follows the technique's rules (plain gradients here)."""
        return nullcontext()

    def gradients(self, inputs: torch.Tensor, input_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self.backward_rules():
            return input_gradients(self.model, inputs, input_rows, targets)

    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        gradients = self.gradients(images, image_rows, targets)
        return gradients * images[image_rows] if self.times_input else gradients


class Saliency(InputGradient):
    """Vanilla gradients: Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshops 2014.

        attribution = d S_c / d x          map = max over colour channels of |d S_c / d x|
    """

    name = "saliency"
    summary = "Vanilla gradients (Simonyan et al., 2014): how much each pixel would change the score"
    heat_from = "magnitude"

    def heat(self, attribution: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
        return attribution.abs().amax(dim=1)


class GradientXInput(InputGradient):
    """Gradient x input: Shrikumar et al., "Not Just a Black Box: Learning Important Features Through
    Propagating Activation Differences", arXiv:1605.01713, 2016.

        attribution = x * d S_c / d x      (x the normalised input the model sees)
    """

    name = "gradient_x_input"
    summary = "Gradient x input (Shrikumar et al., 2016): each pixel's first-order contribution to the score"
    times_input = True
