"""Contrastive targets against their definition: the explanation of the logit difference, predicted minus
true, computed through the model's output while the map is made (techniques/contrast.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import forward_keeping, run_config
from torch import nn

from cnnvis_cli.explain import explain_targets
from cnnvis_cli.memory import Halving
from cnnvis_cli.pipeline import run
from cnnvis_cli.targets import Target
from cnnvis_cli.techniques import TECHNIQUES
from cnnvis_cli.techniques.base import normalise_maps
from cnnvis_cli.techniques.contrast import scoring_pair


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval().requires_grad_(False)


def explain(technique, images: torch.Tensor, targets: list[tuple[int, Target]]):
    rows = torch.tensor([position for position, _ in targets])
    classes = torch.tensor([target.class_index for _, target in targets])
    return explain_targets(technique, images, targets, rows, classes, Halving(technique.name))


def test_gradient_x_input_of_a_contrast_is_the_difference_of_the_two_classes() -> None:
    model, images = small_cnn(), torch.randn(3, 3, 12, 12)
    technique = TECHNIQUES["gradient_x_input"](model)
    rows = [(0, Target(2, "contrast", 1)), (1, Target(3, "contrast", 0)), (2, Target(1, "pred")),
            (0, Target(2, "pred")), (0, Target(1, "true")), (1, Target(3, "pred")), (1, Target(0, "true"))]
    signed = explain(technique, images, rows).signed
    torch.testing.assert_close(signed[0], signed[3] - signed[4], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(signed[1], signed[5] - signed[6], rtol=1e-4, atol=1e-6)
    assert model(images).shape == (3, 4)  # the model scores its classes again


def test_grad_cam_of_a_contrast_is_the_contrastive_grad_cam_written_out() -> None:
    model, images = small_cnn(), torch.randn(2, 3, 12, 12)
    technique = TECHNIQUES["gradcam"](model, ["2"])
    ours = explain(technique, images, [(0, Target(3, "contrast", 0)), (1, Target(1, "contrast", 2))]).maps
    logits, activation = forward_keeping(model, model[2], images)
    difference = (logits[0, 3] - logits[0, 0]) + (logits[1, 1] - logits[1, 2])
    gradient = torch.autograd.grad(difference, activation)[0]
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True))
    expected = normalise_maps(F.interpolate(cam, size=(12, 12), mode="bilinear", align_corners=False)[:, 0])
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-4, atol=1e-5)


class Pair(nn.Module):
    """The model with the pair's scores as its output, written as a module."""

    def __init__(self, model: nn.Module, target: int, against: int) -> None:
        super().__init__()
        self.inner, self.target, self.against = model, target, against

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.inner(images)
        difference = logits[:, self.target] - logits[:, self.against]
        return torch.stack([difference, torch.zeros_like(difference)], dim=1)


@pytest.mark.parametrize("name", ["scorecam", "occlusion", "rise"])
def test_a_perturbation_technique_scores_the_pair_as_it_would_a_model_that_outputs_it(name: str) -> None:
    model, images = small_cnn(), torch.randn(2, 3, 12, 12)
    layers = ["2"] if TECHNIQUES[name].uses_layers else []
    own = {"rise": {"masks": 40, "grid": 3}, "occlusion": {"window": 4, "stride": 4}}
    options = {name: own[name]} if name in own else {}
    ours = explain(build(name, model, layers, options), images, [(0, Target(3, "contrast", 1)),
                                                                 (1, Target(3, "contrast", 1))])
    written = build(name, Pair(model, 3, 1), [f"inner.{layer}" for layer in layers], options)
    theirs = written.explain(images, torch.arange(2), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(ours.maps, theirs.maps, rtol=1e-4, atol=1e-5)


def build(name: str, model: nn.Module, layers: list[str], options: dict):
    from omegaconf import OmegaConf

    from cnnvis_cli.config import TechniqueConfig
    from cnnvis_cli.techniques import TechniqueContext, build_technique

    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TechniqueConfig), options))
    return build_technique(name, TechniqueContext(model, layers, config))


def test_the_pair_hook_is_removed_whatever_happens() -> None:
    model = small_cnn()
    with pytest.raises(RuntimeError), scoring_pair(model, 1, 0):
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2)
        raise RuntimeError("a technique failed")
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 4) and not model._forward_hooks


@pytest.mark.slow
def test_on_the_demo_the_contrast_of_a_wrong_prediction_points_at_the_mark(tmp_path: Path) -> None:
    result = run(run_config("targets=[pred,contrast]", "technique=gradcam", "metrics=[pointing,energy]",
                            "selection=incorrect", "render.panels=false", "report=false"), tmp_path)
    groups = result.summary["metrics"]["per_technique"]["gradcam"]
    contrast, predicted = groups["contrast: predicted vs true"], groups["predicted class, wrong"]
    # measured: nearer the mark 0.733, denser on it 0.967 (predicted class: 0.733, 0.933)
    assert contrast["maps"] == predicted["maps"] == 90
    assert contrast["nearer_cue"] >= 0.65 and contrast["denser_cue"] >= 0.9
    names = sorted(path.name for path in (tmp_path / "heatmaps" / "gradcam").glob("*_vs_*.png"))
    assert len(names) == 90
