"""Layer-wise relevance propagation, epsilon rule: Bach et al., "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLOS ONE 2015; the rule as in Montavon et al.,
"Layer-Wise Relevance Propagation: An Overview", 2019.

The target's logit is the relevance at the output. Each linear layer z = W x + b (convolution, linear,
batch norm, average and max pooling) hands it back to its inputs by

    R_x = x * W^T (R_z / (z + epsilon * sign(z)))          (sign(0) = 1)

ReLUs pass relevance through unchanged, and additions and concatenations split it in proportion to their
inputs. cnnvis computes this as gradient x input with each linear layer's output gradient scaled by
z / (z + epsilon * sign(z)), so one backward pass gives every pixel's relevance. Without biases and with
epsilon -> 0 the relevances sum to the logit (conservation); biases and epsilon absorb the rest.

Only models built from those layers (and dropout, flatten, identity) are accepted: others (hard-swish,
GELU, SiLU, layer norm, attention) have no epsilon rule here, and the model is refused with their names.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from cnnvis_cli.errors import UserError
from cnnvis_cli.techniques.attribution import InputGradient
from cnnvis_cli.techniques.base import TechniqueContext, forward_hooks

LINEAR_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d,
                 nn.AdaptiveMaxPool2d)
PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity)


class _EpsilonScale(torch.autograd.Function):
    """Identity forward; backward scales the gradient by z / (z + epsilon * sign(z))."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, output: torch.Tensor, epsilon: float) -> torch.Tensor:
        ctx.save_for_backward(output)
        ctx.epsilon = epsilon
        return output.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        stabilised = output + ctx.epsilon * torch.where(output >= 0, 1.0, -1.0).to(output.dtype)
        return gradient * output / stabilised, None


class LRP(InputGradient):
    name = "lrp"
    summary = "Layer-wise relevance propagation, epsilon rule (Bach et al., 2015): the logit shared out layer by layer"
    times_input = True
    families = "CNNs of conv, linear, batch norm, pooling and ReLU layers; refused on transformers (no rules " \
               "for attention or LayerNorm here)"

    def __init__(self, model: nn.Module, *, amp: bool = False, epsilon: float = 0.25) -> None:
        super().__init__(model, amp=amp)
        self.epsilon = epsilon

    @classmethod
    def from_context(cls, context: TechniqueContext) -> LRP:
        return cls(context.model, amp=context.amp, epsilon=context.options.lrp.epsilon)

    def check(self, example: torch.Tensor) -> None:
        unsupported: dict[str, str] = {}
        for name, module in self.model.named_modules():
            if next(module.children(), None) is None and not isinstance(module, LINEAR_LAYERS + PASS_THROUGH):
                unsupported.setdefault(type(module).__name__, name)
        if unsupported:
            found = ", ".join(f"{kind} ({name})" for kind, name in unsupported.items())
            raise UserError(f"lrp handles models built from conv, linear, batch norm, pooling and ReLU layers; "
                            f"this model also has {found}; use another technique, e.g. technique=integrated_gradients")

    def backward_rules(self) -> AbstractContextManager[object]:
        layers = [module for module in self.model.modules() if isinstance(module, LINEAR_LAYERS)]
        return forward_hooks(layers, lambda _module, _inputs, output: _EpsilonScale.apply(output, self.epsilon))

    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.check(images)
        return super().attribute(images, image_rows, targets)
