"""The gradient CAMs against pytorch-grad-cam, the most used implementation, on random-initialised
torchvision models: Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM and LayerCAM.

Where the definitions agree the maps must correlate at 0.99 or more per image. Deliberate differences:
- pytorch-grad-cam min-max normalises at the layer's resolution and then resizes with OpenCV; cnnvis
  resizes with torch (bilinear, align_corners=False, the same sampling grid) and then normalises, so values
  differ by less than the interpolation error (measured: at most 5e-4 on these models).
- pytorch-grad-cam keeps a reference to the hooked layer's output, so an in-place operation after the layer
  changes what it explains: DenseNet's forward applies `F.relu(features, inplace=True)` to the output of
  `features`, and pytorch-grad-cam then weighs the ReLU-ed map, not the layer's output. cnnvis explains the
  layer's output as it was. The test shows this is the only difference: given a copy of the network in
  which that ReLU acts on a copy, pytorch-grad-cam agrees with cnnvis.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torchvision
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques import TECHNIQUES
from cnnvis_cli.techniques.gradient import GradCAM
from cnnvis_cli.techniques.perturbation import ScoreCAM

REFERENCES = {  # cnnvis name -> pytorch-grad-cam class
    "gradcam": pytorch_grad_cam.GradCAM,
    "gradcampp": pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "hirescam": pytorch_grad_cam.HiResCAM,
    "layercam": pytorch_grad_cam.LayerCAM,
}

# vgg16 (in-place ReLU, 138 M parameters) takes seconds a test: with the slow tests
MODELS = ["resnet18", pytest.param("vgg16", marks=pytest.mark.slow), "densenet121", "mobilenet_v3_large"]
# Grad-CAM++'s ratio g^2 / (2 g^2 + sum(A) g^3 + eps) is near-singular where hard-swish activations sum to
# almost zero (MobileNetV3): float32 rounding in either library moves values by up to 6e-3 there
# LayerCAM's element-wise maps peak sharply on MobileNetV3's 4 x 4 map at 128 px, where normalising
# before (pytorch-grad-cam) or after (cnnvis) the 32x resize differs by up to 2e-3
TOLERANCE = {"gradcampp": 1e-2, "layercam": 2.5e-3}


class Copy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def reference_network(model: torch.nn.Module, layer: str) -> tuple[torch.nn.Module, str]:
    """The network and layer to hand pytorch-grad-cam, so no in-place operation alters the hooked tensor."""
    if isinstance(model, torchvision.models.DenseNet) and layer == "features":
        shielded = copy.deepcopy(model)
        shielded.features.add_module("copy", Copy())  # the in-place ReLU now acts on this copy
        return shielded, "features.norm5"
    return model, layer


def per_image_pearson(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    return [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs, strict=True)]


@pytest.mark.parametrize("technique", sorted(REFERENCES))
@pytest.mark.parametrize("name", MODELS)
def test_agrees_with_pytorch_grad_cam(name: str, technique: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = 128
    layer = resolve_target_layer(model, None, inspect_layers(model, size)[0])
    images = torch.randn(3, 3, size, size)
    targets = [3, 250, 999]
    ours = TECHNIQUES[technique](model, [layer]).explain(images, torch.arange(3), torch.tensor(targets)).maps.numpy()
    reference_model, reference_layer = reference_network(model, layer)
    reference = REFERENCES[technique](model=reference_model,
                                      target_layers=[dict(reference_model.named_modules())[reference_layer]])
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ours.shape == theirs.shape == (3, size, size)
    content = [np.ptp(m) > 0 for m in theirs]
    assert sum(content) >= 2 and content == [np.ptp(m) > 0 for m in ours]  # the same maps are empty in both
    ours, theirs = ours[content], theirs[content]
    assert min(per_image_pearson(ours, theirs)) >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE.get(technique, 1e-3))


@pytest.mark.slow
def test_ablationcam_agrees_with_pytorch_grad_cam() -> None:
    # on a layer whose output is ReLU-ed (its minimum is 0), pytorch-grad-cam ablates a channel by zeroing
    # it, as the paper does (elsewhere it uses min - 1e7)
    torch.manual_seed(0)
    model, layer = torchvision.models.resnet18(weights=None).eval(), "layer4"  # 1024 forward passes each
    images = torch.randn(2, 3, 64, 64)
    targets = [3, 250]
    ours = TECHNIQUES["ablationcam"](model, [layer], batch_size=128).explain(
        images, torch.arange(2), torch.tensor(targets)).maps.numpy()
    reference = pytorch_grad_cam.AblationCAM(model=model, target_layers=[dict(model.named_modules())[layer]])
    reference.batch_size = 128
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert all(np.ptp(m) > 0 for m in theirs)
    assert min(per_image_pearson(ours, theirs)) >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_densenet_difference_is_the_in_place_relu() -> None:
    torch.manual_seed(2)
    model = torchvision.models.densenet121(weights=None).eval()
    images = torch.randn(3, 3, 128, 128)
    targets = [ClassifierOutputTarget(t) for t in (3, 250, 999)]
    ours = GradCAM(model, ["features"]).explain(images, torch.arange(3), torch.tensor([3, 250, 999])).maps.numpy()
    unshielded = ReferenceGradCAM(model=model, target_layers=[model.features])(input_tensor=images, targets=targets)
    assert np.ptp(ours[0]) > 0 and np.ptp(unshielded[0]) == 0  # the ReLU-ed map of image 0 is all zeros


@pytest.mark.parametrize("name", MODELS)
def test_eigencam_agrees_with_pytorch_grad_cam_up_to_the_sign_of_the_component(name: str) -> None:
    # the first principal component's sign is whatever the SVD routine returns; pytorch-grad-cam keeps it,
    # cnnvis turns it to correlate positively with the sum of the channels. Where the two signs differ,
    # pytorch-grad-cam's map of the flipped projection is cnnvis's map.
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = 128
    layer = resolve_target_layer(model, None, inspect_layers(model, size)[0])
    images = torch.randn(3, 3, size, size)
    rows = (images, torch.arange(3), torch.tensor([0, 0, 0]))
    ours = TECHNIQUES["eigencam"](model, [layer]).explain(*rows).maps.numpy()
    reference_model, reference_layer = reference_network(model, layer)
    module = dict(reference_model.named_modules())[reference_layer]
    theirs = pytorch_grad_cam.EigenCAM(model=reference_model, target_layers=[module])(input_tensor=images, targets=None)
    with torch.no_grad():
        captured = {}
        handle = module.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out.clone()))
        reference_model(images)
        handle.remove()
    projection = get_2d_projection(captured["a"].numpy())
    # pytorch-grad-cam's own two scalings: per layer at the input size, then after averaging the layers
    flipped = scale_cam_image(scale_cam_image(np.maximum(-projection, 0), (size, size)))
    for image in range(3):
        same_sign = np.corrcoef(ours[image].ravel(), theirs[image].ravel())[0, 1]
        other_sign = np.corrcoef(ours[image].ravel(), flipped[image].ravel())[0, 1]
        expected = theirs[image] if same_sign > other_sign else flipped[image]
        assert max(same_sign, other_sign) >= 0.99
        np.testing.assert_allclose(ours[image], expected, atol=1e-3)
        # cnnvis's sign: the projection correlates positively with the layer's summed activity
        activity = captured["a"][image].sum(dim=0).numpy()
        chosen = projection[image] if same_sign > other_sign else -projection[image]
        assert np.corrcoef(chosen.ravel(), activity.ravel())[0, 1] > 0


class GradCamStyleScoreCAM(ScoreCAM):
    """cnnvis's Score-CAM with pytorch-grad-cam's changes: masks upsampled with align_corners=True and
    normalised with +1e-8 (so constant channels mask the image to black and are scored), and channel weights
    softmax(logits over channels) instead of each masked image's probability of the target (built with
    subtract_baseline=False: no baseline's score is subtracted)."""

    def perturbed_scores(self, activation, images, image_index, channel_index, layer):
        channel_maps = torch.nn.functional.interpolate(activation[image_index, channel_index][:, None],
                                                       size=images.shape[-2:], mode="bilinear", align_corners=True)
        low = channel_maps.amin(dim=(2, 3), keepdim=True)
        masks = (channel_maps - low) / (channel_maps.amax(dim=(2, 3), keepdim=True) - low + 1e-8)
        return self.model(images[image_index] * masks)

    def weights_from_scores(self, scores, images, image_rows, targets):
        return scores.softmax(dim=1)


@pytest.mark.slow
def test_scorecam_differs_from_pytorch_grad_cam_only_by_its_four_changes() -> None:
    torch.manual_seed(0)
    model, layer = torchvision.models.resnet18(weights=None).eval(), "layer4"
    images = torch.randn(2, 3, 64, 64)
    targets = [3, 250]
    reference = pytorch_grad_cam.ScoreCAM(model=model, target_layers=[model.layer4])
    reference.batch_size = 128
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    rows = (images, torch.arange(2), torch.tensor(targets))
    with_their_changes = GradCamStyleScoreCAM(model, [layer], batch_size=128, subtract_baseline=False).explain(
        *rows).maps.numpy()
    assert all(np.ptp(m) > 0 for m in theirs)
    assert min(per_image_pearson(with_their_changes, theirs)) >= 0.99
    np.testing.assert_allclose(with_their_changes, theirs, atol=1e-3)
    ours = ScoreCAM(model, [layer], batch_size=128, subtract_baseline=False).explain(*rows).maps.numpy()
    assert not np.allclose(ours, theirs, atol=1e-2)  # the changes matter
