from __future__ import annotations

import torch
from torch import nn

from cnnvis_cli.techniques.rise import RISE


def test_masks_are_smooth_fields_in_0_1_from_the_seed(tiny_net) -> None:
    technique = RISE(tiny_net, masks=200, grid=4, keep=0.3, seed=5)
    masks = technique.masks(0, 200, 20, 24, torch.device("cpu"))
    assert masks.shape == (200, 20, 24) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - 0.3) < 0.05  # cells kept with probability `keep`
    assert torch.equal(masks, RISE(tiny_net, masks=200, grid=4, keep=0.3, seed=5).masks(0, 200, 20, 24,
                                                                                          torch.device("cpu")))
    assert not torch.equal(masks, RISE(tiny_net, masks=200, grid=4, keep=0.3, seed=6).masks(0, 200, 20, 24,
                                                                                             torch.device("cpu")))
    assert torch.equal(technique.masks(50, 60, 20, 24, torch.device("cpu")), masks[50:60])


def test_matches_the_definition_mask_by_mask(tiny_net) -> None:
    torch.manual_seed(2)
    images, rows, targets = torch.randn(2, 3, 10, 10), torch.tensor([0, 1, 1]), torch.tensor([1, 0, 4])
    technique = RISE(tiny_net, masks=30, grid=3, keep=0.5, seed=1, batch_size=8)
    maps = technique.explain(images, rows, targets).maps
    masks = technique.masks(0, 30, 10, 10, torch.device("cpu"))
    for row in range(3):
        with torch.no_grad():
            scores = torch.stack([tiny_net((images[rows[row]] * mask)[None]).softmax(dim=1)[0, targets[row]]
                                  for mask in masks])
        saliency = ((scores - scores.mean())[:, None, None] * masks).sum(dim=0) / (30 * 0.5)
        expected = (saliency - saliency.min()) / (saliency.max() - saliency.min())
        torch.testing.assert_close(maps[row], expected, atol=1e-5, rtol=1e-4)


class CornerNet(nn.Module):
    """Class 0 wins when the top-left quarter is bright; the rest of the image does not matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([4 * corner, torch.zeros_like(corner)], dim=1)


def test_it_finds_the_region_the_model_uses() -> None:
    maps = RISE(CornerNet(), masks=500, grid=4, seed=0).explain(torch.ones(1, 3, 16, 16), torch.tensor([0]),
                                                                  torch.tensor([0])).maps[0]
    assert float(maps[:8, :8].mean()) > 0.5 > float(maps[8:, 8:].mean()) + 0.25
