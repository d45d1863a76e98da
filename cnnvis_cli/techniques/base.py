"""The engine every class-activation-map technique shares.

A technique sees a batch of B normalised images and R rows, each row an (image, target class) pair, and
returns R maps: float32, R x H x W at the input size, in [0, 1], on the images' device. The engine owns
hooks (always removed, even after an exception), the model's mode (eval while explaining, restored after),
gradients, upsampling and normalisation; a technique only says how it weighs the layer's channels.

Conventions, shared by all techniques:
- activations are captured by a forward hook that hands the rest of the network a copy, so in-place
  operations downstream (in-place ReLU, ResNet's `out += identity`) never alter what was captured;
- gradients are taken with `torch.autograd.grad` with respect to those activations only: no parameter
  gradients, and each image's activations are computed once however many targets it has;
- maps are ReLU-ed, upsampled bilinearly (`align_corners=False`) to the input size and min-max
  normalised per map; with several layers, the normalised maps are averaged (so no layer dominates by its
  scale) and normalised again; a constant map becomes zeros.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.device import autocast

NORMALISATION = (
    "per map and layer: ReLU, bilinear upsampling (align_corners=False) to the input size, then "
    "(map - min) / (max - min); several layers: the mean of their normalised maps, normalised again; "
    "a constant map becomes zeros"
)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode, and give each back the mode it had, whatever happens."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class LayerCapture:
    """Forward hooks on named layers that keep each layer's output (its last call, if called twice).

    With `differentiable=True` the kept output is a tensor that requires grad, so gradients with respect
    to it can be taken even when the model's parameters are frozen.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str], differentiable: bool) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in layer_names if name not in modules]
        if missing:
            raise ValueError(f"no such layer in the model: {', '.join(missing)}")
        self.modules = {name: modules[name] for name in layer_names}
        self.differentiable = differentiable
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerCapture:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def keep(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ValueError(f"layer '{name}' must output an N x C x H x W tensor")
            if self.differentiable and not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.activations[name] = output
            return output.clone()  # the network goes on with a copy; the kept tensor stays as it was

        return keep


def check_rows(images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> None:
    """Every row names an existing image and has exactly one target (no silent zip truncation)."""
    if image_rows.shape != targets.shape or image_rows.ndim != 1:
        raise ValueError(f"image_rows {tuple(image_rows.shape)} and targets {tuple(targets.shape)} must be "
                         "1-D and of equal length")
    if len(image_rows) and (int(image_rows.min()) < 0 or int(image_rows.max()) >= len(images)):
        raise ValueError("image_rows refers to an image outside the batch")


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of an R x H x W tensor to [0, 1]; constant maps become zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return scaled.view_as(maps)


def slot_of_rows(image_rows: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows share its image (0 for an image's first target, 1 for its second...)."""
    order = torch.argsort(image_rows, stable=True)
    sorted_rows = image_rows[order]
    first = torch.searchsorted(sorted_rows, sorted_rows, right=False)
    slots = torch.empty_like(image_rows)
    slots[order] = torch.arange(len(image_rows), device=image_rows.device) - first
    return slots


class CamTechnique(ABC):
    """A class activation map: ReLU(sum over channels k of weight_k x activation_k) on chosen layers."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False) -> None:
        if not layers:
            raise ValueError("a CAM technique needs at least one layer")
        self.model = model
        self.layers = list(layers)
        self.amp = amp

    @classmethod
    def from_options(cls, model: nn.Module, layers: Sequence[str], options: TechniqueConfig,
                     amp: bool = False) -> CamTechnique:
        """An instance with the run's technique options (subclasses take the options they have)."""
        return cls(model, layers, amp=amp)

    def explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """R maps in [0, 1] at the images' size, one per (image_rows[r], targets[r]) pair."""
        check_rows(images, image_rows, targets)
        if len(targets) == 0:
            return images.new_zeros((0, *images.shape[-2:]))
        with eval_mode(self.model):
            with LayerCapture(self.model, self.layers, self.needs_gradients) as capture:
                with torch.set_grad_enabled(self.needs_gradients), autocast(images.device, self.amp):
                    logits = self.model(images)
                gradients = self._gradients(logits, capture.activations, image_rows, targets)
            maps = []
            for layer in self.layers:
                activation = capture.activations[layer].detach().float()
                gradient = gradients[layer] if gradients else None
                weights = self.channel_weights(activation, gradient, images, image_rows, targets, layer)
                if weights.ndim == 2:
                    weights = weights[:, :, None, None]
                cam = F.relu((weights * activation[image_rows]).sum(dim=1))
                maps.append(normalise_maps(F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear",
                                                         align_corners=False)[:, 0]))
        return maps[0] if len(maps) == 1 else normalise_maps(torch.stack(maps).mean(dim=0))

    @abstractmethod
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        """R x K weights (or R x K x h x w, per position) for `layer`'s B x K x h x w activation."""

    def _gradients(self, logits: torch.Tensor, activations: dict[str, torch.Tensor], image_rows: torch.Tensor,
                   targets: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Gradient of each row's target score with respect to each layer's activation: R x K x h x w.

        Images are independent in eval mode, so one backward pass serves the first target of every
        image, a second pass their second targets, and so on.
        """
        if not self.needs_gradients:
            return None
        tensors = [activations[layer] for layer in self.layers]
        result = {layer: tensor.new_zeros((len(targets), *tensor.shape[1:]), dtype=torch.float32)
                  for layer, tensor in zip(self.layers, tensors, strict=True)}
        slots = slot_of_rows(image_rows)
        last = int(slots.max())
        for slot in range(last + 1):
            rows = torch.nonzero(slots == slot)[:, 0]
            score = logits[image_rows[rows], targets[rows]].float().sum()
            grads = torch.autograd.grad(score, tensors, retain_graph=slot < last)
            for layer, grad in zip(self.layers, grads, strict=True):
                result[layer][rows] = grad[image_rows[rows]].float()
        return result
