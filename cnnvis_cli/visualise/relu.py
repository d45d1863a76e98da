"""Redirected ReLU gradients, so that a unit that is off everywhere at the random start can still be
optimised (Olah et al., "Feature Visualization", Distill 2017; lucid's `redirected_relu_grad`).

A ReLU passes no gradient where its input is negative. An image whose objective unit is off at every
position would therefore never move. During the first steps of an optimisation (`render.py`: a quarter of
them), each `nn.ReLU` of the model keeps its forward value, but for an image whose gradient through that ReLU
is zero everywhere, the gradient at negative inputs passes as well, except where it would push them further
down. Once the units are on, the usual gradient takes over (redirecting costs a quarter of a step's time on
the demo model). Functional `F.relu` calls are not redirected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inputs)
        return inputs.clamp(min=0)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        (inputs,) = ctx.saved_tensors
        negative = inputs < 0
        usual = torch.where(negative, 0.0, gradient)
        redirected = torch.where(negative & (gradient > 0), 0.0, gradient)  # never push a negative input lower
        blocked = usual.flatten(1).abs().amax(dim=1) == 0  # images that the usual gradient leaves still
        return torch.where(blocked.view(-1, *[1] * (gradient.ndim - 1)), redirected, usual)


@contextmanager
def redirected_relus(model: nn.Module) -> Iterator[None]:
    """Every `nn.ReLU` of `model` computed with redirected gradients, restored afterwards whatever happens."""
    handles = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                # first among the module's hooks, so that a hook that reads the layer sees the redirected output
                handles.append(module.register_forward_pre_hook(_keep_input, prepend=True))
                handles.append(module.register_forward_hook(_redirect, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _keep_input(module: nn.Module, inputs: tuple) -> None:
    module._cnnvis_input = inputs[0].clone()  # before an in-place ReLU overwrites it


def _redirect(module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> torch.Tensor:
    kept = module.__dict__.pop("_cnnvis_input")
    return _RedirectedReLU.apply(kept)
