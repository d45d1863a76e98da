from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.errors import UserError
from cnnvis_cli.techniques.gradient import GradCAM
from cnnvis_cli.techniques.guided import GuidedBackprop, GuidedGradCAM


class TwoLayerNet(nn.Module):
    """x -> W1 x -> ReLU -> W2 h, with the ReLU as a module, a function, a tensor method, or in place."""

    def __init__(self, relu: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(12, 16), nn.Linear(16, 3)
        self.relu_style, self.relu = relu, nn.ReLU(inplace=relu == "module_in_place")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x.flatten(1))
        if self.relu_style in ("module", "module_in_place"):
            hidden = self.relu(hidden)
        elif self.relu_style == "function":
            hidden = F.relu(hidden)
        elif self.relu_style == "function_in_place":
            hidden = F.relu(hidden, inplace=True)
        else:
            hidden = hidden.relu()
        return self.second(hidden)


def guided_by_hand(model: TwoLayerNet, image: torch.Tensor, target: int) -> torch.Tensor:
    """d/dx through the ReLU with only positive gradients at positive inputs, written out."""
    pre = model.first(image.flatten()[None])[0]
    incoming = model.second.weight[target]  # gradient of the score at the ReLU's output
    through_relu = (pre > 0).float() * incoming.clamp(min=0)
    return (model.first.weight.T @ through_relu).view_as(image)


@pytest.mark.parametrize("relu", ["module", "module_in_place", "function", "function_in_place", "method"])
def test_every_kind_of_relu_call_is_guided(relu: str) -> None:
    model = TwoLayerNet(relu).eval().requires_grad_(False)
    images = torch.randn(2, 3, 2, 2)
    signed = GuidedBackprop(model).explain(images, torch.tensor([0, 1]), torch.tensor([2, 0])).signed
    for row, (image, target) in enumerate(((0, 2), (1, 0))):
        expected = guided_by_hand(model, images[image], target).detach()
        plain = torch.autograd.functional.jacobian(model, images[image][None])[0, target, 0]
        assert not torch.allclose(expected, plain)  # the rule changes the gradient
        torch.testing.assert_close(signed[row], expected.sum(dim=0))


def test_a_model_without_relu_is_refused_with_the_fix() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    technique = GuidedBackprop(model)
    with pytest.raises(UserError, match="needs a model with ReLU activations.*technique=integrated_gradients"):
        technique.check(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UserError, match="ReLU"):
        technique.explain(torch.zeros(1, 3, 8, 8), torch.tensor([0]), torch.tensor([0]))


def test_guided_gradcam_is_guided_backprop_times_the_gradcam_map(tiny_net) -> None:
    torch.manual_seed(1)
    images, rows, targets = torch.randn(2, 3, 12, 12), torch.tensor([0, 1, 1]), torch.tensor([1, 2, 3])
    combined = GuidedGradCAM(tiny_net, ["features"]).explain(images, rows, targets).signed
    guided = GuidedBackprop(tiny_net).attribute(images, rows, targets)
    cam = GradCAM(tiny_net, ["features"]).explain(images, rows, targets).maps
    torch.testing.assert_close(combined, (guided * cam[:, None]).sum(dim=1))
