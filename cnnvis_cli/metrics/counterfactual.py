"""Does the region a map points at cause the prediction? Each wrong prediction is predicted again with that
region hidden, with a random region of the same shape hidden instead (the control), and with only the
region kept, in batches of every (row, variant) input.

Two regions of each predicted-class map:
- box: the box the panel's zoom shows (`panels.zoom_region`: the connected region around the map's peak at
  or above `render.zoom_threshold` of it, padded); none when the map is empty or the box would cover most of
  the image;
- top: the map's `top_percent` % highest pixels (fewer where fewer pixels are above 0).
A hidden region is filled with the blurred image by default, or as occlusion can fill its windows (the mean
colour, black, noise). A flat square is a shape of its own: on the demo, whose model reads a square mark in
a corner, hiding random regions with the mean colour turned 18 of 90 wrong predictions right, with the blur 3.
The control moves the same mask to `draws` random places: where it fits whole in the image (the box), or
anywhere, what leaves one edge coming back at the other (the top pixels, which may be scattered over the
whole image); a generator seeded by the run's seed and the sample draws them, so they do not depend on the
batch or the process a sample falls to. The finding is the difference between the two: hiding a random
patch of the same size changes some predictions too. This follows the deletion test of "RISE" (Petsiuk et
al., BMVC 2018) and the core/spurious mask tests of "Salient ImageNet" (Singla and Feizi, ICLR 2022), asked
of one region and one sample at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnvis_cli.panels import zoom_region
from cnnvis_cli.techniques.baselines import baseline_images

REGIONS = ("box", "top")
# per region: the columns of metrics.csv, what each says, for the README and `cnnvis list metrics`
COLUMNS = {
    "hide_{}_flips": "1 when hiding the region changes the predicted class",
    "hide_{}_to_true": "1 when hiding the region makes the prediction the true class",
    "hide_{}_pred_change": "change of the predicted class's probability when the region is hidden",
    "hide_{}_true_change": "change of the true class's probability when the region is hidden",
    "random_{}_flips": "the control: share of random regions of the same shape whose hiding changes the class",
    "random_{}_to_true": "the control: share of them whose hiding makes it the true class",
    "random_{}_pred_change": "the control: mean change of the predicted class's probability",
    "keep_{}_same": "1 when the region alone (the rest hidden) keeps the prediction",
    "keep_{}_pred_change": "change of the predicted class's probability when only the region is kept",
    "{}_area": "the region's share of the image",
}


def counterfactual_columns() -> list[str]:
    return [column.format(region) for region in REGIONS for column in COLUMNS]


@dataclass(frozen=True)
class CounterfactualOptions:
    fill: str = "blurred"
    top_percent: float = 10.0
    draws: int = 5
    zoom_threshold: float = 0.5
    seed: int = 0


def region_masks(maps: torch.Tensor, region: str, options: CounterfactualOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """R x H x W boolean masks of one kind of region, and which rows have one (R booleans)."""
    if region == "box":
        masks = torch.zeros(maps.shape, dtype=torch.bool, device=maps.device)
        found = torch.zeros(len(maps), dtype=torch.bool, device=maps.device)
        for row, heat in enumerate(maps.float().cpu().numpy()):  # the panel's own box, made on the CPU
            box, _ = zoom_region(heat, options.zoom_threshold)
            if box is not None:
                x0, y0, x1, y1 = box
                masks[row, y0:y1, x0:x1] = True
                found[row] = True
        return masks, found
    flat = maps.flatten(1).float()
    count = max(1, round(flat.shape[1] * options.top_percent / 100))
    chosen = flat.topk(count, dim=1).indices  # ties: topk's order, which is deterministic on one device
    masks = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, chosen, True) & (flat > 0)  # never a 0 pixel
    return masks.view(maps.shape), flat.amax(dim=1) > 0


def moved(masks: torch.Tensor, sample_indices: list[int], draws: int, seed: int, wrap: bool = False) -> torch.Tensor:
    """draws x R x H x W: each mask translated to random places. Without `wrap`, to places where its bounding
    box fits whole in the image (a box stays the same box); with it, anywhere, what leaves one edge coming
    back at the other (a scattered mask, whose bounding box is the whole image, still moves)."""
    rows, height, width = masks.shape
    if wrap:
        lows = torch.zeros((rows, 2), dtype=torch.long)
        highs = torch.tensor([height - 1, width - 1]).expand(rows, 2)
    else:
        ys, xs = masks.any(dim=2), masks.any(dim=1)  # R x H, R x W
        y0, y1 = ys.float().argmax(dim=1), height - ys.flip(1).float().argmax(dim=1)
        x0, x1 = xs.float().argmax(dim=1), width - xs.flip(1).float().argmax(dim=1)
        lows = torch.stack([-y0, -x0], dim=1).cpu()  # R x 2: the smallest and largest shift that keeps it whole
        highs = torch.stack([height - y1, width - x1], dim=1).cpu()
    shifts = torch.empty((draws, rows, 2), dtype=torch.long)
    for row, sample in enumerate(sample_indices):  # one generator per sample: independent of the batch
        generator = torch.Generator().manual_seed(seed * 1_000_003 + sample)
        unit = torch.rand((draws, 2), generator=generator)
        span = highs[row] - lows[row]
        shifts[:, row] = lows[row] + (unit * (span + 1)).long().clamp(max=span)
    shifts = shifts.to(masks.device)
    source_y = torch.arange(height, device=masks.device)[None, None, :] - shifts[..., 0:1]  # draws x R x H
    source_x = torch.arange(width, device=masks.device)[None, None, :] - shifts[..., 1:2]  # draws x R x W
    row_index = torch.arange(rows, device=masks.device)[None, :, None, None]
    if wrap:
        return masks[row_index, (source_y % height)[..., :, None], (source_x % width)[..., None, :]]
    inside_y, inside_x = (source_y >= 0) & (source_y < height), (source_x >= 0) & (source_x < width)
    inside = inside_y[..., :, None] & inside_x[..., None, :]
    picked = masks[row_index, source_y.clamp(0, height - 1)[..., :, None], source_x.clamp(0, width - 1)[..., None, :]]
    return picked & inside


@dataclass(frozen=True)
class Variant:
    """One kind of input made from each row's image: its mask (R x H x W, True = filled) per row."""

    name: str
    masks: torch.Tensor


