"""The attribution techniques against Captum on random-initialised torchvision models: vanilla gradients,
gradient x input, integrated gradients, guided backpropagation, Guided Grad-CAM, occlusion and LRP.

The signed maps (attributions summed over colour channels) must correlate at 0.99 or more per image and
agree in value. Deliberate differences, each shown to be the only one:
- Captum's guided backpropagation (and so its Guided Grad-CAM) overrides `nn.ReLU` modules only, and
  misses DenseNet's functional `F.relu` after the last block; cnnvis guides every ReLU call. On a copy of
  DenseNet whose final ReLU is a module, Captum agrees with cnnvis.
- Captum's Guided Grad-CAM multiplies by the raw Grad-CAM map, upsampled with nearest neighbours by
  default; cnnvis multiplies by its [0, 1] Grad-CAM map, upsampled bilinearly. With Captum set to bilinear,
  the maps differ only by a positive factor per image.
- Captum's LRP hands relevance to both inputs of a residual addition in full, so relevance is counted
  twice and no longer sums to the logit; cnnvis splits it in proportion to the inputs, and conserves it.
  On VGG, which has no additions, the two agree.
"""

from __future__ import annotations

import copy

import captum.attr
import numpy as np
import pytest
import torch
import torchvision
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques.attribution import GradientXInput, Saliency
from cnnvis_cli.techniques.guided import GuidedBackprop, GuidedGradCAM
from cnnvis_cli.techniques.integrated import IntegratedGradients
from cnnvis_cli.techniques.lrp import LRP
from cnnvis_cli.techniques.occlusion import Occlusion

# vgg16 (in-place ReLU, 138 M parameters) takes seconds a test: with the slow tests
MODELS = ["resnet18", pytest.param("vgg16", marks=pytest.mark.slow), "densenet121", "mobilenet_v3_large"]
SIZE = 64
TARGETS = [3, 250]


def per_image_pearson(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    return [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs, strict=True)]


def model_and_images(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    return model, torch.randn(len(TARGETS), 3, SIZE, SIZE)


class DenseNetWithReLUModule(nn.Module):
    """DenseNet's forward with its functional final ReLU as an `nn.ReLU` module: the same function."""

    def __init__(self, densenet: torchvision.models.DenseNet) -> None:
        super().__init__()
        self.features, self.relu, self.classifier = densenet.features, nn.ReLU(), densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(self.features(x)), 1), 1))


def captum_model(model: nn.Module) -> nn.Module:
    return DenseNetWithReLUModule(model) if isinstance(model, torchvision.models.DenseNet) else model


def ours_signed(technique, images: torch.Tensor) -> np.ndarray:
    return technique.explain(images, torch.arange(len(TARGETS)), torch.tensor(TARGETS)).signed.numpy()


def assert_agree(ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-3) -> None:
    assert ours.shape == theirs.shape
    assert all(np.ptp(m) > 0 for m in theirs)  # maps with content
    assert min(per_image_pearson(ours, theirs)) >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=rtol * np.abs(theirs).max())


@pytest.mark.parametrize("name", MODELS)
def test_gradients_agree_with_captum(name: str) -> None:
    model, images = model_and_images(name)
    for ours, reference in ((Saliency(model), captum.attr.Saliency(model)),
                            (GradientXInput(model), captum.attr.InputXGradient(model))):
        kwargs = {"abs": False} if isinstance(reference, captum.attr.Saliency) else {}
        theirs = reference.attribute(images, target=TARGETS, **kwargs).sum(dim=1).detach().numpy()
        assert_agree(ours_signed(ours, images), theirs)


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_agree_with_captum(name: str) -> None:
    model, images = model_and_images(name)
    ours = ours_signed(IntegratedGradients(model, steps=16, baseline="black"), images)
    theirs = captum.attr.IntegratedGradients(model).attribute(
        images, baselines=torch.zeros_like(images), target=TARGETS, n_steps=16, method="gausslegendre")
    assert_agree(ours, theirs.sum(dim=1).detach().numpy())


@pytest.mark.parametrize("name", MODELS)
def test_guided_backprop_agrees_with_captum(name: str) -> None:
    model, images = model_and_images(name)
    ours = ours_signed(GuidedBackprop(model), images)
    theirs = captum.attr.GuidedBackprop(captum_model(model)).attribute(images, target=TARGETS)
    assert_agree(ours, theirs.sum(dim=1).detach().numpy())


