"""The class-activation-map engine: map = ReLU(sum over channels k of weight_k x A_k) on chosen layers.

The engine owns hooks, gradients, upsampling and normalisation; a CAM only says how it weighs the layer's
channels. Conventions, shared by all CAMs:
- activations are captured by a forward hook that hands the rest of the network a copy, so in-place
  operations downstream (in-place ReLU, ResNet's `out += identity`) never alter what was captured;
- gradients are taken with respect to those activations only (no parameter gradients), and each image's
  activations are computed once however many targets it has;
- maps are ReLU-ed, upsampled bilinearly (`align_corners=False`) to the input size and min-max
  normalised per map; with several layers, the normalised maps are averaged (so no layer dominates by its
  scale) and normalised again.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.layouts import NCHW, TOKENS, Layout, layout_of, model_prefix_tokens
from cnnvis_cli.techniques.base import Explanation, Technique, TechniqueContext, normalise_maps, row_gradients


class LayerCapture:
    """Forward hooks on named layers that keep each layer's output (its last call, if called twice) as an
    N x C x H x W map, whatever the layer's layout (layouts.py: NHWC maps, transformer tokens).

    With `differentiable=True` the kept output is a tensor that requires grad, so gradients with respect
    to it can be taken even when the model's parameters are frozen.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str], differentiable: bool) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in layer_names if name not in modules]
        if missing:
            raise ValueError(f"no such layer in the model: {', '.join(missing)}")
        self.modules = {name: modules[name] for name in layer_names}
        self.prefix = model_prefix_tokens(model)
        self.differentiable = differentiable
        self.activations: dict[str, torch.Tensor] = {}
        self.layouts: dict[str, Layout] = {}  # how each layer's own output holds the grid
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
            layout = layout_of(output, self.prefix)
            if layout is None:
                raise ValueError(f"layer '{name}' must output a spatial map (N x C x H x W, N x H x W x C) or "
                                 "tokens on a square grid (N x L x C)")
            self.layouts[name] = layout
            kept = layout.to_nchw(output)
            if layout.kind != NCHW:
                kept = kept.contiguous()  # a tensor of its own, as the copy below is for NCHW
            if self.differentiable and not kept.requires_grad:
                kept = kept.detach().requires_grad_(True)
            self.activations[name] = kept
            # the network goes on from a copy of the kept map (so in-place operations downstream never alter
            # it), laid out as the layer's output, with the prefix tokens as they were
            onward = layout.from_nchw(kept, output)
            return onward if layout.kind == TOKENS else onward.clone()  # (the tokens are joined anew already)

        return keep


class CamTechnique(Technique):
    """A class activation map on one or more layers."""

    cost = "1 forward + 1 backward to the layer"
    families = "CNNs, and transformers on a token layer (ViT, DeiT, EVA, BEiT, Swin: layouts.py)"
    uses_layers = True

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False) -> None:
        if not layers:
            raise ValueError("a CAM technique needs at least one layer")
        super().__init__(model, amp=amp)
        self.layers = list(layers)
        self.layouts: dict[str, Layout] = {}  # of the layers' outputs, as the last forward pass found them

    @classmethod
    def from_context(cls, context: TechniqueContext) -> CamTechnique:
        return cls(context.model, context.layers, amp=context.amp)

    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        return Explanation(self.cam(images, image_rows, targets))

    def cam(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """R maps in [0, 1] at the images' size (the model must already be in eval mode)."""
        with self.autocast(images):
            _, tensors, gradients = forward_and_gradients(self.model, self.layers, images, self.needs_gradients,
                                                          lambda _logits: (image_rows, targets), self.layouts)
        return self.finish(self.layer_maps(tensors, gradients, images, image_rows, targets), images.shape[-2:])

    def layer_maps(self, tensors: list[torch.Tensor], gradients: list[torch.Tensor | None], images: torch.Tensor,
                   image_rows: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's R x h x w map after ReLU, at the layer's size, from its captured B x K x h x w output
        (and the rows' gradients with respect to it)."""
        return [F.relu(self.layer_map(tensor.detach().float(), gradient, images, image_rows, targets, layer))
                for layer, tensor, gradient in zip(self.layers, tensors, gradients, strict=True)]

    @staticmethod
    def finish(layer_maps: list[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """R maps in [0, 1] at `size`: each layer's map upsampled and normalised, several layers averaged and
        normalised again."""
        maps = [normalise_maps(F.interpolate(cam[:, None].float(), size=tuple(size), mode="bilinear",
                                             align_corners=False)[:, 0]) for cam in layer_maps]
        return maps[0] if len(maps) == 1 else normalise_maps(torch.stack(maps).mean(dim=0))

    @abstractmethod
    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                  image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        """R x h x w map of one layer, before ReLU, from its B x K x h x w activation (and R x K x h x w
        gradient when the technique needs gradients)."""


def forward_and_gradients(model: nn.Module, layers: Sequence[str], images: torch.Tensor, with_gradients: bool,
                          choose_rows, layouts: dict[str, Layout] | None = None,
                          ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
    """One forward pass of `images` that keeps the layers' outputs: the logits, those outputs, and (with
    `with_gradients`) each row's gradient with respect to them, for the rows `choose_rows(logits)` returns as
    (image_rows, targets), which may depend on what the model predicted; the layers' layouts go into
    `layouts` when given."""
    with LayerCapture(model, layers, with_gradients) as capture:
        with torch.set_grad_enabled(with_gradients):
            logits = model(images)
        image_rows, targets = choose_rows(logits.detach())
        tensors = [capture.activations[layer] for layer in layers]
        gradients = row_gradients(logits, tensors, image_rows, targets) if with_gradients else [None] * len(tensors)
        if layouts is not None:
            layouts.update(capture.layouts)
    return logits, tensors, gradients


class ChannelWeightedCAM(CamTechnique):
    """A CAM that weighs the layer's channels: map = sum_k weight_k A_k."""

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                  image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        weights = self.channel_weights(activation, gradient, images, image_rows, targets, layer)
        if weights.ndim == 2:
            weights = weights[:, :, None, None]
        return (weights * activation[image_rows]).sum(dim=1)

    @abstractmethod
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        """R x K weights (or R x K x h x w, per position) for `layer`'s B x K x h x w activation."""
