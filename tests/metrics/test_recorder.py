"""Metrics in a run: every map scored, streamed to metrics.csv, averaged per technique in summary.json."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import run_config

from cnnvis_cli.errors import UserError
from cnnvis_cli.metrics import MetricRecorder, finished_rows
from cnnvis_cli.models import Preprocess
from cnnvis_cli.pipeline import run
from cnnvis_cli.run_dir import RunDir

ALL = "metrics=[deletion,insertion,drop,pointing,energy]"


@pytest.mark.slow
def test_every_map_is_scored_and_averaged(tmp_path: Path) -> None:
    result = run(run_config("dataset.limit=150", "technique=[gradcam,eigencam]", ALL, "metrics_steps=5"), tmp_path)
    with (tmp_path / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == result.summary["heatmaps"] > 0
    assert {"deletion_auc", "insertion_auc", "drop", "increase", "pointing_object", "pointing_cue", "nearer_cue",
            "energy_object", "energy_cue"} <= set(rows[0])
    per_technique = result.summary["metrics"]["per_technique"]
    for technique in ("gradcam", "eigencam"):
        mine = [row for row in rows if row["technique"] == technique]
        averages = per_technique[technique]["all maps"]
        assert averages["maps"] == len(mine)
        deletion = [float(row["deletion_auc"]) for row in mine]
        assert averages["deletion_auc"] == pytest.approx(sum(deletion) / len(deletion), abs=1e-4)
        assert all(0 <= value <= 1 for value in deletion)
        wrong = per_technique[technique]["predicted class, wrong"]
        assert wrong["maps"] == sum(row["correct"] == "0" and "pred" in row["target"] for row in mine)


def test_no_metrics_no_file(tmp_path: Path) -> None:
    result = run(run_config("dataset.limit=30"), tmp_path)
    assert not (tmp_path / "metrics.csv").exists() and "metrics" not in result.summary


def test_an_unknown_metric_names_the_close_one() -> None:
    with pytest.raises(UserError, match="unknown metric 'delition'; did you mean deletion"):
        run_config("metrics=[delition]")


@pytest.mark.slow
def test_on_the_shipped_demo_the_maps_of_wrong_predictions_point_at_the_cue(tmp_path: Path) -> None:
    """The demo model follows a corner mark; Grad-CAM's, Score-CAM's and occlusion's maps of its wrong
    predictions must say so, and those of its right predictions must not."""
    args = ("targets=[pred]", "metrics=[pointing,energy]", "render.panels=false", "report=false")
    wrong = run(run_config("technique=[gradcam,scorecam,occlusion]", "selection=incorrect", *args), tmp_path / "wrong")
    other = run(run_config("technique=[scorecam,occlusion]", "technique.scorecam.subtract_baseline=false",
                           "technique.occlusion.fill=black", "selection=incorrect", *args), tmp_path / "other")
    every = run(run_config("technique=[gradcam,scorecam,occlusion]", "selection.criteria=[all]", "dataset.limit=150",
                           *args), tmp_path / "every")
    gradcam, scorecam, occlusion, scorecam_authors, occlusion_black = (
        result.summary["metrics"]["per_technique"][technique]["predicted class, wrong"]
        for result, technique in ((wrong, "gradcam"), (wrong, "scorecam"), (wrong, "occlusion"),
                                  (other, "scorecam"), (other, "occlusion")))
    assert gradcam["maps"] == scorecam["maps"] == occlusion["maps"] == scorecam_authors["maps"] == 90
    # measured: 0.733 / 0.933, 0.711 / 0.844, 0.854 / 0.944; Score-CAM without the baseline 0.533 / 0.700;
    # occlusion with a black window 0.279 / 0.233
    assert gradcam["nearer_cue"] >= 0.7 and gradcam["denser_cue"] >= 0.9
    assert scorecam["nearer_cue"] >= 0.68 and scorecam["denser_cue"] >= 0.8
    assert occlusion["nearer_cue"] >= 0.8 and occlusion["denser_cue"] >= 0.9
    assert scorecam_authors["denser_cue"] >= 0.65
    assert occlusion_black["denser_cue"] < 0.5
    # (nearer, denser, pointing game on the object) measured over all 510 correct predictions: 0.049, 0.063,
    # 0.943; 0.043, 0.055, 0.949; 0.077, 0.105, 0.775
    for technique, nearer, denser, on_object in (("gradcam", 0.1, 0.1, 0.9), ("scorecam", 0.1, 0.1, 0.9),
                                                 ("occlusion", 0.1, 0.15, 0.7)):
        right = every.summary["metrics"]["per_technique"][technique]["predicted class, correct"]
        assert right["maps"] > 100 and right["nearer_cue"] < nearer and right["denser_cue"] < denser
        assert right["pointing_object"] > on_object


def test_boxes_of_an_image_folder_score_the_pointing_game(tmp_path: Path) -> None:
    from helpers import write_image_folder

    folder = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(96, 96))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\ncat/img_0.png,0,0,96,96\ncat/img_1.png,0,0,1,1\n")
    result = run(run_config("dataset=imagefolder", f"dataset.root={folder}", f"dataset.boxes={boxes}",
                            "dataset.num_workers=0",
                            "selection.criteria=[all]", "targets=[pred]", "metrics=[pointing,energy]"),
                 tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open(newline="") as file:
        rows = {row["sample_id"]: row for row in csv.DictReader(file)}
    assert float(rows["cat/img_0.png"]["pointing_object"]) == 1.0  # the box is the whole image
    assert float(rows["cat/img_0.png"]["energy_object"]) == pytest.approx(1.0)
    assert float(rows["cat/img_1.png"]["energy_object"]) < 0.05  # one pixel of 96 x 96
    assert rows["dog/img_0.png"]["pointing_object"] == ""  # no box, no score
    assert "pointing_cue" not in rows["cat/img_0.png"]
    assert result.summary["metrics"]["per_technique"]["gradcam"]["all maps"]["pointing_object"] in (0.5, 1.0)


def test_rows_read_back_for_a_resumed_run_give_the_same_averages(tmp_path: Path) -> None:
    header = MetricRecorder.header(["deletion", "pointing"], has_cue=False)
    assert header[6:] == ["deletion_auc", "pointing_object"]
    lines = [["3", "a.png", "gradcam", "pred", "oak", "1", "0.200000", "1.000000"],
             ["3", "a.png", "gradcam", "true", "elm", "1", "0.400000", ""],  # no box: no pointing
             ["5", "b.png", "gradcam", "pred+top1", "elm", "0", "0.600000", "0.000000"],
             ["7", "c.png", "gradcam", "pred", "oak", "", "0.100000", "1.000000"]]  # unlabelled
    with (tmp_path / "metrics.csv.partial").open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([header, *lines])
        file.write("8,d.png,gradcam,pr")  # the line a kill cut short
    read = finished_rows(tmp_path, header)
    assert read == {3: lines[:2], 5: lines[2:3], 7: lines[3:]}
    assert finished_rows(tmp_path, header[:-1]) == {}  # another run's columns: nothing reused
    assert finished_rows(tmp_path / "elsewhere", header) == {}

    out = RunDir(tmp_path / "resumed")
    with out.csv_stream("metrics.csv", header) as stream:
        recorder = MetricRecorder(["deletion", "pointing"], 4, Preprocess(64, 56, (0.5,) * 3, (0.5,) * 3), 8, stream,
                                  has_cue=False)
        recorder.keep([line for index in sorted(read) for line in read[index]])
    averages = recorder.summary()["gradcam"]
    assert averages["all maps"] == {"maps": 4, "deletion_auc": 0.325, "pointing_object": pytest.approx(2 / 3, abs=1e-4)}
    assert averages["predicted class, correct"] == {"maps": 1, "deletion_auc": 0.2, "pointing_object": 1.0}
    assert averages["predicted class, wrong"] == {"maps": 1, "deletion_auc": 0.6, "pointing_object": 0.0}
    assert finished_rows(out.root, header) == read  # written back whole, in the file the run finishes
