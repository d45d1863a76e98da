"""Boxes carried into the model's input, the pointing game, energy inside a box, peaks nearer a box, and
maps denser on one box than another."""

from __future__ import annotations

import math

import pytest
import torch

from cnnvis_cli.metrics.localisation import (
    box_masks,
    denser_first,
    energy_inside,
    nearer_first,
    parse_box,
    pointing_hits,
    to_input_box,
)
from cnnvis_cli.models import Preprocess


def test_boxes_follow_the_resize_and_centre_crop() -> None:
    preprocess = Preprocess(resize_size=50, input_size=50, mean=(0, 0, 0), std=(1, 1, 1))
    # 200 x 100 -> 100 x 50, then 25 pixels cropped off each side
    assert to_input_box((50, 0, 150, 100), (200, 100), preprocess) == (0, 0, 50, 50)
    assert to_input_box((10, 20, 30, 40), (64, 64), Preprocess(64, 64, (0,) * 3, (1,) * 3)) == (10, 20, 30, 40)
    assert parse_box("1 2 3 4") == (1, 2, 3, 4)
    assert parse_box("") is None and parse_box("5 5 5 9") is None


def test_pointing_game_with_tolerance() -> None:
    maps = torch.zeros(3, 20, 20)
    maps[0, 5, 5] = 1  # inside (4, 4, 8, 8)
    maps[1, 5, 12] = 1  # 4.5 pixels right of the box
    boxes = torch.tensor([[4.0, 4, 8, 8]] * 3)
    assert pointing_hits(maps[:2], boxes[:2], tolerance=0).tolist() == [1.0, 0.0]
    assert pointing_hits(maps[:2], boxes[:2], tolerance=5).tolist() == [1.0, 1.0]
    assert math.isnan(float(pointing_hits(maps[2:], boxes[2:], tolerance=0)[0]))  # an empty map


def test_energy_inside_a_box() -> None:
    uniform = torch.ones(1, 8, 8)
    quarter = torch.tensor([[0.0, 0, 4, 4]])
    assert box_masks(quarter, 8, 8).sum() == 16
    assert float(energy_inside(uniform, box_masks(quarter, 8, 8))[0]) == pytest.approx(0.25)
    assert math.isnan(float(energy_inside(torch.zeros(1, 8, 8), box_masks(quarter, 8, 8))[0]))


def test_peak_nearer_one_box_than_another() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[0, 2, 2] = 1
    maps[1, 15, 15] = 1
    corner, centre = torch.tensor([[0.0, 0, 4, 4]] * 2), torch.tensor([[10.0, 10, 18, 18]] * 2)
    assert nearer_first(maps, corner, centre).tolist() == [1.0, 0.0]


def test_denser_compares_mean_values_not_totals() -> None:
    small, large = torch.tensor([[0.0, 0, 2, 2]] * 3), torch.tensor([[4.0, 4, 12, 12]] * 3)
    maps = torch.zeros(3, 12, 12)
    maps[0, :2, :2] = 0.5  # the small box holds less mass (2) than the large one (16) but is denser
    maps[0, 4:, 4:] = 0.25
    maps[1, 4:, 4:] = 1.0
    masks = (box_masks(small, 12, 12), box_masks(large, 12, 12))
    result = denser_first(maps, *masks)
    assert result[:2].tolist() == [1.0, 0.0]
    assert math.isnan(float(result[2]))  # an empty map
    empty_box = torch.tensor([[3.0, 3, 3, 3]] * 3)
    assert math.isnan(float(denser_first(maps, box_masks(empty_box, 12, 12), masks[1])[0]))
