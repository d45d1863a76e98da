"""analysis=[channels]: for the most frequent confusions, the target layer's channels that carry most of the
predicted class's maps, each shown with the test-set patches that excite it most (`exemplars.py`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch
from torch import nn

from cnnvis_cli.data import UNREADABLE, Batch, Source
from cnnvis_cli.exemplars import Exemplars, channel_shares, receptive_field
from cnnvis_cli.inference import Predictions, normalise
from cnnvis_cli.models import Preprocess
from cnnvis_cli.panels import to_original
from cnnvis_cli.render import encode_png

CONFUSIONS = 3  # the most frequent confusions described
MIN_MEMBERS = 3  # wrong predictions a confusion needs
MEMBERS = 32  # of each, the wrong predictions whose maps are weighed
CHANNELS = 3  # channels shown per confusion
PATCH = 72  # pixels a side of each patch in the pictures


def describe_channels(model: nn.Module, layer: str, predictions: Predictions, class_names: list[str],
                      preprocess: Preprocess, source: Source, device: torch.device,
                      load: Callable[[list[int]], Iterable[Batch]], write: Callable[[str, bytes], str]) -> dict:
    """What summary.json and the report say: per frequent confusion, its channels and their patch strips."""
    exemplars = predictions.exemplars
    if exemplars is None:
        return {"layer": layer, "confusions": []}
    wrong, cells, chosen = frequent_confusions(predictions)
    field = receptive_field(model, layer, preprocess.input_size)
    described, drawn = [], {}
    for true, guessed in chosen:
        rows = [row for row in wrong if (predictions.labels[row], predictions.predicted[row]) == (true, guessed)]
        shares = _mean_shares(model, layer, [int(predictions.indices[row]) for row in rows[:MEMBERS]], guessed,
                              preprocess, device, load)
        top = [int(channel) for channel in np.argsort(-shares, kind="stable")[:CHANNELS] if shares[channel] > 0]
        positive = max(float(shares.clip(0).sum()), 1e-12)
        for channel in top:
            if channel not in drawn:
                drawn[channel] = write(f"patterns/channels/channel_{channel:04d}.png",
                                       encode_png(_strip(exemplars, channel, field, preprocess, source)))
        described.append({
            "true": class_names[true], "predicted": class_names[guessed], "count": cells[(true, guessed)],
            "weighed": min(len(rows), MEMBERS),
            "channels": [{"channel": channel, "share": round(float(shares[channel]) / positive, 4),
                          "patches": drawn[channel],
                          "samples": [int(i) for i in exemplars.indices[channel] if i >= 0]} for channel in top],
        })
    return {"layer": layer, "receptive_field": list(field), "confusions": described}


def frequent_confusions(predictions: Predictions) -> tuple[np.ndarray, Counter, list[tuple[int, int]]]:
    """The wrong predictions' rows, their count per (true, predicted) cell, and the CONFUSIONS most frequent
    cells with at least MIN_MEMBERS of them."""
    wrong = np.flatnonzero(predictions.labelled & ~predictions.correct)
    cells = Counter((int(predictions.labels[row]), int(predictions.predicted[row])) for row in wrong)
    return wrong, cells, [cell for cell, count in cells.most_common(CONFUSIONS) if count >= MIN_MEMBERS]


def _mean_shares(model: nn.Module, layer: str, indices: list[int], target: int, preprocess: Preprocess,
                 device: torch.device, load: Callable[[list[int]], Iterable[Batch]]) -> np.ndarray:
    """The mean over the samples of each channel's part in the target's Grad-CAM map (C)."""
    total, count = None, 0
    for batch in load(indices):
        if not batch.indices:
            continue
        images = normalise(batch.images.to(device), preprocess)
        rows = torch.arange(len(images), device=device)
        shares = channel_shares(model, layer, images, rows, torch.full_like(rows, target)).sum(dim=0)
        total = shares if total is None else total + shares
        count += len(images)
    return (total / max(count, 1)).numpy() if total is not None else np.zeros(0)


def _strip(exemplars: Exemplars, channel: int, field: tuple[int, int], preprocess: Preprocess,
           source: Source) -> np.ndarray:
    """The channel's patches side by side, strongest first: each the receptive field around the maximum of
    its sample, cut from the original image."""
    height, width = exemplars.grid
    cell_h, cell_w = preprocess.input_size / height, preprocess.input_size / width
    tiles = []
    for index, y, x in zip(exemplars.indices[channel], exemplars.ys[channel], exemplars.xs[channel], strict=True):
        if index < 0:
            continue
        try:
            original = np.asarray(source.load(int(index)).image.convert("RGB"))
        except UNREADABLE:
            continue
        centre_y, centre_x = (y + 0.5) * cell_h, (x + 0.5) * cell_w
        box = (int(max(0, centre_x - field[1] / 2)), int(max(0, centre_y - field[0] / 2)),
               int(min(preprocess.input_size, centre_x + field[1] / 2)),
               int(min(preprocess.input_size, centre_y + field[0] / 2)))
        x0, y0, x1, y1 = to_original(box, (original.shape[1], original.shape[0]), preprocess.resize_size,
                                     preprocess.input_size)
        patch = original[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else original
        tiles.append(cv2.resize(patch, (PATCH, PATCH), interpolation=cv2.INTER_AREA))
    gap = np.full((PATCH, 4, 3), 255, np.uint8)
    pieces = [piece for tile in tiles for piece in (tile, gap)][:-1] or [np.full((PATCH, PATCH, 3), 255, np.uint8)]
    return np.concatenate(pieces, axis=1)

