"""Guided backpropagation and Guided Grad-CAM.

Guided backpropagation: Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR
Workshops 2015. Through every ReLU the backward pass keeps only positive gradients at positive inputs:

    d/dx ReLU(x) <- (x > 0) * ReLU(incoming gradient)

cnnvis applies this rule to every ReLU the forward pass calls, as a module (`nn.ReLU`) or as a function
(`F.relu`, `torch.relu`, `Tensor.relu`, in place or not, as in DenseNet's forward), by intercepting the calls
with a `TorchFunctionMode` instead of swapping modules. A model that calls no ReLU at all (GELU or SiLU
networks such as ConvNeXt and EfficientNet) is refused. Other activations keep their plain gradients.

Guided Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017:

    attribution = guided backpropagation (x) * Grad-CAM map, upsampled to the input (bilinear, in [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnvis_cli.errors import UserError
from cnnvis_cli.techniques.attribution import InputGradient, input_gradients
from cnnvis_cli.techniques.base import TechniqueContext, eval_mode
from cnnvis_cli.techniques.gradient import GradCAM

RELU_NAMES = frozenset({"relu", "relu_"})


class _GuidedGradient(torch.autograd.Function):
    """Identity forward; backward passes only positive gradients (the ReLU itself masks negative inputs)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, output: torch.Tensor) -> torch.Tensor:
        return output.clone()  # a new tensor, so later in-place operations do not touch the ReLU's output

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.clamp(min=0)


class GuidedReLUs(TorchFunctionMode):
    """While active, every ReLU call's output passes through `_GuidedGradient`; counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", None) in RELU_NAMES and isinstance(result, torch.Tensor) \
                and result.requires_grad:
            self.calls += 1
            return _GuidedGradient.apply(result)
        return result


class GuidedBackprop(InputGradient):
    name = "guided_backprop"
    summary = "Guided backpropagation (Springenberg et al., 2015): only positive gradients pass each ReLU"
    families = "models with ReLU activations (CNNs); refused on GELU transformers, which have none to guide"
    heat_from = "magnitude"

    def gradients(self, inputs: torch.Tensor, input_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mode = GuidedReLUs()
        with mode:
            gradients = input_gradients(self.model, inputs, input_rows, targets)
        if mode.calls == 0:
            raise UserError(f"{self.name} needs a model with ReLU activations, and this model calls none; "
                            "use another technique, e.g. technique=integrated_gradients")
        return gradients

    def check(self, example: torch.Tensor) -> None:
        row = torch.zeros(1, dtype=torch.long, device=example.device)
        with eval_mode(self.model):
            self.gradients(example, row, row)


class GuidedGradCAM(GuidedBackprop):
    name = "guided_gradcam"
    summary = "Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the Grad-CAM map"
    families = GuidedBackprop.families
    cost = "2 forwards + 1 backward to the input + 1 backward to the layer"
    uses_layers = True

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False) -> None:
        super().__init__(model, amp=amp)
        self.gradcam = GradCAM(model, layers, amp=amp)

    def passes_per_image(self, example: torch.Tensor) -> int:
        return 6

    @classmethod
    def from_context(cls, context: TechniqueContext) -> GuidedGradCAM:
        return cls(context.model, context.layers, amp=context.amp)

    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().attribute(images, image_rows, targets) * self.gradcam.cam(images, image_rows, targets)[:, None]
