"""The random transformations: identity when their ranges are empty, and shifts, rotations and scales that
move pixels where their definitions say."""

from __future__ import annotations

import math

import torch

from cnnvis_cli.visualise.transforms import GREY, NONE, Transforms, affine, warp


def _image(size: int = 16) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_empty_ranges_leave_the_image_as_it_is() -> None:
    images = _image()
    assert torch.allclose(NONE(images, torch.Generator().manual_seed(0)), images, atol=1e-5)


def test_a_shift_of_whole_pixels_moves_the_image_and_fills_grey() -> None:
    images, size = _image(), 16
    shift = torch.tensor([[3 * 2 / size, 0.0], [0.0, -2 * 2 / size]])  # image 0: 3 px right; image 1: 2 px up
    moved = warp(images, affine(shift, torch.ones(2), torch.zeros(2)))
    assert torch.allclose(moved[0, :, :, 3:], images[0, :, :, :-3], atol=1e-5)
    assert torch.allclose(moved[0, :, :, :3], torch.full_like(moved[0, :, :, :3], GREY))
    assert torch.allclose(moved[1, :, :-2], images[1, :, 2:], atol=1e-5)


def test_a_quarter_turn_turns_clockwise_and_a_double_scale_shows_the_centre() -> None:
    images = _image()
    turned = warp(images, affine(torch.zeros(2, 2), torch.ones(2), torch.full((2,), math.pi / 2)))
    assert torch.allclose(turned, torch.rot90(images, -1, dims=(2, 3)), atol=1e-5)  # clockwise on screen
    zoomed = warp(images, affine(torch.zeros(2, 2), torch.full((2,), 2.0), torch.zeros(2)))
    centre = torch.nn.functional.interpolate(images[:, :, 4:12, 4:12], scale_factor=2, mode="bilinear",
                                             align_corners=False)
    assert torch.allclose(zoomed[:, :, 2:-2, 2:-2], centre[:, :, 2:-2, 2:-2], atol=1e-5)


def test_each_image_gets_its_own_draw_and_a_seed_repeats_them() -> None:
    transforms = Transforms()
    first = transforms.draw(4, 128, torch.Generator().manual_seed(3), torch.device("cpu"))
    again = transforms.draw(4, 128, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(first, again)
    assert len({tuple(row.flatten().tolist()) for row in first}) == 4
    assert float(first[:, :, 2].abs().max()) * 128 / 2 <= transforms.jitter * 128 / 224 + 1e-4  # the shift, in px
    determinant = torch.linalg.det(first[:, :, :2])  # 1 / scale^2
    assert bool(((determinant >= 1 / 1.1 ** 2 - 1e-5) & (determinant <= 1 / 0.9 ** 2 + 1e-5)).all())
