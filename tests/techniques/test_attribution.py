from __future__ import annotations

import torch
from torch import nn

from cnnvis_cli.techniques.attribution import GradientXInput, Saliency


def linear_model(classes: int = 3, size: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def test_saliency_is_each_rows_gradient_and_its_map_the_largest_channel_magnitude(tiny_net) -> None:
    torch.manual_seed(1)
    images = torch.randn(2, 3, 10, 10)
    rows, targets = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 4])
    explanation = Saliency(tiny_net).explain(images, rows, targets)
    for row in range(3):
        image = images[rows[row]][None].clone().requires_grad_(True)
        tiny_net(image)[0, targets[row]].backward()
        gradient = image.grad[0]
        torch.testing.assert_close(explanation.signed[row], gradient.sum(dim=0))
        magnitude = gradient.abs().amax(dim=0)
        expected = (magnitude - magnitude.min()) / (magnitude.max() - magnitude.min())
        torch.testing.assert_close(explanation.maps[row], expected)


def test_gradient_x_input_of_a_linear_model_is_weight_times_input() -> None:
    model = linear_model()
    images = torch.randn(2, 3, 6, 6)
    explanation = GradientXInput(model).explain(images, torch.tensor([0, 1]), torch.tensor([2, 1]))
    weights = model[1].weight.detach().view(3, 3, 6, 6)
    expected = torch.stack([(weights[2] * images[0]).sum(dim=0), (weights[1] * images[1]).sum(dim=0)])
    torch.testing.assert_close(explanation.signed, expected)
    positive = expected.clamp(min=0)  # the [0, 1] map shows what speaks for the target
    torch.testing.assert_close(explanation.maps, positive / positive.amax(dim=(1, 2), keepdim=True))
