"""The whole run, called as Python (no subprocess): config -> run directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_config, write_image_folder
from PIL import Image

from cnnvis_cli.cli import config_dir
from cnnvis_cli.errors import UserError
from cnnvis_cli.pipeline import run

TORCHVISION_OPTIONS = sorted(
    path.stem for path in (config_dir() / "model").glob("*.yaml")
    if "source: torchvision" in path.read_text() and path.stem != "torchvision"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
@pytest.mark.parametrize("model", TORCHVISION_OPTIONS)
def test_every_shipped_model_runs_over_an_image_folder(model: str, image_folder: Path, tmp_path: Path) -> None:
    cfg = run_config(f"model={model}", "model.weights=null", "dataset=imagefolder", f"dataset.root={image_folder}",
                     "dataset.num_workers=0", "selection.criteria=[low_confidence]", "selection.threshold=1.0",
                     "targets=[pred,top2]")
    result = run(cfg, tmp_path / "run")
    predictions = read_csv(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == 5 and {row["sample_id"].split("/")[0] for row in predictions} == {"cat", "dog"}
    assert len(read_csv(tmp_path / "run" / "selected.csv")) == 5
    overlays = sorted((tmp_path / "run" / "heatmaps" / "gradcam").glob("*.png"))
    assert len(overlays) == 10 == result.summary["heatmaps"]  # pred and the runner-up for each sample
    assert result.summary["dataset_classes_not_in_model"] == ["cat", "dog"]  # not ImageNet class names
    assert result.summary["labelled"] == 0 and result.summary["accuracy"] is None
    image = cv2.imread(str(overlays[0]))
    assert image.shape == (224, 224, 3)


@pytest.mark.slow
def test_demo_run_writes_every_artefact(tmp_path: Path) -> None:
    cfg = run_config("dataset.limit=120", "technique=[gradcam,scorecam]", "technique.max_channels=8",
                     "save_maps=true")
    result = run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    predictions = read_csv(tmp_path / "predictions.csv")
    selected = read_csv(tmp_path / "selected.csv")
    assert len(predictions) == 120 == summary["samples"]
    assert {"object_box", "cue_box", "cue_class"} <= set(predictions[0])
    wrong = sum(row["correct"] == "0" for row in predictions)
    assert summary["accuracy"] == pytest.approx(1 - wrong / 120)
    assert summary["selection"]["matched"]["incorrect"] == wrong
    assert 0 < len(selected) == summary["selection"]["selected"]
    for row in selected:
        stem = f"{int(row['index']):06d}-"
        for technique in ("gradcam", "scorecam"):
            overlays = list((tmp_path / "heatmaps" / technique).glob(f"{stem}*"))
            targets = {row["predicted_name"], row["label_name"]}
            assert {p.name.split("__target-")[1][:-4] for p in overlays} == targets
            for overlay in overlays:
                raw = np.load(tmp_path / "maps" / technique / overlay.with_suffix(".npy").name)
                assert raw.shape == (96, 96) and raw.dtype == np.float32 and raw.min() >= 0 and raw.max() <= 1
    assert summary["heatmaps"] == sum(len(record["overlays"]) for record in result.records)
    assert set(summary["seconds"]) == {"setup", "inference", "selection", "explanation", "report", "total"}


def test_runs_are_deterministic(tmp_path: Path) -> None:
    cfg = run_config("dataset.limit=60", "save_maps=true")
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    for name in ("predictions.csv", "selected.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for first in (tmp_path / "a" / "maps").rglob("*.npy"):
        np.testing.assert_array_equal(np.load(first), np.load(tmp_path / "b" / first.relative_to(tmp_path / "a")))


def test_empty_selection_is_a_normal_outcome(tmp_path: Path) -> None:
    cfg = run_config("dataset.limit=20", "selection.criteria=[low_confidence]", "selection.threshold=0.0")
    result = run(cfg, tmp_path)
    assert result.summary["selection"]["selected"] == 0 and result.summary["heatmaps"] == 0
    assert len(read_csv(tmp_path / "selected.csv")) == 0 and not (tmp_path / "heatmaps").exists()


def test_unreadable_images_are_skipped_listed_and_counted(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "broken.png").write_bytes(b"not a png")
    cfg = run_config("model=resnet18", "model.weights=null", "dataset=imagefolder", f"dataset.root={image_folder}",
                     "dataset.num_workers=0", "model.input_size=64", "model.resize_size=64")
    result = run(cfg, tmp_path)
    assert result.summary["unreadable"] == 1 and result.summary["samples"] == 5
    errors = read_csv(tmp_path / "errors.csv")
    assert [row["sample_id"] for row in errors] == ["cat/broken.png"] and errors[0]["reason"]


def test_named_target_class_that_the_model_lacks_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown target 'dishwasher'"):
        run(run_config("targets=[pred,dishwasher]"), tmp_path)


def test_dataset_classes_beyond_the_model_outputs_are_a_user_error(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cow").mkdir()
    (image_folder / "dog" / "img_0.png").rename(image_folder / "cow" / "img_0.png")
    cfg = run_config("model=resnet18", "model.weights=null", "model.num_classes=2", "dataset=imagefolder",
                     f"dataset.root={image_folder}")
    with pytest.raises(UserError, match="the dataset has 3 classes but the model 2 outputs and no class names"):
        run(cfg, tmp_path)


def test_file_list_label_beyond_the_model_is_a_user_error(image_folder: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image_folder}/cat/img_0.png,7\n")
    cfg = run_config("model=resnet18", "model.weights=null", "model.num_classes=3", "dataset=files",
                     f"dataset.list_file={listing}")
    with pytest.raises(UserError, match=r"the dataset has label 7 but only labels 0..2 fit the model"):
        run(cfg, tmp_path / "run")


def test_unlabelled_images_with_only_true_targets_give_no_heatmaps(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat", {"": 0})
    for index in range(3):
        Image.new("RGB", (40, 40), (index * 60, 10, 10)).save(tmp_path / "flat" / f"{index}.png")
    cfg = run_config("model=resnet18", "model.weights=null", "model.input_size=64", "model.resize_size=64",
                     "dataset=imagefolder", f"dataset.root={tmp_path / 'flat'}", "dataset.num_workers=0",
                     "selection.criteria=[low_confidence]", "selection.threshold=1.0", "targets=[true]")
    result = run(cfg, tmp_path / "run")
    assert result.summary["selection"]["selected"] == 3 and result.summary["heatmaps"] == 0


@pytest.mark.parametrize(("layers", "message"), [
    ("[layer9]", r"unknown target layer 'layer9'; did you mean layer\d"),
    ("[fc]", r"layer 'fc' has no spatial output"),
])
def test_bad_technique_layers_are_user_errors_before_inference(layers: str, message: str, tmp_path: Path) -> None:
    cfg = run_config("model=resnet18", "model.weights=null", f"technique.layers={layers}")
    with pytest.raises(UserError, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "predictions.csv").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=mobilenet_v3_large", "technique=lrp"], r"lrp handles models built from .*Hardswish"),
    (["model=convnext_tiny", "technique=guided_backprop"], r"guided_backprop needs a model with ReLU activations"),
    (["model=mobilenet_v3_large", "technique=lrp", "technique.smooth.samples=2"], r"lrp handles models built from"),
])
def test_a_technique_that_cannot_explain_the_model_is_refused_before_inference(
        overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = run_config("model.weights=null", *overrides)
    with pytest.raises(UserError, match=message):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "predictions.csv").exists()


@pytest.mark.slow
def test_every_technique_runs_on_the_demo_and_signed_ones_save_signed_maps(tmp_path: Path) -> None:
    from cnnvis_cli.techniques import TECHNIQUES
    from cnnvis_cli.techniques.attention import AttentionTechnique

    # every technique that explains a CNN (the attention techniques read a transformer's: test_attention.py)
    cnn_techniques = [name for name, technique in TECHNIQUES.items() if not issubclass(technique, AttentionTechnique)]
    cfg = run_config("dataset.limit=60", f"technique=[{','.join(cnn_techniques)}]", "technique.max_channels=8",
                     "technique.rise.masks=50", "technique.integrated_gradients.steps=8", "save_maps=true",
                     "selection.max_samples=4", "technique.smooth.samples=2")
    result = run(cfg, tmp_path)
    smoothed = {"saliency", "gradient_x_input", "guided_backprop", "guided_gradcam", "integrated_gradients", "lrp"}
    names = [f"{name}_smooth" if name in smoothed else name for name in cnn_techniques]
    assert result.summary["techniques"] == names
    assert set(result.summary["signed_techniques"]) == {f"{name}_smooth" for name in smoothed} | {"occlusion"}
    for name in names:
        overlays = sorted((tmp_path / "heatmaps" / name).glob("*.png"))
        maps = [np.load(path) for path in sorted((tmp_path / "maps" / name).glob("*.npy"))]
        assert len(overlays) == len(maps) > 0
        assert all(m.shape == (96, 96) and np.isfinite(m).all() for m in maps)
        if name in result.summary["signed_techniques"]:
            assert any(m.min() < 0 for m in maps)  # the signed map, not its [0, 1] heat
        else:
            assert all(m.min() >= 0 and m.max() <= 1 for m in maps)


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", b"\x93NUMPY not an archive"])
def test_a_resume_whose_stored_predictions_cannot_be_read_predicts_again(damage: bytes, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "run"
    whole = run(run_config("dataset.limit=30"), folder)
    expected = (folder / "predictions.csv").read_bytes()
    (folder / "predictions.npz").write_bytes(damage)
    with caplog.at_level("WARNING", logger="cnnvis"):
        resumed = run(run_config("dataset.limit=30", f"resume={folder}"), folder)
    assert "the run's predictions.npz cannot be read" in caplog.text
    assert resumed.summary["samples"] == whole.summary["samples"] == 30
    assert (folder / "predictions.csv").read_bytes() == expected
