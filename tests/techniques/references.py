"""Reference implementations written straight from the papers' definitions, one (image, target) at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def layer_output(model: nn.Module, layer: str, image: torch.Tensor,
                 keep_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the layer's output) for one image, by a plain forward hook."""
    stored: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        if keep_grad:
            out.retain_grad()
        stored["a"] = out

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    return logits, stored["a"]


def finish(cam: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """ReLU, bilinear upsampling and min-max normalisation, as the engine documents."""
    cam = F.interpolate(F.relu(cam)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else torch.zeros_like(cam)


def reference_gradcam(model: nn.Module, layer: str, image: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM for one (image, target), with a full backward pass and a layer whose grad is retained.

    The layer must not be followed by an in-place operation (retain_grad would then see the wrong tensor).
    """
    image = image.clone().requires_grad_(True)  # make the graph reach the layer although weights are frozen
    logits, activation = layer_output(model, layer, image, keep_grad=True)
    logits[0, target].backward()
    weights = activation.grad[0].mean(dim=(1, 2))
    return finish((weights[:, None, None] * activation[0].detach()).sum(0), image.shape[-2:])


def reference_scorecam(model: nn.Module, layer: str, image: torch.Tensor, target: int,
                       channels: list[int] | None = None, subtract_baseline: bool = True) -> torch.Tensor:
    """Score-CAM for one (image, target): one masked forward pass per channel, in a Python loop, each score
    less that of the image with nothing shown (all zeros) unless `subtract_baseline` is False."""
    with torch.no_grad():
        baseline = float(model(torch.zeros_like(image)[None]).softmax(dim=1)[0, target]) if subtract_baseline else 0.0
        _, activation = layer_output(model, layer, image, keep_grad=False)
        activation = activation[0].clone()
        cam = torch.zeros_like(activation[0])
        for k in channels if channels is not None else range(activation.shape[0]):
            up = F.interpolate(activation[k][None, None], size=image.shape[-2:], mode="bilinear",
                               align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            score = model((image * mask)[None]).softmax(dim=1)[0, target] - baseline
            cam += score * activation[k]
    return finish(cam, image.shape[-2:])


def reference_ablationcam(model: nn.Module, layer: str, image: torch.Tensor, target: int) -> torch.Tensor:
    """Ablation-CAM for one (image, target): one forward pass per channel with that channel set to zero."""
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        logits, activation = layer_output(model, layer, image, keep_grad=False)
        activation = activation[0].clone()
        original = float(logits[0, target])
        cam = torch.zeros_like(activation[0])
        for k in range(activation.shape[0]):
            def ablate(_m, _i, out, k=k):
                out = out.clone()
                out[:, k] = 0
                return out

            handle = module.register_forward_hook(ablate)
            ablated = float(model(image[None])[0, target])
            handle.remove()
            cam += (original - ablated) / original * activation[k]
    return finish(cam, image.shape[-2:])
