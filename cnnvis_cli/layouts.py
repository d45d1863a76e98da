"""Where a layer's output keeps its spatial grid, and that output as the N x C x H x W map every CAM reads.

Three layouts occur in image classifiers:
- `nchw`: a CNN's feature map, N x C x H x W;
- `nhwc`: N x H x W x C, as Swin blocks (timm, torchvision) keep theirs;
- `tokens`: N x L x C, a vision transformer's token sequence: `prefix` tokens first (class, distillation and
  register tokens, which have no place in the image), then the H x W patch tokens row by row.

The prefix count is the model's own (`num_prefix_tokens`, timm) when the layer's tokens fit it, else what is
left over the largest square grid (torchvision's ViT: 197 tokens = 1 + 14 x 14); inputs are square crops,
so grids are square. Nothing here hard-codes a grid size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NCHW, NHWC, TOKENS = "nchw", "nhwc", "tokens"


@dataclass(frozen=True)
class Layout:
    """How one layer's output holds its H x W grid."""

    kind: str
    prefix: int = 0  # tokens: leading tokens outside the grid

    def to_nchw(self, output: torch.Tensor) -> torch.Tensor:
        """The output as N x C x H x W (a view where the layout allows one)."""
        if self.kind == NHWC:
            return output.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            grid = output[:, self.prefix:]
            side = math.isqrt(grid.shape[1])
            return grid.transpose(1, 2).reshape(grid.shape[0], grid.shape[2], side, side)
        return output

    def from_nchw(self, maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """A tensor laid out as `output`, with `maps` (N x C x H x W) as its grid and `output`'s prefix tokens."""
        if self.kind == NHWC:
            return maps.permute(0, 2, 3, 1)
        if self.kind == TOKENS:
            return torch.cat([output[:, :self.prefix].to(maps.dtype), maps.flatten(2).transpose(1, 2)], dim=1)
        return maps

    def describe(self, output_shape: tuple[int, ...]) -> str:
        """The layout in words, for `cnnvis list layers`: `tokens 197 x 192 (1 prefix)`."""
        if self.kind == TOKENS:
            return f"tokens {output_shape[0]} x {output_shape[1]} ({self.prefix} prefix)"
        return self.kind


def is_attention(module: nn.Module) -> bool:
    """An attention module of a transformer (timm's and torchvision's, by class name); its insides (queries,
    keys, attention weights) hold no grid of the image."""
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def model_prefix_tokens(model: nn.Module) -> int | None:
    """The model's own count of tokens before the patch tokens, when it states one (timm's ViTs)."""
    count = getattr(model, "num_prefix_tokens", None)
    return int(count) if isinstance(count, int) else None


def layout_of(output: object, prefix_tokens: int | None = None) -> Layout | None:
    """The layout of a layer's output, or None when it holds no grid larger than 1 x 1.

    4-D: N x C x H x W when H = W (inputs are square), else N x H x W x C when H = W there, else N x C x H x W
    (a map that is not square). 3-D: tokens, when all but a few leading tokens form a square grid.
    """
    if not isinstance(output, torch.Tensor) or output.is_complex():
        return None
    if output.ndim == 4:
        _, first, height, width = output.shape
        if height == width > 1:
            return Layout(NCHW)
        if first == height > 1:
            return Layout(NHWC)
        return Layout(NCHW) if height > 1 and width > 1 else None
    if output.ndim == 3:
        count = output.shape[1]
        if prefix_tokens is not None and count > prefix_tokens and _square(count - prefix_tokens) > 1:
            return Layout(TOKENS, prefix_tokens)
        side = math.isqrt(count)
        prefix = count - side * side
        if side > 1 and prefix <= side:  # a few class or register tokens, not a sequence of another kind
            return Layout(TOKENS, prefix)
    return None


def _square(count: int) -> int:
    """The side of a square grid of `count` cells, or 0 when `count` is not a square."""
    side = math.isqrt(count)
    return side if side * side == count else 0
