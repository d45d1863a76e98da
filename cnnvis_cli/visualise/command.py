"""`cnnvis visualise`: the images that drive a model's classes, channels or neurons, with the figures that say
whether each objective was reached: its value against the 99th percentile of real test images, and for a
class image, the model's confidence in that class under random transformations."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cnnvis_cli.config import RunConfig, VisualiseConfig
from cnnvis_cli.data import UNREADABLE, SampleSet, make_loader, model_geometry, open_image, open_source, subset_indices
from cnnvis_cli.device import resolve_device
from cnnvis_cli.errors import UserError, first_line, unknown_name
from cnnvis_cli.models import LoadedModel, load_model, place_model, resolve_target_layer
from cnnvis_cli.run_dir import safe_name
from cnnvis_cli.visualise.dream import DreamSettings, dream
from cnnvis_cli.visualise.inversion import InversionSettings, invert
from cnnvis_cli.visualise.objectives import Activations, Objective, batch_values
from cnnvis_cli.visualise.render import Pixels, Rendering, render, render_settings
from cnnvis_cli.visualise.sheet import contact_sheet
from cnnvis_cli.visualise.transforms import Transforms

log = logging.getLogger("cnnvis")
DEFAULT_CLASSES = 16
DEFAULT_CHANNELS = 8
PERCENTILE = 99.0


@dataclass
class Sheet:
    """What a visualisation writes: its pictures (file name, RGB uint8) with captions, the rows of
    objectives.csv, and the figures for summary.json."""

    pictures: list[tuple[str, np.ndarray]]
    captions: list[str]
    rows: list[dict]
    summary: dict
    copies: int = 1


def visualise(cfg: RunConfig, output_dir: Path) -> dict:
    """Render what `cfg.visualise` asks for into `output_dir`; the summary written there."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    place_model(loaded, device, cfg.model)
    what = cfg.visualise.what
    if what == "dream":
        sheet = dreamt(cfg, loaded, device)
    elif what == "invert":
        sheet = inverted(cfg, loaded, device)
    else:
        sheet = optimised(cfg, loaded, device)
    write_sheet(output_dir, sheet)
    summary = {"what": what, "model": loaded.name, **sheet.summary,
               "seconds": round(time.perf_counter() - started, 2), "device": str(device)}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def optimised(cfg: RunConfig, loaded: LoadedModel, device: torch.device) -> Sheet:
    """Class, channel or neuron images, with each objective's value against the test set's 99th percentile
    and each class image's confidence under random transformations."""
    options = cfg.visualise
    objectives, layer = choose_objectives(options, loaded)
    size = options.size or loaded.preprocess.input_size
    pixels = Pixels(loaded.preprocess.mean, loaded.preprocess.std)
    settings = render_settings(options)
    layouts = {info.name: info.layout for info in loaded.layers}
    log.info("visualising %d %s%s at %d px: %d steps of %d images", len(objectives), options.what,
             f" of {layer}" if layer else "", size, settings.steps, len(objectives) * settings.images_per_objective)
    rendering = render(loaded.module, objectives, size=size, pixels=pixels, settings=settings, seed=cfg.seed,
                       layouts=layouts, diversity_layer=layer or loaded.target_layer, progress=cfg.progress)
    reference = reference_percentiles(cfg, loaded, rendering.objectives, layouts, device)
    confidence = class_confidence(loaded, rendering, pixels, settings.transforms, options.checks, cfg.seed)
    copies = options.images_per_unit
    pictures, rows = [], []
    for row, (objective, picture) in enumerate(zip(rendering.objectives, _rgb(rendering.images), strict=True)):
        name = safe_name(objective.name()) + (f"_{row % copies}" if copies > 1 else "") + ".png"
        pictures.append((name, picture))
        value = float(rendering.values[row])
        rows.append({
            "objective": objective.name(), "file": f"images/{name}",
            "start": round(float(rendering.start[row]), 4), "value": round(value, 4),
            "test_p99": _rounded(reference[row]),
            "ratio_to_test_p99": _rounded(value / reference[row], 2) if reference[row] > 0 else "",
            "confidence": _rounded(confidence[row]),
        })
    ratios = [row["ratio_to_test_p99"] for row in rows if row["ratio_to_test_p99"] != ""]
    confidences = [row["confidence"] for row in rows if row["confidence"] != ""]
    reached = f"{len(rows)} images; objectives at {np.median(ratios):.1f}x the test set's 99th percentile " \
        f"(median; lowest {np.min(ratios):.1f}x)" if ratios else f"{len(rows)} images"
    if confidences:
        reached += f"; class images classified as their class at {np.mean(confidences):.0%} (mean)"
    summary = {
        "headline": reached, "layer": layer, "size": size, "steps": settings.steps, "images": len(rows),
        "objectives": len(objectives),
        "median_ratio_to_test_p99": float(np.median(ratios)) if ratios else None,
        "min_ratio_to_test_p99": float(np.min(ratios)) if ratios else None,
        "mean_confidence": float(np.mean(confidences)) if confidences else None,
    }
    captions = [objective.name() for objective in rendering.objectives]
    return Sheet(pictures, captions, rows, summary, copies)


