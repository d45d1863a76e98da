"""The image parameterisation against its definitions: the Fourier spectrum's 1/f scaling, the inverse FFT,
and the colour decorrelation matrix of Olah et al. (2017)."""

from __future__ import annotations

import math

import torch

from cnnvis_cli.visualise.parameterisation import (
    COLOUR_CORRELATION_SQRT,
    COLOUR_MATRIX,
    IMAGE_GAIN,
    ImageBatch,
    image_from_pixels,
    spectrum_scale,
)


def test_spectrum_scale_is_one_over_frequency_with_the_lowest_frequency_as_floor() -> None:
    scale = spectrum_scale(8, 8)
    assert scale.shape == (8, 5)
    assert math.isclose(float(scale[0, 0]), 8.0)  # f = 0: 1 / (1 / max(h, w))
    assert math.isclose(float(scale[0, 1]), 8.0)  # f = 1/8 cycles per pixel
    assert math.isclose(float(scale[0, 4]), 2.0)  # f = 1/2
    assert math.isclose(float(scale[3, 4]), 1 / math.hypot(3 / 8, 1 / 2), rel_tol=1e-6)
    assert math.isclose(float(spectrum_scale(8, 8, decay=2.0)[0, 4]), 4.0)
    assert torch.equal(spectrum_scale(6, 10, decay=0.0), torch.ones(6, 6))


def test_a_single_fourier_coefficient_makes_the_sinusoid_of_its_frequency() -> None:
    batch = ImageBatch(1, 16, 16, decorrelate=False)
    with torch.no_grad():
        batch.values.zero_()
        batch.values[0, 0, 0, 2, 0] = 1.0  # real part of the frequency (0, 2/16) in the red channel
    image = batch()
    logits = torch.logit(image[0, 0]) * IMAGE_GAIN  # undo the sigmoid and the gain
    columns = torch.arange(16, dtype=torch.float32)
    expected = 2 * spectrum_scale(16, 16)[0, 2] * torch.cos(2 * math.pi * 2 * columns / 16) / 16  # ortho irfft2
    assert torch.allclose(logits, expected.expand(16, 16), atol=1e-4)
    assert torch.allclose(image[0, 1:], torch.full((2, 16, 16), 0.5))  # green and blue untouched


def test_the_colour_matrix_is_the_square_root_of_a_colour_covariance() -> None:
    columns = COLOUR_CORRELATION_SQRT.T
    gram = columns @ columns.T  # U sqrt(S): orthogonal columns, their squared norms the eigenvalues
    off_diagonal = gram - torch.diag(torch.diag(gram))
    assert off_diagonal.abs().max() < 0.02 * gram.diag().max()
    assert torch.allclose(columns[0], torch.full((3,), 0.2667), atol=0.01)  # the first column is luminance
    covariance = COLOUR_CORRELATION_SQRT @ COLOUR_CORRELATION_SQRT.T
    assert torch.linalg.eigvalsh(covariance).min() > 0  # a covariance: symmetric positive definite
    assert math.isclose(float(COLOUR_MATRIX.norm(dim=0).max()), 1.0, rel_tol=1e-6)


def test_decorrelated_colour_maps_a_luminance_change_to_grey() -> None:
    batch = ImageBatch(1, 8, 8, fourier=False)
    with torch.no_grad():
        batch.values.zero_()
        batch.values[0, 0] = 4.0  # only the first (luminance) component
    pixel = batch().detach()[0, :, 0, 0]
    assert torch.allclose(pixel, torch.sigmoid(COLOUR_MATRIX[:, 0]), atol=1e-6)
    assert float(pixel.max() - pixel.min()) < 0.01


def test_an_image_batch_can_start_from_a_photograph() -> None:
    pixels = torch.rand(2, 3, 10, 12) * 0.9 + 0.05
    for decorrelate in (True, False):
        assert torch.allclose(image_from_pixels(pixels, decorrelate=decorrelate)(), pixels, atol=1e-5)


def test_the_start_is_seeded_and_faint() -> None:
    first = ImageBatch(3, 32, 32, generator=torch.Generator().manual_seed(1))().detach()
    again = ImageBatch(3, 32, 32, generator=torch.Generator().manual_seed(1))().detach()
    assert torch.equal(first, again)
    assert 0.005 < float(first.std()) < 0.1
