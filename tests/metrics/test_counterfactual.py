"""The counterfactual test of a map's region, against its definition on a model whose evidence is known."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from helpers import run_config
from torch import nn

from cnnvis_cli.errors import UserError
from cnnvis_cli.metrics.counterfactual import (
    CounterfactualOptions,
    counterfactual_summary,
    moved,
    region_masks,
    region_outcomes,
)
from cnnvis_cli.panels import zoom_region
from cnnvis_cli.pipeline import run

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIDE, PATCH = 64, 8


class CornerModel(nn.Module):
    """Class 0's logit is 4 x the mean of the top-left 8 x 8 patch, class 1's is 1, class 2's is 0.5: a bright
    patch there makes the model say class 0, and hiding it (the mean colour is 0 once normalised) says 1."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = 4 * images[:, :, :PATCH, :PATCH].mean(dim=(1, 2, 3))
        return torch.stack([evidence, torch.ones_like(evidence), torch.full_like(evidence, 0.5)], dim=1)


def scene(count: int) -> torch.Tensor:
    torch.manual_seed(0)
    images = torch.randn(count, 3, SIDE, SIDE) * 0.1
    images[:, :, :PATCH, :PATCH] = 2.0
    return images


def corner_maps(count: int) -> torch.Tensor:
    """1 on the patch, falling away from it (the top 10% of the pixels: a quarter disc around the corner)."""
    ys, xs = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    falling = 0.9 * torch.exp(-(ys.float() ** 2 + xs.float() ** 2) / 400)
    inside = (ys < PATCH) & (xs < PATCH)
    return torch.where(inside, 1.0, falling).expand(count, SIDE, SIDE).clone()


def measure(images: torch.Tensor, maps: torch.Tensor, options: CounterfactualOptions | None = None,
            batch_size: int = 7) -> dict[str, torch.Tensor]:
    count = len(images)
    return region_outcomes(CornerModel(), images, torch.arange(count), torch.zeros(count, dtype=torch.long),
                           torch.ones(count, dtype=torch.long), maps, list(range(100, 100 + count)),
                           options or CounterfactualOptions(fill="mean"), MEAN, STD, batch_size)


def test_hiding_the_evidence_turns_the_prediction_right_and_a_random_region_does_not() -> None:
    images, maps = scene(3), corner_maps(3)
    found = measure(images, maps)
    for region in ("box", "top"):
        assert found[f"hide_{region}_flips"].tolist() == [1.0] * 3
        assert found[f"hide_{region}_to_true"].tolist() == [1.0] * 3
        assert found[f"keep_{region}_same"].tolist() == [1.0] * 3  # the region alone still says class 0
    # a box at another place leaves the patch whole; the top pixels, moved with wrap-around, come back over
    # the corner now and then (a fifth of the draws of one sample here)
    assert found["random_box_flips"].tolist() == [0.0] * 3
    assert found["random_top_flips"].mean() <= 0.2
    box, _ = zoom_region(maps[0].numpy(), 0.5)  # the panel's zoom box
    assert box[:2] == (0, 0) and found["box_area"].tolist() == pytest.approx(
        [(box[2] - box[0]) * (box[3] - box[1]) / SIDE**2] * 3)
    assert found["top_area"].tolist() == pytest.approx([round(0.1 * SIDE**2) / SIDE**2] * 3)


def test_the_probability_changes_are_those_of_the_images_made_by_hand() -> None:
    images, maps = scene(2), corner_maps(2)
    found = measure(images, maps)
    model = CornerModel()
    x0, y0, x1, y1 = zoom_region(maps[0].numpy(), 0.5)[0]
    hidden = images.clone()
    hidden[:, :, y0:y1, x0:x1] = 0.0  # the box, filled with the mean colour
    kept = torch.zeros_like(images)
    kept[:, :, y0:y1, x0:x1] = images[:, :, y0:y1, x0:x1]
    before, after, alone = (model(x).softmax(dim=1) for x in (images, hidden, kept))
    torch.testing.assert_close(found["hide_box_pred_change"], after[:, 0] - before[:, 0])
    torch.testing.assert_close(found["hide_box_true_change"], after[:, 1] - before[:, 1])
    torch.testing.assert_close(found["keep_box_pred_change"], alone[:, 0] - before[:, 0])
    assert found["random_box_pred_change"].abs().max() < 1e-6  # the patch untouched: nothing changes