def region_outcomes(model: nn.Module, images: torch.Tensor, image_rows: torch.Tensor, predicted: torch.Tensor,
                   true: torch.Tensor, maps: torch.Tensor, sample_indices: list[int], options: CounterfactualOptions,
                   mean: tuple[float, ...], std: tuple[float, ...], batch_size: int) -> dict[str, torch.Tensor]:
    """The columns of `counterfactual_columns()` for R rows (wrong predictions: their predicted-class map,
    the predicted and the true class), as R floats, NaN where a row has no region."""
    fills = baseline_images(options.fill, images, mean, std,
                            torch.Generator(images.device).manual_seed(options.seed))
    variants = [Variant("original", torch.zeros(maps.shape, dtype=torch.bool, device=maps.device))]
    found, hidden = {}, {}
    for region in REGIONS:
        masks, found[region] = region_masks(maps, region, options)
        hidden[region] = masks
        variants += [Variant(f"hide_{region}", masks), Variant(f"keep_{region}", ~masks & found[region][:, None, None])]
        variants += [Variant(f"random_{region}", draw)
                     for draw in moved(masks, sample_indices, options.draws, options.seed, wrap=region == "top")]
    probabilities = _predict_variants(model, images, image_rows, fills, [v.masks for v in variants], batch_size)
    rows = torch.arange(len(maps), device=maps.device)
    before = probabilities[0]
    values: dict[str, torch.Tensor] = {}
    for region in REGIONS:
        chosen = [number for number, variant in enumerate(variants) if variant.name == f"random_{region}"]
        outcome = {name: probabilities[next(n for n, v in enumerate(variants) if v.name == f"{name}_{region}")]
                   for name in ("hide", "keep")}
        random = probabilities[chosen]  # draws x R x classes
        columns = {
            "hide_{}_flips": outcome["hide"].argmax(dim=1) != predicted,
            "hide_{}_to_true": outcome["hide"].argmax(dim=1) == true,
            "hide_{}_pred_change": outcome["hide"][rows, predicted] - before[rows, predicted],
            "hide_{}_true_change": outcome["hide"][rows, true] - before[rows, true],
            "random_{}_flips": (random.argmax(dim=2) != predicted).float().mean(dim=0),
            "random_{}_to_true": (random.argmax(dim=2) == true).float().mean(dim=0),
            "random_{}_pred_change": (random[:, rows, predicted] - before[rows, predicted]).mean(dim=0),
            "keep_{}_same": outcome["keep"].argmax(dim=1) == predicted,
            "keep_{}_pred_change": outcome["keep"][rows, predicted] - before[rows, predicted],
            "{}_area": hidden[region].flatten(1).float().mean(dim=1),
        }
        for column, value in columns.items():
            values[column.format(region)] = torch.where(found[region], value.float(), math.nan)
    return values


def _predict_variants(model: nn.Module, images: torch.Tensor, image_rows: torch.Tensor, fills: torch.Tensor,
                      variant_masks: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """variants x R x classes probabilities of every (variant, row) input, `batch_size` inputs per pass."""
    rows = len(image_rows)
    masks = torch.stack(variant_masks)  # variants x R x H x W
    flat = masks.flatten(0, 1)
    sources = image_rows.repeat(len(variant_masks))
    outputs = []
    with torch.no_grad():
        for start in range(0, len(flat), batch_size):
            source = sources[start:start + batch_size]
            hidden = flat[start:start + batch_size, None]
            inputs = torch.where(hidden, fills[source], images[source])
            outputs.append(model(inputs).float().softmax(dim=1))
    return torch.cat(outputs).view(len(variant_masks), rows, -1)


def counterfactual_summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float | int]]:
    """Per region, over the rows that have one: how many wrong predictions, how many flip and turn right when
    the region is hidden, the same expected of a random region (the share over the draws, summed), the kept-
    region figures and the mean probability changes."""
    summary = {}
    for region in REGIONS:
        have = [row for row in rows if not math.isnan(row.get(f"hide_{region}_flips", math.nan))]
        if not have:
            continue
        column = {name: np.array([row[name.format(region)] for row in have]) for name in COLUMNS}
        summary[region] = {
            "wrong": len(have),
            "hidden_flips": int(column["hide_{}_flips"].sum()),
            "hidden_to_true": int(column["hide_{}_to_true"].sum()),
            "random_flips": round(float(column["random_{}_flips"].sum()), 1),
            "random_to_true": round(float(column["random_{}_to_true"].sum()), 1),
            "kept_same": int(column["keep_{}_same"].sum()),
            **{key: round(float(column[name].mean()), 4) for key, name in (
                ("hidden_pred_change", "hide_{}_pred_change"), ("hidden_true_change", "hide_{}_true_change"),
                ("random_pred_change", "random_{}_pred_change"), ("kept_pred_change", "keep_{}_pred_change"),
                ("area", "{}_area"))},
        }
    return summary
