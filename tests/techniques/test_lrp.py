from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnvis_cli.errors import UserError
from cnnvis_cli.techniques.attribution import GradientXInput
from cnnvis_cli.techniques.lrp import LRP


class BiasFreeNet(nn.Module):
    """Conv, ReLU, max and average pooling, a residual addition and a linear head, all without biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.pool(self.relu(self.conv1(x)))
        return self.head(self.relu(self.conv2(hidden)) + hidden)


def test_relevance_is_conserved_without_biases() -> None:
    torch.manual_seed(0)
    model, images = BiasFreeNet().eval(), torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 1, 3])
    signed = LRP(model, epsilon=1e-9).explain(images, torch.arange(3), targets).signed
    logits = model(images)[torch.arange(3), targets].detach()
    torch.testing.assert_close(signed.sum(dim=(1, 2)), logits, rtol=1e-4, atol=1e-6)


def test_epsilon_absorbs_relevance() -> None:
    torch.manual_seed(0)
    model, images = BiasFreeNet().eval(), torch.randn(2, 3, 8, 8)
    rows, targets = torch.arange(2), torch.tensor([0, 1])
    small = LRP(model, epsilon=1e-9).explain(images, rows, targets).signed.abs().sum()
    large = LRP(model, epsilon=1.0).explain(images, rows, targets).signed.abs().sum()
    assert large < small


def test_with_epsilon_near_zero_it_is_gradient_times_input(tiny_net) -> None:
    # LRP-0 equals gradient x input on ReLU networks (Ancona et al., ICLR 2018), biases and batch norm included
    torch.manual_seed(1)
    images, rows, targets = torch.randn(2, 3, 10, 10), torch.tensor([0, 1, 1]), torch.tensor([0, 2, 4])
    lrp = LRP(tiny_net, epsilon=1e-12).explain(images, rows, targets).signed
    gradient_x_input = GradientXInput(tiny_net).explain(images, rows, targets).signed
    torch.testing.assert_close(lrp, gradient_x_input, atol=1e-5, rtol=1e-3)


def test_models_with_other_layers_are_refused_by_name() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    technique = LRP(model)
    with pytest.raises(UserError, match=r"lrp handles models built from .*Hardswish \(features\.0\.2\)"):
        technique.check(torch.zeros(1, 3, 32, 32))
    with pytest.raises(UserError, match="Hardswish"):
        technique.explain(torch.zeros(1, 3, 32, 32), torch.tensor([0]), torch.tensor([0]))


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "densenet121", "alexnet"])
def test_the_usual_cnns_are_accepted(name: str) -> None:
    LRP(torchvision.models.get_model(name, weights=None)).check(torch.zeros(1, 3, 64, 64))
