from __future__ import annotations

import cv2
import numpy as np
import torch

from cnnvis_cli.render import colormap_lut, diverging_lut, encode_png, overlay, signed_overlay


def test_lut_is_opencv_colormap_in_rgb() -> None:
    lut = colormap_lut("jet", torch.device("cpu"))
    bgr = cv2.applyColorMap(np.array([[0], [255]], dtype=np.uint8), cv2.COLORMAP_JET)
    assert lut.shape == (256, 3) and lut.dtype == torch.uint8
    assert lut[0].tolist() == bgr[0, 0, ::-1].tolist() and lut[255].tolist() == bgr[1, 0, ::-1].tolist()


def test_overlay_blends_heat_by_alpha_at_the_peak_and_leaves_zero_untinted() -> None:
    lut = colormap_lut("jet", torch.device("cpu"))
    images = torch.full((1, 3, 2, 2), 100, dtype=torch.uint8)
    maps = torch.tensor([[[0.0, 1.0], [0.25, 1.0]]])
    assert torch.equal(overlay(images, maps, lut, 0.0)[0], images[0].permute(1, 2, 0))
    assert overlay(images, maps, lut, 1.0)[0, 0, 1].tolist() == lut[255].tolist()
    blended = overlay(images, maps, lut, 0.6)[0]
    assert blended[0, 0].tolist() == [100, 100, 100]  # where the map is 0 the image shows as it is
    assert torch.equal(blended[0, 1].float(), (0.6 * lut[255].float() + 0.4 * 100).round())
    quarter = 0.6 * 0.5  # weight alpha x sqrt(0.25)
    assert torch.equal(blended[1, 0].float(), (quarter * lut[64].float() + (1 - quarter) * 100).round())


def test_png_round_trip_keeps_rgb_order() -> None:
    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red
    decoded = cv2.imdecode(np.frombuffer(encode_png(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (3, 4, 3) and decoded[0, 0].tolist() == [0, 0, 255]  # BGR red


def test_diverging_lut_runs_blue_white_red() -> None:
    lut = diverging_lut(torch.device("cpu")).int()
    blue, middle, red = lut[0].tolist(), lut[128].tolist(), lut[255].tolist()
    assert blue[2] > blue[0] and red[0] > red[2] and min(middle) > 200


def test_signed_overlay_shows_the_sign_and_leaves_zero_alone() -> None:
    lut = diverging_lut(torch.device("cpu"))
    images = torch.full((1, 3, 1, 3), 100, dtype=torch.uint8)
    signed = torch.tensor([[[-2.0, 0.0, 2.0]]])
    pixels = signed_overlay(images, signed, lut)[0, 0].int().tolist()
    negative, zero, positive = pixels
    assert zero == [100, 100, 100]  # the image shows through where the attribution is zero
    assert negative == lut[0].int().tolist() and positive == lut[255].int().tolist()
    assert torch.equal(signed_overlay(images, torch.zeros(1, 1, 3), lut)[0].permute(2, 0, 1), images[0])
