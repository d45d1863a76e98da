from __future__ import annotations

import torch

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.techniques import TechniqueContext, build_technique
from cnnvis_cli.techniques.attribution import GradientXInput, Saliency
from cnnvis_cli.techniques.gradient import GradCAM
from cnnvis_cli.techniques.smoothgrad import SmoothGrad


def test_without_noise_it_is_the_wrapped_technique(tiny_net) -> None:
    images, rows, targets = torch.randn(2, 3, 10, 10), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    smooth = SmoothGrad(GradientXInput(tiny_net), samples=3, noise=0.0).explain(images, rows, targets)
    plain = GradientXInput(tiny_net).explain(images, rows, targets)
    torch.testing.assert_close(smooth.signed, plain.signed)
    torch.testing.assert_close(smooth.maps, plain.maps)


def test_it_is_the_mean_over_noisy_copies(tiny_net) -> None:
    torch.manual_seed(4)
    images, rows, targets = torch.randn(2, 3, 10, 10), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    samples, noise = 5, 0.2
    smooth = SmoothGrad(Saliency(tiny_net), samples=samples, noise=noise, seed=7, batch_size=4)
    signed = smooth.explain(images, rows, targets).signed
    generator = torch.Generator().manual_seed(7)
    sigma = noise * (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, 1, 1, 1)
    total = torch.zeros(3, 3, 10, 10)
    for copies in (2, 2, 1):  # batch_size 4 over 2 images: two noisy copies per pass, drawn pass by pass
        draws = torch.randn((copies, *images.shape), generator=generator)
        for noise_draw in draws:
            total += Saliency(tiny_net).attribute(images + noise_draw * sigma, rows, targets)
    torch.testing.assert_close(signed, (total / samples).sum(dim=1), atol=1e-5, rtol=1e-4)


def test_the_option_smooths_every_gradient_technique_and_nothing_else(tiny_net) -> None:
    options = TechniqueConfig()
    options.smooth.samples = 4
    context = TechniqueContext(tiny_net, ["features"], options)
    smoothed = build_technique("integrated_gradients", context)
    assert isinstance(smoothed, SmoothGrad) and smoothed.name == "integrated_gradients_smooth"
    assert isinstance(build_technique("gradcam", context), GradCAM)
