"""What the model sees in a channel: the test-set patches that excite it most.

In the inference pass, each channel of the target layer keeps the TOP samples where its spatial maximum is
highest, with the grid cell of that maximum (dataset examples, as in Bau et al., "Network Dissection",
CVPR 2017, and Singla and Feizi, "Salient ImageNet", ICLR 2022): C x TOP numbers, whatever the size of
the test set, merged batch by batch and across processes. For the wrong predictions, the explanation stage
weighs each channel's part in the predicted class's Grad-CAM map, alpha_c x mean(A_c) with alpha_c the
mean gradient of the class score over the channel's grid (Selvaraju et al., ICCV 2017); the channels that
carry most of the maps of a frequent confusion are shown with their patches, each the layer cell's receptive
field around the maximum, cut from the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnvis_cli.layouts import layout_of, model_prefix_tokens

TOP = 8  # samples kept per channel
NAMES = ("values", "indices", "ys", "xs")


@dataclass
class Exemplars:
    """Per channel, the TOP samples where it fires most: the spatial maximum, the sample index (-1: none),
    and the grid cell (y, x) of the maximum; `grid` is the layer's (height, width)."""

    values: np.ndarray  # C x TOP float32, descending
    indices: np.ndarray  # C x TOP int64
    ys: np.ndarray  # C x TOP int64
    xs: np.ndarray  # C x TOP int64
    grid: tuple[int, int]

    @staticmethod
    def empty(channels: int, grid: tuple[int, int]) -> Exemplars:
        shape = (channels, TOP)
        return Exemplars(np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64), np.zeros(shape, np.int64),
                         np.zeros(shape, np.int64), grid)

    def merged(self, values: np.ndarray, indices: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Exemplars:
        """These exemplars with more candidates (C x M each), the TOP highest kept; ties keep the lower index."""
        every = [np.concatenate([mine, theirs], axis=1) for mine, theirs in
                 zip((self.values, self.indices, self.ys, self.xs), (values, indices, ys, xs), strict=True)]
        order = np.lexsort((every[1], -every[0]), axis=1)[:, :TOP]  # value descending, then index ascending
        return Exemplars(*(np.take_along_axis(array, order, axis=1) for array in every), self.grid)


def merge_exemplars(parts: Sequence[Exemplars | None]) -> Exemplars | None:
    """The exemplars of several shards of a test set as one."""
    found = [part for part in parts if part is not None]
    if not found:
        return None
    joined = found[0]
    for part in found[1:]:
        joined = joined.merged(part.values, part.indices, part.ys, part.xs)
    return joined


class ExemplarCollector:
    """While open, takes every forward pass's output of `layer` (any layout, laid on its grid); `update`
    folds the last pass into the running top samples of each channel."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.module, self.prefix = model.get_submodule(layer), model_prefix_tokens(model)
        self.last: torch.Tensor | None = None
        self.exemplars: Exemplars | None = None
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> ExemplarCollector:
        self.handle = self.module.register_forward_hook(self._keep)
        return self

    def __exit__(self, *_: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _keep(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        layout = layout_of(output, self.prefix)
        if layout is not None:
            self.last = layout.to_nchw(output.detach())

    def update(self, indices: Sequence[int]) -> None:
        if self.last is None:
            raise RuntimeError("the target layer did not run in the forward pass")
        activation, self.last = self.last.float(), None
        batch, channels, height, width = activation.shape
        peaks, where = activation.flatten(2).max(dim=2)  # B x C
        if self.exemplars is None:
            self.exemplars = Exemplars.empty(channels, (height, width))
        samples = np.broadcast_to(np.asarray(indices, dtype=np.int64)[:, None], (batch, channels))
        where = where.cpu().numpy()
        self.exemplars = self.exemplars.merged(peaks.cpu().numpy().T, samples.T.copy(), (where // width).T,
                                               (where % width).T)


def receptive_field(model: nn.Module, layer: str, input_size: int) -> tuple[int, int]:
    """(height, width) in input pixels of the region that one cell at the centre of the layer's grid sees:
    the bounding box of the input pixels its activations have a gradient for (all of the image, for a layer
    after attention)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = torch.randn(1, 3, input_size, input_size, device=device, generator=None).requires_grad_(True)
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, output: kept.append(output))
    prefix = model_prefix_tokens(model)
    try:
        with torch.enable_grad():
            model(images)
            layout = layout_of(kept[-1], prefix)
            grid = layout.to_nchw(kept[-1])
            centre = grid[0, :, grid.shape[2] // 2, grid.shape[3] // 2].sum()
            gradient, = torch.autograd.grad(centre, images)
    finally:
        handle.remove()
    reached = gradient.abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(reached.any(dim=1))[:, 0], torch.nonzero(reached.any(dim=0))[:, 0]
    if len(rows) == 0:
        return input_size, input_size
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def channel_shares(model: nn.Module, layer: str, images: torch.Tensor, image_rows: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """R x C: each channel's part in the row's Grad-CAM map before its ReLU, alpha_c x mean(A_c)."""
    from cnnvis_cli.techniques.base import row_gradients
    from cnnvis_cli.techniques.cam import LayerCapture

    with LayerCapture(model, [layer], differentiable=True) as capture, torch.enable_grad():
        logits = model(images)
        activation = capture.activations[layer]
    gradient = row_gradients(logits, [activation], image_rows, targets)[0]
    alpha = gradient.mean(dim=(2, 3))
    return (alpha * activation.detach().float()[image_rows].mean(dim=(2, 3))).cpu()
