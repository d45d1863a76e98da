from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis_cli.techniques.occlusion import Occlusion, window_masks


def test_window_masks_slide_inside_the_image() -> None:
    masks = window_masks(6, 8, window=4, stride=2, device=torch.device("cpu"))
    assert masks.shape == (2 * 3, 6, 8)  # tops 0, 2; lefts 0, 2, 4
    assert (masks.sum(dim=(1, 2)) == 16).all()
    assert masks[0, :4, :4].all() and masks[5, 2:6, 4:8].all()
    big = window_masks(4, 4, window=10, stride=3, device=torch.device("cpu"))  # clipped to the image
    assert big.shape == (1, 4, 4) and big.all()


class LeftHalfNet(nn.Module):
    """A model that only ever looks at the left half of the image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 8 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, :, :, :4].flatten(1))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_hiding_what_the_model_ignores_gives_exactly_zero(batch_size: int) -> None:
    """Exact zeros are promised by the code (drops within float rounding count as 0), whatever the batch
    shapes and however the machine's kernels round."""
    images = torch.randn(2, 3, 8, 8)
    signed = Occlusion(LeftHalfNet().eval(), window=2, stride=2, batch_size=batch_size).explain(
        images, torch.tensor([0, 1]), torch.tensor([0, 2])).signed
    assert torch.equal(signed[:, :, 4:], torch.zeros(2, 8, 4))  # windows wholly in the ignored half
    assert (signed[:, :, :4] != 0).float().mean() > 0.9


class FaintRightHalfNet(LeftHalfNet):
    """Looks at the left half, and faintly (a thousandth as much) at the right half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1e-3 * super().forward(x.flip(-1))


def test_a_faint_but_real_effect_is_not_taken_for_rounding() -> None:
    torch.manual_seed(3)
    images = torch.rand(1, 3, 8, 8) + 0.5  # positive pixels: hiding them changes a linear score
    signed = Occlusion(FaintRightHalfNet().eval(), window=2, stride=2, fill="black").explain(
        images, torch.tensor([0]), torch.tensor([0])).signed
    faint, strong = signed[:, :, 4:].abs(), signed[:, :, :4].abs()
    assert (faint > 0).all() and faint.mean() < 0.01 * strong.mean()


def test_matches_the_definition_window_by_window(tiny_net) -> None:
    torch.manual_seed(1)
    images, rows, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 1]), torch.tensor([0, 3, 4])
    window, stride = 4, 2
    masks = window_masks(8, 8, window, stride, torch.device("cpu"))
    expected = torch.zeros(3, 8, 8)
    with torch.no_grad():
        for row in range(3):
            image, target = images[rows[row]], int(targets[row])
            original = tiny_net(image[None])[0, target]
            total, count = torch.zeros(8, 8), torch.zeros(8, 8)
            for mask in masks:
                drop = original - tiny_net((image * (1 - mask))[None])[0, target]  # the mean colour: 0 here
                total += drop * mask
                count += mask
            expected[row] = total / count
    for batch_size in (1, 5, 64):
        signed = Occlusion(tiny_net, window=window, stride=stride, batch_size=batch_size).explain(
            images, rows, targets).signed
        torch.testing.assert_close(signed, expected, atol=1e-5, rtol=1e-4)
