"""`cnnvis export RUN_DIR --to fiftyone`: the exported dataset, loaded back from FiftyOne's database, holds
every sample with its labels, prediction, reasons and the run's saved maps."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cnnvis

from cnnvis_cli.errors import UserError


@pytest.fixture(scope="module")
def fiftyone(tmp_path_factory: pytest.TempPathFactory):
    """FiftyOne with a database of this module's own, no usage tracking; the command's processes share it."""
    folder = tmp_path_factory.mktemp("fiftyone")
    os.environ.update(FIFTYONE_DATABASE_DIR=str(folder / "db"), FIFTYONE_DO_NOT_TRACK="true",
                      FIFTYONE_DATABASE_VALIDATION="false")
    return pytest.importorskip("fiftyone")


@pytest.mark.slow  # FiftyOne starts its database: seconds
def test_a_run_round_trips_through_fiftyone(fiftyone, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    made = cnnvis("run", "dataset.limit=80", "save_maps=true", "technique=[gradcam,gradient_x_input]",
                  "targets=[pred,true,contrast]", "render.panels=false", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    exported = cnnvis("export", str(folder), "--to", "fiftyone", "--name", "round-trip", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == "round-trip"
    dataset = fiftyone.load_dataset("round-trip")
    with open(folder / "predictions.csv", newline="") as handle:
        predictions = {int(row["index"]): row for row in csv.DictReader(handle)}
    with open(folder / "selected.csv", newline="") as handle:
        selected = {int(row["index"]): row for row in csv.DictReader(handle)}
    assert len(dataset) == len(predictions) == 80
    assert dataset.count_values("tags") == {
        reason: sum(reason in row["reasons"].split("|") for row in selected.values())
        for reason in {reason for row in selected.values() for reason in row["reasons"].split("|")}}
    for sample in dataset:
        row = predictions[sample["index"]]
        assert sample.ground_truth.label == row["label_name"]
        assert sample.prediction.label == row["predicted_name"]
        assert sample.prediction.confidence == pytest.approx(float(row["confidence"]))
        assert sample.correct == (row["correct"] == "1") and sample.selected == (sample["index"] in selected)
        assert Path(sample.filepath).is_file()
    wrong = next(index for index, row in selected.items() if "incorrect" in row["reasons"])
    sample = dataset.match(fiftyone.ViewField("index") == wrong).first()
    row = predictions[wrong]
    stem = f"{wrong:06d}-{Path(row['sample_id']).stem}__true-{row['label_name']}__target-"
    for field, target in (("gradcam_pred", row["predicted_name"]), ("gradcam_true", row["label_name"]),
                          ("gradcam_contrast", f"{row['predicted_name']}_vs_{row['label_name']}")):
        assert np.array_equal(sample[field].map, np.load(folder / "maps" / "gradcam" / f"{stem}{target}.npy"))
        assert sample[field].range == [0.0, 1.0]
    signed = sample["gradient_x_input_pred"]
    assert signed.range[0] == -signed.range[1] and signed.range[1] == pytest.approx(float(np.abs(signed.map).max()))
    again = cnnvis("export", str(folder), "--to", "fiftyone", "--name", "round-trip", cwd=tmp_path)
    assert again.returncode == 2
    assert "already has a dataset named round-trip" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_refused(fiftyone, tmp_path: Path) -> None:
    from cnnvis_cli.export import export_to_fiftyone

    with pytest.raises(UserError, match="is not a finished cnnvis run directory"):
        export_to_fiftyone(tmp_path)


@pytest.mark.parametrize(("target", "fields"), [
    ("Egyptian_cat", ["gradcam_pred"]),
    ("tabby", ["gradcam_true"]),
    ("Egyptian_cat_vs_tabby", ["gradcam_contrast"]),
    ("dishwasher", ["gradcam_class_dishwasher"]),
])
def test_each_saved_map_becomes_the_field_of_its_role(tmp_path: Path, target: str, fields: list[str]) -> None:
    from cnnvis_cli.export import _heatmap_fields, saved_maps

    folder = tmp_path / "maps" / "gradcam"
    folder.mkdir(parents=True)
    np.save(folder / f"000042-img_7__true-tabby__target-{target}.npy", np.full((4, 4), 0.5, np.float32))
    found = saved_maps(tmp_path)
    assert list(found) == [42] and found[42][0][:2] == ("gradcam", target)
    row = {"predicted_name": "Egyptian cat", "label_name": "tabby"}
    assert list(_heatmap_fields(found[42], row)) == fields
    if target == "tabby":  # a right prediction's one map is both its predicted and its true class's
        both = _heatmap_fields(found[42], {"predicted_name": "tabby", "label_name": "tabby"})
        assert list(both) == ["gradcam_pred", "gradcam_true"]


def test_a_wrong_export_command_is_one_line_with_the_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cnnvis_cli.cli import main

    assert main(["export", str(tmp_path), "--to", "parquet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("cnnvis: error: argument --to: invalid choice: 'parquet'")
    assert error[0].endswith("; usage: cnnvis export RUN_DIR --to fiftyone [--name NAME] [--overwrite]")