def test_the_blurred_fill_and_batch_size_give_the_same_outcomes() -> None:
    images, maps = scene(3), corner_maps(3)
    one = measure(images, maps, CounterfactualOptions(fill="blurred"), batch_size=1)
    many = measure(images, maps, CounterfactualOptions(fill="blurred"), batch_size=64)
    for name in one:
        torch.testing.assert_close(one[name], many[name], rtol=1e-4, atol=1e-5)


def test_a_row_without_a_box_is_not_counted() -> None:
    images, maps = scene(2), corner_maps(2)
    maps[1] = 0.0  # an empty map: no zoom box, no top pixels
    found = measure(images, maps)
    assert math.isnan(found["hide_box_flips"][1]) and math.isnan(found["hide_top_flips"][1])
    assert found["hide_box_flips"][0] == 1.0
    rows = [{name: float(value[row]) for name, value in found.items()} for row in range(2)]
    summary = counterfactual_summary(rows)
    assert summary["box"]["wrong"] == 1 and summary["box"]["hidden_to_true"] == 1
    assert summary["box"]["random_to_true"] == 0


def test_a_random_region_keeps_the_masks_shape_and_area_inside_the_image() -> None:
    maps = torch.rand(3, 40, 50)
    masks, found = region_masks(maps, "top", CounterfactualOptions(top_percent=5))
    assert found.all() and masks.flatten(1).sum(dim=1).tolist() == [100] * 3
    box = torch.zeros(1, 40, 50, dtype=torch.bool)
    box[0, 5:15, 20:32] = True
    draws = moved(torch.cat([box, box]), [7, 8], draws=6, seed=0)
    assert draws.shape == (6, 2, 40, 50)
    for drawn in draws.flatten(0, 1):
        ys, xs = torch.nonzero(drawn, as_tuple=True)
        assert len(ys) == 120 and (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (10, 12)
    assert not torch.equal(draws[:, 0], draws[:, 1])  # each sample draws its own places


def test_the_draws_depend_on_the_sample_not_on_its_batch() -> None:
    masks, _ = region_masks(torch.rand(3, 32, 32), "top", CounterfactualOptions())
    together = moved(masks, [4, 9, 2], draws=3, seed=1, wrap=True)
    alone = moved(masks[1:2], [9], draws=3, seed=1, wrap=True)
    assert torch.equal(together[:, 1], alone[:, 0])
    assert not torch.equal(moved(masks, [4, 9, 2], draws=3, seed=2, wrap=True), together)  # the run's seed moves them
    assert (together.flatten(2).sum(dim=2) == masks.flatten(1).sum(dim=1)).all()  # scattered, moved, same count


@pytest.mark.slow
def test_on_the_demo_hiding_the_region_the_maps_point_at_turns_wrong_predictions_right(tmp_path: Path) -> None:
    """The demo model follows a corner mark: hiding what Grad-CAM's and occlusion's maps of its wrong
    predictions point at turns many of them right, far more than hiding a random region of the same shape."""
    result = run(run_config("technique=[gradcam,occlusion]", "selection=incorrect", "dataset.limit=300",
                            "metrics=[counterfactual]", "render.zoom=true"), tmp_path)
    found = result.summary["counterfactual"]["per_technique"]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    for technique in ("gradcam", "occlusion"):
        box = found[technique]["box"]
        # measured on all 600 samples: Grad-CAM 56 of 90 turned right against 3.0 for the control, occlusion
        # 55 of 76 against 2.8
        assert box["hidden_to_true"] >= 0.4 * box["wrong"] and box["hidden_to_true"] >= 2.5 * box["random_to_true"]
        assert box["hidden_pred_change"] < -0.3 < box["random_pred_change"]
        measured = [row for row in rows if row["technique"] == technique and row["hide_box_to_true"]]
        assert len(measured) == box["wrong"]  # the summary counts metrics.csv's rows
        assert sum(float(row["hide_box_to_true"]) for row in measured) == box["hidden_to_true"]
    # only the maps of the predicted class of wrong predictions are measured
    assert all(row["hide_box_flips"] == "" for row in rows if row["target"] == "true")
    report = (tmp_path / "report.html").read_text()
    assert "Does the region cause the prediction?" in report
    gradcam = found["gradcam"]["box"]
    assert (f"gradcam: hiding the box its zoom shows (blurred fill) turns <b>{gradcam['hidden_to_true']} of "
            f"{gradcam['wrong']}</b> wrong predictions right") in report


def test_the_fill_and_the_share_are_checked() -> None:
    with pytest.raises(UserError, match="counterfactual.fill=grey"):
        run_config("counterfactual.fill=grey")
    with pytest.raises(UserError, match="counterfactual.top_percent=0.0 must lie between 0 and 100"):
        run_config("counterfactual.top_percent=0")
