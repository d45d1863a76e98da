"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_image_folder
from torch import nn


@pytest.fixture(autouse=True)
def no_prediction_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in tests (and the CLI processes they start) do not share predictions unless a test asks."""
    monkeypatch.setenv("CNNVIS_CACHE", "")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """`images/cat` with 3 and `images/dog` with 2 random PNGs."""
    return write_image_folder(tmp_path / "images", {"cat": 3, "dog": 2})


class TinyNet(nn.Module):
    """Conv-BN-ReLU(in place) blocks and a linear head: the shape of VGG and ResNet in miniature."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.features[4].running_mean.uniform_(-0.5, 0.5)
        net.features[4].running_var.uniform_(0.5, 2.0)
    return net
