from __future__ import annotations

import pytest
import torch

from cnnvis_cli.techniques.baselines import baseline_images, blur

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pixels(normalised: torch.Tensor) -> torch.Tensor:
    return normalised * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_black_and_mean_baselines_in_pixel_space() -> None:
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(pixels(baseline_images("black", images, MEAN, STD)), torch.zeros(2, 3, 16, 16))
    assert torch.equal(baseline_images("mean", images, MEAN, STD), torch.zeros(2, 3, 16, 16))


def test_noise_baseline_is_uniform_pixels_from_the_seed() -> None:
    images = torch.randn(2, 3, 32, 32)
    first = baseline_images("noise", images, MEAN, STD, torch.Generator().manual_seed(1))
    again = baseline_images("noise", images, MEAN, STD, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    values = pixels(first)
    assert float(values.min()) >= -1e-6 and float(values.max()) <= 1 + 1e-6 and abs(float(values.mean()) - 0.5) < 0.05


def test_blur_keeps_flat_images_and_smooths_detail() -> None:
    flat = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(blur(flat), flat)
    noisy = torch.randn(1, 3, 32, 32)
    assert float(blur(noisy).std()) < 0.5 * float(noisy.std())
    assert blur(torch.randn(1, 3, 2, 2)).shape == (1, 3, 2, 2)  # tiny images too


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'grey'"):
        baseline_images("grey", torch.zeros(1, 3, 4, 4), MEAN, STD)
