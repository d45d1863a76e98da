"""Sanity checks for heatmaps: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.

Model-parameter randomisation, cascading: the model's layers with parameters are re-initialised from the
top (the classifier) down, a few more at each stage, until none is left as trained; after each stage the
same images are explained again, for the same target classes, and each map is compared with the trained
model's map by Spearman rank correlation (ties get their average rank) and by SSIM (Wang et al., IEEE TIP
2004; an 11 x 11 Gaussian window, sigma 1.5, on maps in [0, 1]). A technique that explains the model
should lose its maps as the model is destroyed; one whose maps keep their order (a mean Spearman of
SANITY_FLAG or more once every layer is random) shows the input more than the model, and is flagged.
SSIM is reported beside it but does not flag: two sparse maps, near zero almost everywhere, score a high
SSIM whatever they show (on the demo, LRP's maps kept an SSIM of 0.79 with a Spearman of 0.01).

Label randomisation, from the same paper: the maps of the trained model against those of the same
architecture trained on randomly permuted labels (`sanity_label_model`; for the demo,
`cnnvis demo train --shuffle-labels --output PATH` makes one). A technique that passes the first test
should fail to find the same evidence in a model that learnt nothing but noise.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.run_dir import RunDir

SANITY_FLAG = 0.5
log = logging.getLogger("cnnvis")


def parameter_layers(model: nn.Module) -> list[str]:
    """The names of the modules that hold parameters of their own and can re-initialise them, in the order
    they were registered (for the usual CNNs, the order they run)."""
    return [name for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False)) and hasattr(module, "reset_parameters")]


def cascade_stages(layers: list[str], stages: int) -> list[list[str]]:
    """For each stage, the layers random after it, top first: about len(layers) / stages more each stage,
    and all of them at the last."""
    top_down = layers[::-1]
    counts = sorted({math.ceil(len(top_down) * stage / stages) for stage in range(1, stages + 1)})
    return [top_down[:count] for count in counts]


def randomise(model: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named modules in place (their own default initialisation), seeded by name order."""
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        for offset, name in enumerate(names):
            torch.manual_seed(seed + offset)
            modules[name].reset_parameters()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) of each row's values, ties sharing the mean of their positions: R x N."""
    rows, width = values.shape
    sorted_values, order = values.sort(dim=1)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = starts.long().cumsum(dim=1) - 1 + torch.arange(rows, device=values.device)[:, None] * width
    positions = torch.arange(width, device=values.device, dtype=torch.float64).expand(rows, width)
    sums = torch.zeros(rows * width, dtype=torch.float64, device=values.device).index_add_(
        0, group.flatten(), positions.flatten())
    counts = torch.zeros(rows * width, dtype=torch.float64, device=values.device).index_add_(
        0, group.flatten(), torch.ones(rows * width, dtype=torch.float64, device=values.device))
    mean_position = (sums[group.flatten()] / counts[group.flatten()]).view(rows, width)
    ranks = torch.empty_like(mean_position)
    ranks.scatter_(1, order, mean_position)
    return ranks


def spearman(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (R x H x W each): R values; 0 where a map is constant."""
    a, b = average_ranks(first.flatten(1)), average_ranks(second.flatten(1))
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(dim=1) / norm.clamp(min=1e-300), 0.0).float()


def ssim(first: torch.Tensor, second: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of each pair of [0, 1] maps (R x H x W each): R values."""
    coordinates = torch.arange(window, device=first.device, dtype=torch.float32) - (window - 1) / 2
    gauss = torch.exp(-coordinates ** 2 / (2 * sigma ** 2))
    kernel = (gauss[:, None] * gauss[None]) / gauss.sum() ** 2

    def blur(maps: torch.Tensor) -> torch.Tensor:
        return F.conv2d(maps, kernel[None, None])

    x, y = first[:, None].float(), second[:, None].float()
    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x ** 2
    var_y = blur(y * y) - mean_y ** 2
    covariance = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    return (numerator / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))).mean(dim=(1, 2, 3))


def cascading_randomisation(model: nn.Module, explain: Callable[[nn.Module], dict[str, torch.Tensor]],
                            stages: int, seed: int) -> list[dict]:
    """`explain(model)` gives each technique's R maps; returns one entry per stage: the layers random after it
    (top first), and per technique the mean Spearman and SSIM of its maps against the trained model's."""
    trained = explain(model)
    layers = parameter_layers(model)
    randomised = copy.deepcopy(model)
    results, done = [], 0
    for random_layers in cascade_stages(layers, stages):
        randomise(randomised, random_layers[done:], seed + done)
        done = len(random_layers)
        results.append({"random_layers": len(random_layers), "down_to": random_layers[-1],
                        "techniques": compare_maps(trained, explain(randomised))})
    return results


def compare_maps(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per technique, the mean Spearman and SSIM of its maps in `first` against `second`."""
    return {name: {"spearman": round(float(spearman(first[name], second[name]).mean()), 4),
                   "ssim": round(float(ssim(first[name], second[name]).mean()), 4)} for name in first}


def flagged(results: list[dict]) -> list[str]:
    """The techniques whose maps keep their order once every layer is random."""
    if not results:
        return []
    return [name for name, values in results[-1]["techniques"].items() if values["spearman"] >= SANITY_FLAG]


def record_sanity(results: list[dict], labels: dict[str, dict[str, float]] | None, samples: int,
                  run_dir: RunDir) -> dict[str, Any]:
    """Write sanity.csv, log the table and the flagged techniques; return what summary.json keeps. `labels`
    holds the label-randomisation comparison, when there is one."""
    with run_dir.csv_stream("sanity.csv", ["stage", "random_layers", "down_to", "technique", "spearman",
                                           "ssim"]) as csv:
        csv.write([stage, result["random_layers"], result["down_to"], name, values["spearman"], values["ssim"]]
                  for stage, result in enumerate(results, start=1) for name, values in result["techniques"].items())
        if labels:
            csv.write(["labels", "", "labels shuffled", name, values["spearman"], values["ssim"]]
                      for name, values in labels.items())
    if results:
        log.info("sanity check, Spearman / SSIM of each technique's maps with the trained model's, as layers are "
                 "randomised from the top: %s", " | ".join(f"{r['random_layers']} layers" for r in results))
        names = list(results[0]["techniques"])
        width = max(len(name) for name in names)
        for name in names:
            log.info("  %s  %s", name.ljust(width), " | ".join(
                f"{r['techniques'][name]['spearman']:5.2f} / {r['techniques'][name]['ssim']:4.2f}" for r in results))
    bad = flagged(results)
    for name in bad:
        log.warning("sanity check: %s's maps keep their order (Spearman %.2f or more) when every layer of the "
                    "model is random; they show the image more than the model", name, SANITY_FLAG)
    summary: dict[str, Any] = {"samples": samples, "flag_at": SANITY_FLAG, "stages": results, "flagged": bad}
    if labels:
        summary["labels"] = labels
        summary["flagged_labels"] = [name for name, values in labels.items() if values["spearman"] >= SANITY_FLAG]
        for name in summary["flagged_labels"]:
            log.warning("sanity check: %s's maps keep their order for a model trained on shuffled labels", name)
    return summary