def test_captum_guided_backprop_misses_densenets_functional_relu() -> None:
    model, images = model_and_images("densenet121")
    ours = ours_signed(GuidedBackprop(model), images)
    theirs = captum.attr.GuidedBackprop(model).attribute(images, target=TARGETS).sum(dim=1).detach().numpy()
    assert not np.allclose(ours, theirs, atol=1e-3 * np.abs(theirs).max())


@pytest.mark.parametrize("name", MODELS)
def test_guided_gradcam_agrees_with_captum_up_to_a_factor_per_image(name: str) -> None:
    model, images = model_and_images(name)
    layer = resolve_target_layer(model, None, inspect_layers(model, SIZE)[0])
    ours = ours_signed(GuidedGradCAM(model, [layer]), images)
    reference = captum_model(model)
    # the same layer in the copy (DenseNet: `features` is shared)
    theirs = captum.attr.GuidedGradCam(reference, dict(reference.named_modules())[layer]).attribute(
        images, target=TARGETS, interpolate_mode="bilinear").sum(dim=1).detach().numpy()
    # a random network's Grad-CAM can be all negative, so ReLU-ed to zero: then both maps are empty
    content = [np.ptp(m) > 0 for m in theirs]
    assert any(content) and content == [np.ptp(m) > 0 for m in ours]
    ours, theirs = ours[content], theirs[content]
    factors = np.abs(theirs).max(axis=(1, 2)) / np.abs(ours).max(axis=(1, 2))
    assert_agree(ours * factors[:, None, None], theirs)


@pytest.mark.parametrize("name", MODELS)
def test_occlusion_agrees_with_captum(name: str) -> None:
    model, images = model_and_images(name)
    ours = ours_signed(Occlusion(model, window=16, stride=8, fill="mean", batch_size=64), images)
    theirs = captum.attr.Occlusion(model).attribute(images, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                     baselines=0.0, target=TARGETS, perturbations_per_eval=32)
    # Captum gives each colour channel the pixel's value; cnnvis scores the pixel once
    assert_agree(ours, theirs.mean(dim=1).detach().numpy())


def captum_lrp(model: nn.Module, images: torch.Tensor, epsilon: float) -> np.ndarray:
    reference = copy.deepcopy(model)  # Captum leaves `rule` attributes on the modules it explains
    for module in reference.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            module.rule = EpsilonRule(epsilon=epsilon)
        if isinstance(module, nn.ReLU):
            module.inplace = False  # Captum's backward hooks cannot follow in-place ReLUs
    return captum.attr.LRP(reference).attribute(images, target=TARGETS).sum(dim=1).detach().numpy()


@pytest.mark.slow
def test_lrp_agrees_with_captum_on_vgg16() -> None:
    model, images = model_and_images("vgg16")
    for epsilon in (1e-9, 0.25):
        assert_agree(ours_signed(LRP(model, epsilon=epsilon), images), captum_lrp(model, images, epsilon))


class ResidualNet(nn.Module):
    """A bias-free ReLU network with one residual addition: its LRP-0 relevances must sum to the logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu(self.conv1(x))) + x)).flatten(1))


def test_captum_lrp_breaks_conservation_at_residual_additions() -> None:
    torch.manual_seed(0)
    model, images = ResidualNet().eval(), torch.randn(2, 3, 8, 8)
    logits = model(images)[torch.arange(2), torch.tensor([0, 1])].detach().numpy()
    ours = LRP(model, epsilon=1e-9).explain(images, torch.arange(2), torch.tensor([0, 1])).signed.numpy()
    reference = copy.deepcopy(model)
    for module in (reference.conv1, reference.conv2, reference.pool, reference.fc):
        module.rule = EpsilonRule(epsilon=1e-9)
    theirs = captum.attr.LRP(reference).attribute(images, target=[0, 1]).sum(dim=1).detach().numpy()
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), logits, rtol=1e-4)  # relevance conserved
    assert np.abs(theirs.sum(axis=(1, 2)) - logits).max() > 0.1 * np.abs(logits).max()
