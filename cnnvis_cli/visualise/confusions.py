"""analysis=[class_images]: what the model has learned of the classes it confuses. For each frequent
confusion (true -> predicted), the class images of both classes side by side (feature visualisation,
`render.py`), and with analysis=[channels], the images of the channels its maps rest on. All of them are one
batch of objectives: one optimisation, whatever their number."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from cnnvis_cli.channels import frequent_confusions
from cnnvis_cli.config import VisualiseConfig
from cnnvis_cli.inference import Predictions
from cnnvis_cli.layouts import Layout
from cnnvis_cli.render import encode_png
from cnnvis_cli.visualise.objectives import Objective
from cnnvis_cli.visualise.render import Pixels, render, render_settings


def describe_class_images(model: nn.Module, predictions: Predictions, class_names: list[str], *, size: int,
                          pixels: Pixels, layer: str, layouts: dict[str, Layout], channels: dict | None,
                          options: VisualiseConfig, seed: int, progress: bool,
                          write: Callable[[str, bytes], str]) -> dict:
    """What summary.json and the report say: per frequent confusion, its two class images and the images of
    its channels (patterns/class_images/)."""
    _, cells, chosen = frequent_confusions(predictions)
    classes = sorted({index for cell in chosen for index in cell})
    carried = {(item["true"], item["predicted"]): [channel["channel"] for channel in item["channels"]]
               for item in (channels or {}).get("confusions", [])}
    units = sorted({channel for found in carried.values() for channel in found})
    objectives = [Objective("class", index, label=class_names[index]) for index in classes] + \
        [Objective("channel", unit, layer, layouts[layer]) for unit in units]
    settings = render_settings(options)
    if not objectives:
        return {"layer": layer, "size": size, "steps": settings.steps, "confusions": []}
    rendering = render(model, objectives, size=size, pixels=pixels, settings=settings, seed=seed, layouts=layouts,
                       diversity_layer=layer, progress=progress)
    pictures = (rendering.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    paths = {}
    for objective, picture, value in zip(rendering.objectives, pictures, rendering.values, strict=True):
        name = f"class_{objective.unit:04d}" if objective.kind == "class" else f"channel_{objective.unit:04d}"
        paths[(objective.kind, objective.unit)] = (write(f"patterns/class_images/{name}.png", encode_png(picture)),
                                                   round(float(value), 4))
    described = []
    for true, guessed in chosen:
        names = (class_names[true], class_names[guessed])
        described.append({
            "true": names[0], "predicted": names[1], "count": cells[(true, guessed)],
            "true_image": paths[("class", true)][0], "predicted_image": paths[("class", guessed)][0],
            "channels": [{"channel": unit, "image": paths[("channel", unit)][0], "value": paths[("channel", unit)][1]}
                         for unit in carried.get(names, [])],
        })
    return {"layer": layer, "size": size, "steps": settings.steps, "confusions": described}
