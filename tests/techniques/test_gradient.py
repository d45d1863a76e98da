from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from references import reference_gradcam

from cnnvis_cli.techniques.gradient import GradCAM


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("layer", ["features.3", "features.4", "features"])
def test_matches_the_definition_for_every_row_of_a_batch(tiny_net, layer: str) -> None:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 20, 20)
    image_rows, targets = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 4, 0, 2, 3])
    maps = GradCAM(tiny_net.requires_grad_(False), [layer]).explain(images, image_rows, targets).maps
    assert maps.shape == (5, 20, 20) and maps.dtype == torch.float32
    # features.4 (batch norm) is followed by an in-place ReLU, which would overwrite the reference's own
    # retained tensor; the reference runs on a copy with an out-of-place ReLU, the same function
    reference_net = copy.deepcopy(tiny_net)
    reference_net.features[5] = torch.nn.ReLU(inplace=False)
    for row in range(5):
        expected = reference_gradcam(reference_net, layer, images[image_rows[row]], int(targets[row]))
        assert float(expected.max()) == 1.0  # a map with content, not an all-zero one
        torch.testing.assert_close(maps[row], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "layer", "reference_layer"), [
    ("resnet18", "layer4", "layer4"),  # the residual `out += identity` and in-place ReLU live inside layer4
    ("vgg16", "features.28", "features.28"),  # a conv followed by an in-place ReLU
])
def test_torchvision_models_with_in_place_operations(name: str, layer: str, reference_layer: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval().requires_grad_(False)
    images = torch.randn(2, 3, 96, 96)
    maps = GradCAM(model, [layer]).explain(images, torch.tensor([0, 1, 1]), torch.tensor([5, 7, 9])).maps
    if name == "vgg16":
        # retain_grad on features.28 would see the in-place ReLU's gradient: build the reference on a copy
        # whose ReLU is not in place, which computes the same function
        model.features[29] = torch.nn.ReLU(inplace=False)
    for row, (image, target) in enumerate([(0, 5), (1, 7), (1, 9)]):
        expected = reference_gradcam(model, reference_layer, images[image], target)
        assert float(expected.max()) == 1.0  # a map with content, not an all-zero one
        assert pearson(maps[row], expected) > 0.999
        torch.testing.assert_close(maps[row], expected, atol=1e-4, rtol=1e-3)


def test_an_image_map_does_not_depend_on_its_batch(tiny_net) -> None:
    torch.manual_seed(2)
    images = torch.randn(4, 3, 16, 16)
    technique = GradCAM(tiny_net, ["features"])
    batched = technique.explain(images, torch.arange(4), torch.tensor([0, 1, 2, 3])).maps
    alone = technique.explain(images[2:3], torch.tensor([0]), torch.tensor([2])).maps
    torch.testing.assert_close(batched[2], alone[0])


def test_several_layers_are_averaged(tiny_net) -> None:
    torch.manual_seed(3)
    images = torch.randn(1, 3, 16, 16)
    rows, targets = torch.tensor([0]), torch.tensor([2])
    both = GradCAM(tiny_net, ["features.1", "features.5"]).explain(images, rows, targets).maps
    first = reference_gradcam(tiny_net, "features.1", images[0], 2)
    assert both.shape == (1, 16, 16) and float(both.min()) >= 0 and float(both.max()) == pytest.approx(1)
    assert not torch.allclose(both[0], first)
