"""Deletion, insertion, average drop and increase in confidence, against their definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis_cli.metrics.faithfulness import area_under, faithfulness, pixel_order_masks

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class RegionModel(nn.Module):
    """Class 0's logit is 4 x the mean brightness of the top-left quarter; class 1's is 0: only that region
    carries evidence for class 0."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        side = images.shape[-1] // 2
        evidence = 4 * images[:, :, :side, :side].mean(dim=(1, 2, 3))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def region_map(size: int, inside: bool) -> torch.Tensor:
    quarter = torch.zeros(size, size)
    quarter[: size // 2, : size // 2] = 1
    return quarter if inside else 1 - quarter


def run(model, images, maps, steps=8, batch_size=5):
    rows = torch.arange(len(images))
    targets = torch.zeros(len(images), dtype=torch.long)
    black = torch.full_like(images, 0) - torch.tensor(MEAN).view(1, 3, 1, 1) / torch.tensor(STD).view(1, 3, 1, 1)
    blurred = images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    return faithfulness(model, images, rows, targets, maps, steps=steps, black=black, blurred=blurred, mean=MEAN,
                        std=STD, batch_size=batch_size)


def test_a_map_on_the_evidence_beats_a_map_beside_it() -> None:
    images = torch.full((2, 3, 16, 16), -2.0)
    images[:, :, :8, :8] = 2.0  # the evidence is bright, so class 0 wins; its blurred copy is a tie
    on = run(RegionModel(), images, torch.stack([region_map(16, True)] * 2))
    beside = run(RegionModel(), images, torch.stack([region_map(16, False)] * 2))
    assert (on.deletion_auc < beside.deletion_auc).all()
    assert (on.insertion_auc > beside.insertion_auc).all()
    assert (on.drop < beside.drop).all()
    # deleting the quarter first drops class 0 within the first quarter of the curve; beside it, not at all
    assert on.deletion_curve[0, 2] < on.deletion_curve[0, 0]
    torch.testing.assert_close(beside.deletion_curve[0, :6], beside.deletion_curve[0, :1].expand(6))


def test_curves_match_a_step_by_step_loop_whatever_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(3, 8, 8)
    rows, targets = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    black, blurred = torch.zeros_like(images), images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    steps = 4
    expected = torch.zeros(3, steps + 1)
    for r in range(3):
        order = torch.argsort(-maps[r].flatten(), stable=True)
        for step in range(steps + 1):
            removed = torch.zeros(64, dtype=torch.bool)
            removed[order[: round(64 * step / steps)]] = True
            image = torch.where(removed.view(1, 8, 8), black[rows[r]], images[rows[r]])
            with torch.no_grad():
                expected[r, step] = model(image[None]).softmax(dim=1)[0, targets[r]]
    for batch_size in (1, 4, 64):
        result = faithfulness(model, images, rows, targets, maps, steps=steps, black=black, blurred=blurred,
                              mean=(0, 0, 0), std=(1, 1, 1), batch_size=batch_size)
        torch.testing.assert_close(result.deletion_curve, expected)
        assert result.insertion_curve[:, -1] == pytest.approx(expected[:, 0].tolist(), abs=1e-6)  # all restored


def test_drop_and_increase() -> None:
    images = torch.full((1, 3, 16, 16), 2.0)
    whole = run(RegionModel(), images, torch.ones(1, 16, 16))
    assert float(whole.drop[0]) == pytest.approx(0, abs=1e-6) and not bool(whole.increase[0])
    nothing = run(RegionModel(), images, torch.zeros(1, 16, 16))  # every pixel black: no evidence left
    expected = (whole.probability - nothing.kept_probability) / whole.probability
    torch.testing.assert_close(nothing.drop, expected)
    assert float(nothing.drop[0]) > 0.3


def test_area_and_ranks() -> None:
    assert area_under(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0]])).tolist() == pytest.approx([1.0, 0.5])
    ranks, counts = pixel_order_masks(torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]), steps=2)
    assert ranks.tolist() == [[[3, 0], [1, 2]]]  # ties keep pixel order
    assert counts.tolist() == [0, 2, 4]


def test_only_the_curves_asked_for_are_computed() -> None:
    images = torch.full((1, 3, 16, 16), 2.0)
    calls = []
    model = RegionModel()
    model.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    rows, targets, maps = torch.tensor([0]), torch.tensor([0]), torch.rand(1, 16, 16)
    result = faithfulness(model, images, rows, targets, maps, steps=4, black=images * 0, blurred=images,
                          mean=MEAN, std=STD, batch_size=8, curves=("deletion",))
    assert result.insertion_curve is None and result.deletion_curve.shape == (1, 5)
    assert sum(calls) == 5 + 1 + 1  # the deletion curve, the kept region, the image
