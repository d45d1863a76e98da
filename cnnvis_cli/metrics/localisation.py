"""Does a heatmap point at the object? Where a dataset gives boxes (the demo always does), each map is
scored against them.

- Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016): a hit when
  the map's peak lies inside the box or within a tolerance of it (their 15 pixels at 224, scaled to the
  model's input size).
- Nearer the cue (the demo, whose images carry a spurious mark): whether the map's peak lies nearer the
  mark's box than the object's box, which is how a map shows that a wrong prediction followed the mark.
- Energy inside the box (Wang et al., "Score-CAM", CVPR Workshops 2020, its "energy-based pointing game"):
  the share of the map's total mass that falls inside the box.
- Denser on the cue (the demo): whether the map's mean value inside the mark's box exceeds its mean value
  inside the object's box. Unlike the peak, it weighs the whole of both regions, and unlike the energy it
  does not favour the larger box (the object's is 3 to 12 times the mark's).
A map with no content (all zeros) scores NaN for each, and is left out of averages.
Boxes are (x0, y0, x1, y1) in pixels of the original image, x1 and y1 exclusive; they are carried into the
model's input through the same resize and centre crop as the image.
"""

from __future__ import annotations

import torch

from cnnvis_cli.models import Preprocess


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """A box from its "x0 y0 x1 y1" text, or None when there is none."""
    parts = text.split()
    if len(parts) != 4:
        return None
    x0, y0, x1, y1 = (float(part) for part in parts)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def to_input_box(box: tuple[float, float, float, float], original_size: tuple[int, int],
                 preprocess: Preprocess) -> tuple[float, float, float, float]:
    """A box of the original image (width, height) in the model input's pixels: the shorter side scaled to
    `resize_size`, then a centre crop of `input_size` (torchvision's rounding)."""
    width, height = original_size
    scale = preprocess.resize_size / min(width, height)
    scaled_w, scaled_h = (round(width * scale), preprocess.resize_size) if width >= height \
        else (preprocess.resize_size, round(height * scale))
    left = round((scaled_w - preprocess.input_size) / 2)
    top = round((scaled_h - preprocess.input_size) / 2)
    x0, y0, x1, y1 = box
    return (x0 * scale - left, y0 * scale - top, x1 * scale - left, y1 * scale - top)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """R x H x W: True at the pixels whose centre lies inside each row's box (R x 4, input pixels)."""
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # R x H
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # R x W
    return inside_y[:, :, None] & inside_x[:, None, :]


POINTING_TOLERANCE = 15 / 224  # Zhang et al.'s 15 pixels, as a share of a 224-pixel input's side


def peak_points(maps: torch.Tensor) -> torch.Tensor:
    """R x 2: the (x, y) centre of each map's peak pixel (its first maximum, row by row)."""
    peak = maps.flatten(1).argmax(dim=1)
    width = maps.shape[-1]
    return torch.stack([peak % width, peak // width], dim=1).float() + 0.5


def box_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """R distances in pixels from each point (R x 2) to its box (R x 4); 0 inside the box."""
    dx = (torch.maximum(boxes[:, 0] - points[:, 0], points[:, 0] - boxes[:, 2])).clamp(min=0)
    dy = (torch.maximum(boxes[:, 1] - points[:, 1], points[:, 1] - boxes[:, 3])).clamp(min=0)
    return torch.hypot(dx, dy)


def pointing_hits(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float) -> torch.Tensor:
    """R floats: 1 where the map's peak lies within `tolerance` pixels of the box, else 0; NaN for an
    empty map."""
    hits = (box_distance(peak_points(maps), boxes) <= tolerance).float()
    return torch.where(maps.flatten(1).amax(dim=1) > 0, hits, torch.nan)


def nearer_first(maps: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """R floats: 1 where the map's peak is nearer the first box than the second, else 0; NaN for an empty
    map."""
    points = peak_points(maps)
    nearer = (box_distance(points, first) < box_distance(points, second)).float()
    return torch.where(maps.flatten(1).amax(dim=1) > 0, nearer, torch.nan)


def denser_first(maps: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """R floats: 1 where the map's mean value inside the first mask (R x H x W) exceeds its mean inside the
    second, else 0; NaN for an empty map or an empty mask."""
    flat = maps.flatten(1)
    first, second = first.flatten(1), second.flatten(1)
    first_area, second_area = first.sum(dim=1), second.sum(dim=1)
    denser = ((flat * first).sum(dim=1) / first_area.clamp(min=1) > (flat * second).sum(dim=1)
              / second_area.clamp(min=1)).float()
    return torch.where((flat.amax(dim=1) > 0) & (first_area > 0) & (second_area > 0), denser, torch.nan)


def energy_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """R floats in [0, 1]: the share of each map's mass inside its mask."""
    flat = maps.flatten(1).clamp(min=0)
    total = flat.sum(dim=1)
    inside = (flat * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.nan)