def dreamt(cfg: RunConfig, loaded: LoadedModel, device: torch.device) -> Sheet:
    """The image dreamt at one layer (or some of its channels): the original and the dream side by side."""
    options = cfg.visualise
    layer = resolve_target_layer(loaded.module, options.layer, loaded.layers)
    info = next(info for info in loaded.layers if info.name == layer)
    channels = [_channel_index(unit, layer, info.shape[0]) for unit in options.units] or None
    image, label = chosen_image(cfg, loaded)
    settings = DreamSettings(octaves=options.octaves, octave_scale=options.octave_scale,
                             steps=options.steps or DreamSettings.steps)
    result, before, after = dream(loaded.module, image[None].to(device), layer, info.layout, channels,
                                  pixels=Pixels(loaded.preprocess.mean, loaded.preprocess.std), settings=settings,
                                  seed=cfg.seed, progress=cfg.progress)
    target = f"{layer}" + (f" channels {', '.join(map(str, channels))}" if channels else "")
    original, dreamt_picture = _rgb(torch.stack([image, result[0]]))
    rows = [{"objective": f"dream {target}", "file": "images/dream.png", "start": round(float(before[0]), 4),
             "value": round(float(after[0]), 4), "ratio_to_start": _rounded(float(after[0] / before[0]), 2)
             if before[0] > 0 else ""}]
    headline = f"dream of {target} on {label}: its objective {float(before[0]):.3g} -> {float(after[0]):.3g}"
    summary = {"headline": headline,
               "layer": layer, "channels": channels, "image": label, "octaves": settings.octaves,
               "steps_per_octave": settings.steps, "objective_start": float(before[0]),
               "objective_end": float(after[0])}
    return Sheet([("original.png", original), ("dream.png", dreamt_picture)],
                 [f"original: {label}", f"dream of {target}"], rows, summary)


def inverted(cfg: RunConfig, loaded: LoadedModel, device: torch.device) -> Sheet:
    """The image inverted at several layers at once: how much of it each layer keeps."""
    options = cfg.visualise
    names = [info.name for info in loaded.layers]
    layers = [resolve_target_layer(loaded.module, layer, loaded.layers) for layer in options.layers] \
        or spread(names, INVERTED_LAYERS)
    image, label = chosen_image(cfg, loaded)
    settings = InversionSettings(steps=options.steps or InversionSettings.steps, lr=options.lr,
                                 alpha_weight=options.alpha_norm, tv_weight=options.total_variation)
    log.info("inverting %s at %d layers: %d steps", label, len(layers), settings.steps)
    result = invert(loaded.module, image.to(device), layers, {info.name: info.layout for info in loaded.layers},
                    pixels=Pixels(loaded.preprocess.mean, loaded.preprocess.std), settings=settings, seed=cfg.seed,
                    progress=cfg.progress)
    pictures = list(zip(["original.png", *(f"{safe_name(layer)}.png" for layer in layers)],
                        _rgb(torch.cat([image[None], result.images])), strict=True))
    rows = [{"objective": f"invert at {layer}", "file": f"images/{safe_name(layer)}.png",
             "start": round(float(start), 4), "value": round(float(end), 6),
             "fall": _rounded(float(start / end), 1) if end > 0 else "", "correlation": round(float(r), 4)}
            for layer, start, end, r in zip(layers, result.start, result.distance, result.correlation, strict=True)]
    captions = [f"original: {label}", *(f"{row['objective']}: r = {row['correlation']:.2f}" for row in rows)]
    falls = [float(start / end) for start, end in zip(result.start, result.distance, strict=True) if end > 0]
    headline = f"{label} inverted at {len(layers)} layers: representation distance fell {min(falls):.0f}x to " \
        f"{max(falls):.0f}x; correlation with the image {rows[0]['correlation']:.2f} at {layers[0]} to " \
        f"{rows[-1]['correlation']:.2f} at {layers[-1]}"
    summary = {"headline": headline, "image": label, "layers": layers, "steps": settings.steps,
               "distance_start": [float(value) for value in result.start],
               "distance_end": [float(value) for value in result.distance],
               "correlation": [float(value) for value in result.correlation]}
    return Sheet(pictures, captions, rows, summary)


INVERTED_LAYERS = 6


def spread(names: list[str], count: int) -> list[str]:
    """`count` of `names` spread evenly from the first to the last (all of them when there are fewer)."""
    if len(names) <= count:
        return list(names)
    return [names[round(position * (len(names) - 1) / (count - 1))] for position in range(count)]


def chosen_image(cfg: RunConfig, loaded: LoadedModel) -> tuple[torch.Tensor, str]:
    """`visualise.image` (or the test set's first image) as the model sees it: 3 x H x W in [0, 1]."""
    geometry = model_geometry(loaded.preprocess)
    if cfg.visualise.image:
        path = Path(cfg.visualise.image).expanduser()
        if not path.is_file():
            raise UserError(f"visualise.image={path} does not exist; give an image file")
        try:
            picture = open_image(path)
        except UNREADABLE as error:
            raise UserError(f"visualise.image={path} cannot be read as an image ({first_line(str(error))})") \
                from error
        return geometry(picture).float() / 255, path.name
    source = open_source(cfg.dataset)
    if len(source) == 0:
        raise UserError("the test set is empty; give an image with visualise.image=PATH")
    return geometry(source.load(0).image).float() / 255, source.sample_id(0)


