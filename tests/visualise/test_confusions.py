"""analysis=[class_images]: the class images of the frequent confusions and of their channels, in the run's
summary, files and report, reaching their objectives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import run_config
from PIL import Image

from cnnvis_cli.pipeline import run


def test_a_run_shows_the_class_images_of_its_confusions_and_their_channels(tmp_path: Path) -> None:
    result = run(run_config("analysis=[channels,class_images]", "dataset.limit=300", "selection.max_samples=10",
                            "visualise.steps=32", "render.panels=false"), tmp_path)
    found = result.summary["class_images"]
    channels = result.summary["channels"]
    assert found["layer"] == channels["layer"] == "features" and found["steps"] == 32 and found["size"] == 96
    assert [(item["true"], item["predicted"]) for item in found["confusions"]] == \
        [(item["true"], item["predicted"]) for item in channels["confusions"]]
    for drawn, described in zip(found["confusions"], channels["confusions"], strict=True):
        assert [channel["channel"] for channel in drawn["channels"]] == \
            [channel["channel"] for channel in described["channels"]]
        true_class = ["circle", "square", "triangle", "cross"].index(drawn["true"])
        assert drawn["true_image"] == f"patterns/class_images/class_{true_class:04d}.png"
        for path in (drawn["true_image"], drawn["predicted_image"], *(c["image"] for c in drawn["channels"])):
            picture = np.asarray(Image.open(tmp_path / path))
            assert picture.shape == (96, 96, 3) and picture.std() > 10  # an image, not a grey start
        assert all(channel["value"] > 1.0 for channel in drawn["channels"])  # the channels were driven
    report = (tmp_path / "report.html").read_text()
    assert "What the model has learned: class images of the confusions" in report
    assert f'src="{found["confusions"][0]["predicted_image"]}"' in report


def test_a_run_without_a_frequent_confusion_says_so(tmp_path: Path) -> None:
    result = run(run_config("analysis=[class_images]", "dataset.limit=12", "visualise.steps=4",
                            "render.panels=false"), tmp_path)
    assert result.summary["class_images"] == {"layer": "features", "size": 96, "steps": 4, "confusions": []}
    assert "No confusion has 3 or more wrong predictions." in (tmp_path / "report.html").read_text()
