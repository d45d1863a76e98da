from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis_cli.config import BASELINES
from cnnvis_cli.techniques.baselines import baseline_images
from cnnvis_cli.techniques.integrated import IntegratedGradients, gauss_legendre

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("baseline", BASELINES)
def test_on_a_linear_model_it_is_exactly_gradient_times_input_minus_baseline(baseline: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    images = torch.randn(2, 3, 8, 8)
    technique = IntegratedGradients(model, steps=5, baseline=baseline, mean=MEAN, std=STD, seed=3)
    signed = technique.explain(images, torch.tensor([0, 1, 1]), torch.tensor([3, 0, 2])).signed
    baselines = baseline_images(baseline, images, MEAN, STD, torch.Generator().manual_seed(3))
    weights = model[1].weight.detach().view(4, 3, 8, 8)
    expected = torch.stack([(weights[t] * (images[i] - baselines[i])).sum(dim=0)
                            for i, t in ((0, 3), (1, 0), (1, 2))])
    torch.testing.assert_close(signed, expected, atol=1e-5, rtol=1e-4)


def test_completeness_attributions_add_up_to_the_score_difference(tiny_net) -> None:
    torch.manual_seed(2)
    images = 3 * torch.randn(3, 3, 12, 12)
    targets = torch.tensor([0, 3, 4])
    signed = IntegratedGradients(tiny_net, steps=64).explain(images, torch.arange(3), targets).signed
    with torch.no_grad():
        difference = tiny_net(images)[torch.arange(3), targets] - tiny_net(torch.zeros_like(images))[0, targets]
    assert difference.abs().min() > 0.05  # a test with something to add up
    # within 1% of the largest difference (measured: 0.4% with 64 Gauss-Legendre nodes on this ReLU network)
    torch.testing.assert_close(signed.sum(dim=(1, 2)), difference, atol=0.01 * float(difference.abs().max()), rtol=0)


def test_batching_of_the_path_does_not_change_the_result(tiny_net) -> None:
    torch.manual_seed(3)
    images = torch.randn(2, 3, 10, 10)
    rows, targets = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3])
    results = [IntegratedGradients(tiny_net, steps=7, batch_size=size).explain(images, rows, targets).signed
               for size in (1, 5, 64)]
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[0], results[2])


def test_gauss_legendre_integrates_polynomials_exactly() -> None:
    nodes, weights = gauss_legendre(4, torch.device("cpu"))
    assert float((weights * nodes**7).sum()) == pytest.approx(1 / 8, rel=1e-5)  # exact up to degree 2n - 1
    assert float(nodes.min()) > 0 and float(nodes.max()) < 1
