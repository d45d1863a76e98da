"""Flip: PGD towards the row's class, stopped at the first flip, inside its budget; against a textbook
PGD written out here on a linear model, and on the demo's wrong predictions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.demo.scene import render_scene
from cnnvis_cli.models import load_model
from cnnvis_cli.techniques import TECHNIQUES
from cnnvis_cli.techniques.flip import budget_for, flip_towards, smoothed

ZERO, ONE = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)


def _linear(classes: int = 3, side: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, classes)).eval().requires_grad_(False)


def textbook_l2_pgd(model: nn.Module, image: torch.Tensor, target: int, budget: float, steps: int) -> torch.Tensor:
    """One image, written out: step along the normalised gradient of -cross-entropy, project, clip, stop on
    the first step that reaches the target."""
    step = 2.5 * budget / steps
    change = torch.zeros_like(image)
    for _ in range(steps):
        if int(model(image + change).argmax()) == target:
            break
        change.requires_grad_(True)
        loss = -nn.functional.cross_entropy(model(image + change), torch.tensor([target]))
        (gradient,) = torch.autograd.grad(loss, [change])
        change = change.detach() + step * gradient / gradient.norm()
        change = change * min(1.0, budget / float(change.norm()))
        change = (image + change).clamp(0, 1) - image
    return change


def test_rows_match_a_textbook_pgd_and_stop_at_the_first_flip() -> None:
    model = _linear()
    images = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    predicted = model(images).argmax(dim=1)
    targets = (predicted + 1) % 3
    flipped = flip_towards(model, images, targets, mean=ZERO, std=ONE, norm="l2", budget=2.0, steps=40)
    for row in range(4):
        expected = textbook_l2_pgd(model, images[row:row + 1], int(targets[row]), 2.0, 40)
        assert torch.allclose(flipped.change[row:row + 1], expected, atol=1e-5)
    reached = model(images + flipped.change).argmax(dim=1) == targets
    assert torch.equal(flipped.reached, reached)
    assert bool(reached.all())
    assert bool((flipped.change.flatten(1).norm(dim=1) < 2.0).all())  # stopped before the budget ran out


def test_the_budget_holds_for_both_norms_and_a_row_already_predicted_moves_away() -> None:
    model = _linear()
    images = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    predicted = model(images).argmax(dim=1)
    for norm, budget in (("l2", 0.05), ("linf", 0.002)):
        flipped = flip_towards(model, images, (predicted + 1) % 3, mean=ZERO, std=ONE, norm=norm, budget=budget)
        size = flipped.change.flatten(1).norm(dim=1) if norm == "l2" else flipped.change.flatten(1).abs().amax(1)
        assert bool((size <= budget + 1e-6).all())
        assert not bool(flipped.reached.any())  # too small a budget to flip these
        assert float((images + flipped.change).min()) >= 0 and float((images + flipped.change).max()) <= 1
    away = flip_towards(model, images, predicted, mean=ZERO, std=ONE, norm="l2", budget=10.0)
    assert bool(away.reached.all())
    assert not bool((model(images + away.change).argmax(dim=1) == predicted).any())


def test_the_smoothing_is_a_gaussian_that_keeps_the_mass() -> None:
    spike = torch.zeros(1, 33, 33)
    spike[0, 16, 16] = 1.0
    blurred = smoothed(spike)[0]
    sigma = 0.015 * 33
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(blurred[16, 17] / blurred[16, 16]) == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=0.05)


def test_budgets_scale_with_the_image() -> None:
    assert budget_for("l2", None, 224, 224) == pytest.approx(3.0)
    assert budget_for("l2", None, 112, 112) == pytest.approx(1.5)
    assert budget_for("linf", None, 112, 112) == pytest.approx(8 / 255)
    assert budget_for("l2", 2.0, 448, 448) == pytest.approx(4.0)


def test_the_map_is_the_change_per_pixel() -> None:
    model = _linear()
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    targets = (model(images).argmax(dim=1) + 1) % 3
    technique = TECHNIQUES["flip"](model, steps=30, budget=20.0)
    explanation = technique.explain(images, torch.arange(2), targets)
    change = technique.change(images, torch.arange(2), targets)
    size = smoothed(change.norm(dim=1))
    expected = (size - size.flatten(1).min(1).values[:, None, None]) / \
        (size.flatten(1).max(1).values - size.flatten(1).min(1).values)[:, None, None]
    assert torch.allclose(explanation.maps, expected, atol=1e-5)
    assert explanation.signed is None  # brightening and darkening count alike


@pytest.mark.slow
def test_on_the_demo_wrong_predictions_flip_to_their_true_class_within_the_budget() -> None:
    model = load_model(ModelConfig(source="demo", name="demo"))
    scenes = [render_scene("test", index) for index in range(200)]
    images = torch.stack([torch.from_numpy(scene.image).permute(2, 0, 1) for scene in scenes]).float() / 255
    labels = torch.tensor([scene.label for scene in scenes])
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        wrong = torch.nonzero(model.module((images - mean) / std).argmax(dim=1) != labels)[:, 0]
    assert len(wrong) >= 10
    flipped = flip_towards(model.module, images[wrong], labels[wrong], mean=mean, std=std, norm="l2",
                           budget=budget_for("l2", None, 96, 96))
    assert float(flipped.reached.float().mean()) >= 0.8