def _rgb(images: torch.Tensor) -> list[np.ndarray]:
    return list((images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))


def _rounded(value: float, digits: int = 4) -> float | str:
    return round(float(value), digits) if np.isfinite(value) else ""


def choose_objectives(options: VisualiseConfig, loaded: LoadedModel) -> tuple[list[Objective], str | None]:
    """The objectives `options` name, and the layer they read (None for classes); UserError on a unit or layer
    the model does not have."""
    if options.what == "classes":
        names = loaded.class_names or [str(index) for index in range(loaded.num_classes)]
        units = [_class_index(unit, names) for unit in options.units] or list(range(min(DEFAULT_CLASSES, len(names))))
        return [Objective("class", unit, label=names[unit]) for unit in units], None
    layer = resolve_target_layer(loaded.module, options.layer, loaded.layers)
    info = next(info for info in loaded.layers if info.name == layer)
    channels = info.shape[0]
    units = [_channel_index(unit, layer, channels) for unit in options.units] \
        or list(range(min(DEFAULT_CHANNELS, channels)))
    kind = options.what.removesuffix("s")
    return [Objective(kind, unit, layer, info.layout) for unit in units], layer


def _class_index(unit: str, names: list[str]) -> int:
    if unit in names:
        return names.index(unit)
    if unit.lstrip("-").isdigit():
        index = int(unit)
        if 0 <= index < len(names):
            return index
        raise UserError(f"visualise.units: class {index} is outside 0..{len(names) - 1}")
    raise unknown_name("class", unit, names, "a class name or index")


def _channel_index(unit: str, layer: str, channels: int) -> int:
    if unit.isdigit() and int(unit) < channels:
        return int(unit)
    raise UserError(f"visualise.units: {unit!r} is not a channel of {layer}, which has {channels}; "
                    f"give indices from 0 to {channels - 1}")


@torch.no_grad()
def reference_percentiles(cfg: RunConfig, loaded: LoadedModel, objectives: list[Objective],
                          layouts: dict, device: torch.device) -> np.ndarray:
    """Each objective's 99th percentile over the first `visualise.reference` test images (NaN when 0)."""
    count = cfg.visualise.reference
    if count == 0:
        return np.full(len(objectives), np.nan)
    source = open_source(cfg.dataset)
    indices = subset_indices(len(source), count, cfg.dataset.seed)
    loader = make_loader(SampleSet(source, loaded.preprocess, indices), cfg.dataset.batch_size,
                         cfg.dataset.num_workers, pin_memory=device.type == "cuda")
    pixels = Pixels(loaded.preprocess.mean, loaded.preprocess.std)
    layers = {objective.layer for objective in objectives if objective.layer}
    activations = Activations(loaded.module, {name: layouts[name] for name in layers})
    values = []
    with activations.hooked():
        for batch in loader:
            if len(batch.images):
                images = batch.images.to(device).float() / 255
                logits = loaded.module(pixels.normalise(images))
                values.append(batch_values(objectives, logits, activations.outputs).cpu())
    if not values:
        raise UserError("visualise.reference: no test image could be read; set visualise.reference=0 to skip it")
    return np.percentile(torch.cat(values).numpy(), PERCENTILE, axis=0)


@torch.no_grad()
def class_confidence(loaded: LoadedModel, rendering: Rendering, pixels: Pixels, transforms: Transforms,
                     draws: int, seed: int) -> np.ndarray:
    """For each class image, the mean probability of its class over `draws` random transformations of it,
    drawn as in the optimisation (NaN for other objectives)."""
    confidence = np.full(len(rendering.objectives), np.nan)
    rows = [row for row, objective in enumerate(rendering.objectives) if objective.kind == "class"]
    if not rows or draws == 0:
        return confidence
    device = next(loaded.module.parameters()).device
    generator = torch.Generator().manual_seed(seed + 1)
    images = rendering.images[rows].to(device)
    classes = torch.tensor([rendering.objectives[row].unit for row in rows], device=device)
    total = torch.zeros(len(rows), device=device)
    for _ in range(draws):
        probabilities = loaded.module(pixels.normalise(transforms(images, generator))).float().softmax(dim=1)
        total += probabilities.gather(1, classes[:, None])[:, 0]
    confidence[rows] = (total / draws).cpu().numpy()
    return confidence


def write_sheet(output_dir: Path, sheet: Sheet) -> None:
    """images/*.png, images.png (all of them on one captioned sheet) and objectives.csv."""
    folder = output_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name, picture in sheet.pictures:
        cv2.imwrite(str(folder / name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    with open(output_dir / "objectives.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(sheet.rows[0]))
        writer.writeheader()
        writer.writerows(sheet.rows)
    drawn = contact_sheet(np.stack([picture for _, picture in sheet.pictures]), sheet.captions, sheet.copies)
    cv2.imwrite(str(output_dir / "images.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
