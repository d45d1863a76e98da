"""The small CNN used by the embedded demo and the loader for its packaged weights."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import nn

from cnnvis_cli.demo.scene import CLASS_NAMES

#: Per-channel statistics used after scaling pixels to ``[0, 1]``.
MEAN: tuple[float, float, float] = (0.49, 0.49, 0.49)
STD: tuple[float, float, float] = (0.2, 0.2, 0.2)

#: Name of the packaged state dict inside ``cnnvis_cli/demo``.
WEIGHTS_FILE: str = "demo_net.pt"


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DemoNet(nn.Module):
    """Conv/BN/ReLU feature extractor, global average pooling and a linear classifier.

    At 96 x 96 input the last block of ``features`` yields a 12 x 12 map.
    """

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(3, 16, stride=2),
            *_conv_block(16, 32),
            nn.MaxPool2d(2),
            *_conv_block(32, 48),
            nn.MaxPool2d(2),
            *_conv_block(48, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map a normalised ``N x 3 x H x W`` batch to ``N x num_classes`` logits."""
        pooled = self.pool(self.features(images))
        return self.classifier(torch.flatten(pooled, 1))


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn ``H x W x 3`` or ``N x H x W x 3`` uint8 RGB images into a normalised float batch."""
    batch = torch.as_tensor(images)
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def load_demo_model() -> DemoNet:
    """Build :class:`DemoNet`, load the packaged weights on the CPU and switch to eval mode."""
    model = DemoNet()
    weights = resources.files("cnnvis_cli.demo").joinpath(WEIGHTS_FILE)
    with resources.as_file(weights) as path:
        state = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model
