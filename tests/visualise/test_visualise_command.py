"""`cnnvis visualise`: the files and figures each kind writes, its settings kept in the folder's config, and
a user's mistakes as one line with exit code 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cnnvis, run_config
from PIL import Image

from cnnvis_cli.demo.scene import render_scene
from cnnvis_cli.errors import UserError
from cnnvis_cli.visualise.command import spread, visualise


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "objectives.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_class_images_reach_their_class_far_beyond_test_images(tmp_path: Path) -> None:
    cfg = run_config("visualise.steps=96", "visualise.reference=64", "visualise.checks=8")
    summary = visualise(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [row["objective"] for row in rows] == ["class 0 (circle)", "class 1 (square)", "class 2 (triangle)",
                                                  "class 3 (cross)"]
    for row in rows:
        assert float(row["value"]) > 3 * float(row["test_p99"])
        assert float(row["ratio_to_test_p99"]) == pytest.approx(float(row["value"]) / float(row["test_p99"]), 0.01)
        assert float(row["confidence"]) > 0.9  # under the optimisation's random transformations
        picture = np.asarray(Image.open(tmp_path / row["file"]))
        assert picture.shape == (96, 96, 3) and picture.std() > 10
    assert summary["min_ratio_to_test_p99"] > 3 and summary["mean_confidence"] > 0.9
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 4
    assert Image.open(tmp_path / "images.png").width > 4 * 96


def test_channels_with_several_images_each(tmp_path: Path) -> None:
    cfg = run_config("visualise.what=channels", "visualise.layer=features.11", "visualise.units=[3,9]",
                     "visualise.images_per_unit=2", "visualise.steps=48", "visualise.reference=16")
    summary = visualise(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [row["file"] for row in rows] == [f"images/features.11_channel_{unit}_{copy}.png"
                                             for unit in (3, 9) for copy in (0, 1)]
    assert all(row["confidence"] == "" for row in rows)
    assert summary["layer"] == "features.11" and summary["objectives"] == 2 and summary["images"] == 4


def test_dream_and_inversion_of_a_users_image(tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.fromarray(render_scene("test", 3).image).resize((120, 100)).save(picture)
    dreamt = visualise(run_config("visualise.what=dream", f"visualise.image={picture}", "visualise.layer=features.9",
                                  "visualise.octaves=2", "visualise.steps=4"), tmp_path / "dream")
    assert dreamt["image"] == "photo.png" and dreamt["objective_end"] > 5 * dreamt["objective_start"]
    assert {path.name for path in (tmp_path / "dream" / "images").iterdir()} == {"original.png", "dream.png"}
    inverted = visualise(run_config("visualise.what=invert", f"visualise.image={picture}",
                                    "visualise.layers=[features.0,features]", "visualise.steps=100"),
                         tmp_path / "invert")
    rows = _rows(tmp_path / "invert")
    assert [row["objective"] for row in rows] == ["invert at features.0", "invert at features"]
    assert float(rows[0]["correlation"]) > float(rows[1]["correlation"])
    assert inverted["distance_end"][0] < inverted["distance_start"][0] / 10


def test_inversion_layers_spread_from_first_to_last() -> None:
    assert spread(list("abcdefghij"), 4) == ["a", "d", "g", "j"]
    assert spread(list("abc"), 6) == ["a", "b", "c"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["visualise.units=[ellipse]"], "unknown class 'ellipse'"),
    (["visualise.units=[7]"], "class 7 is outside 0..3"),
    (["visualise.what=channels", "visualise.layer=features.11", "visualise.units=[64]"],
     "'64' is not a channel of features.11, which has 64; give indices from 0 to 63"),
    (["visualise.what=channels", "visualise.layer=featurez.11"], "features.11"),
    (["visualise.what=dream", "visualise.image=/no/such.png"], "visualise.image=/no/such.png does not exist"),
])
def test_mistakes_are_one_line_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        visualise(run_config("visualise.reference=0", "visualise.steps=1", *overrides), tmp_path)


def test_a_misspelt_kind_is_refused_before_work() -> None:
    with pytest.raises(UserError, match="visualise.what=channel is not valid; did you mean channels"):
        run_config("visualise.what=channel")


@pytest.mark.slow
def test_the_command_prints_its_folder_and_keeps_its_settings(tmp_path: Path) -> None:
    result = cnnvis("visualise", "visualise.units=[square]", "visualise.steps=8", "visualise.reference=8",
                    "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.parent.parent == (tmp_path / "outputs" / "visualise").resolve()
    assert (folder / "images" / "class_1_square.png").is_file()
    config = (folder / ".hydra" / "config.yaml").read_text()
    assert "  units:\n  - square\n" in config
    assert "seed: 3" in config
    assert "classified as their class" in result.stderr
    folders = set((tmp_path / "outputs" / "visualise").glob("*/*"))
    mistake = cnnvis("visualise", "visualise.what=channels", "visualise.units=[999]", cwd=tmp_path)
    assert mistake.returncode == 2 and mistake.stdout == ""
    assert mistake.stderr.strip().splitlines() == [
        "cnnvis: error: visualise.units: '999' is not a channel of features, which has 64; give indices from 0 to 63"]
    assert set((tmp_path / "outputs" / "visualise").glob("*/*")) == folders  # a mistake leaves no folder behind
