"""One forward pass for inference and the CAMs when every sample is explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import count_passes, run_config

from cnnvis_cli import pipeline
from cnnvis_cli.config import SelectionConfig
from cnnvis_cli.fused import KEPT_BUDGET, KEPT_FILE, kept_from_bytes, shares_forward, takes_every_sample, worth_sharing
from cnnvis_cli.techniques import TechniqueContext, build_technique

EVERY = ["selection.criteria=[all]", "selection.max_samples=null"]


@pytest.mark.parametrize(("selection", "count", "expected"), [
    (SelectionConfig(criteria=["all"], max_samples=None), 10, True),
    (SelectionConfig(criteria=["all"], max_samples=10), 10, True),
    (SelectionConfig(criteria=["all"], max_samples=9), 10, False),  # a cap picks by confidence
    (SelectionConfig(criteria=["incorrect", "all"], max_samples=None), 10, True),  # any: all wins
    (SelectionConfig(criteria=["incorrect", "all"], mode="all", max_samples=None), 10, False),
    (SelectionConfig(criteria=["all"], max_samples=None, per_class_max=3), 10, False),
    (SelectionConfig(criteria=["incorrect", "low_confidence"], max_samples=None), 10, False),
])
def test_the_shared_pass_is_for_selections_that_take_every_sample(selection: SelectionConfig, count: int,
                                                                  expected: bool) -> None:
    assert takes_every_sample(selection, count) is expected


def test_the_shared_pass_is_for_one_pass_cams_on_the_same_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))

    def built(*names: str, layers: tuple[str, ...] = ("2",)):
        return [build_technique(name, TechniqueContext(model, list(layers))) for name in names]

    assert shares_forward(built("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam"))
    assert not shares_forward(built("gradcam", "scorecam"))  # Score-CAM runs many more passes
    assert not shares_forward(built("saliency"))
    assert not shares_forward(built("gradcam") + built("layercam", layers=("0",)))
    assert not shares_forward([])


def test_the_shared_pass_keeps_its_maps_within_a_memory_budget() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    cams = [build_technique("gradcam", TechniqueContext(model, ["0"]))]
    every = SelectionConfig(criteria=["all"], max_samples=None)
    # pred + top3: 4 maps per sample of 7 x 7 values, 4 bytes each
    fits = KEPT_BUDGET // (4 * 49 * 4)
    assert worth_sharing(every, fits, cams, ["pred", "top3"], 49, amp_on_gpu=False)
    assert not worth_sharing(every, fits + 1, cams, ["pred", "top3"], 49, amp_on_gpu=False)
    assert not worth_sharing(every, 10, cams, ["pred"], 49, amp_on_gpu=True)  # the CAMs stay in float32


def maps_of(folder: Path) -> dict[str, np.ndarray]:
    return {str(path.relative_to(folder)): np.load(path) for path in sorted((folder / "maps").rglob("*.npy"))}


def test_when_every_sample_is_explained_one_pass_serves_both_stages(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    passes = count_passes(monkeypatch)
    settings = ["dataset.limit=50", "dataset.batch_size=16", "technique=[gradcam,layercam,eigencam]",
                "targets=[pred,true,top2]", "save_maps=true", "cache=null", *EVERY]
    fused = pipeline.run(run_config(*settings), tmp_path / "fused")
    monkeypatch.setattr(pipeline, "worth_sharing", lambda *_: False)  # the two-pass schedule
    separate = pipeline.run(run_config(*settings), tmp_path / "separate")
    assert fused.summary["maps_from_inference_pass"] and not separate.summary["maps_from_inference_pass"]
    # 50 images in passes of 16: 4 passes; the separate schedule runs each technique again on each batch
    assert passes == [4, 4 + 4 * 3]
    fused_maps, separate_maps = maps_of(tmp_path / "fused"), maps_of(tmp_path / "separate")
    assert len(fused_maps) == fused.summary["heatmaps"] > 0 and fused_maps.keys() == separate_maps.keys()
    for name, values in fused_maps.items():  # passes of other batch shapes may round differently
        np.testing.assert_allclose(values, separate_maps[name], atol=1e-5, err_msg=name)
    assert (tmp_path / "fused" / "predictions.csv").read_bytes() == \
        (tmp_path / "separate" / "predictions.csv").read_bytes()


def test_a_resumed_run_draws_from_the_maps_the_first_run_kept(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ["dataset.limit=30", "technique=[gradcam]", "save_maps=true", "cache=null", *EVERY]
    folder = tmp_path / "run"
    pipeline.run(run_config(*settings), folder)
    written = maps_of(folder)
    overlays = sorted((folder / "heatmaps" / "gradcam").glob("*.png"))
    expected = {path: path.read_bytes() for path in overlays[:10]}
    for path in expected:  # as if the first run had stopped before these
        path.unlink()
    (folder / "maps" / "gradcam" / f"{next(iter(expected)).stem}.npy").unlink()
    passes = count_passes(monkeypatch)
    resumed = pipeline.run(run_config(*settings, f"resume={folder}"), folder)
    assert resumed.summary["maps_from_inference_pass"]
    assert passes == [0]  # predictions and maps both read back
    assert {path: path.read_bytes() for path in expected} == expected
    assert maps_of(folder).keys() == written.keys()


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut short", b"not an archive"])
def test_kept_maps_that_cannot_be_read_are_computed_again(damage: bytes) -> None:
    assert kept_from_bytes(damage) is None


def test_a_resume_whose_kept_maps_cannot_be_read_computes_them_again(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = ["dataset.limit=12", "cache=null", *EVERY]
    pipeline.run(run_config(*settings), tmp_path)
    (tmp_path / KEPT_FILE).write_bytes(b"PK\x03\x04 cut short")
    overlay = sorted((tmp_path / "heatmaps" / "gradcam").glob("*.png"))[0]
    overlay.unlink()
    with caplog.at_level("WARNING", logger="cnnvis"):
        resumed = pipeline.run(run_config(*settings, f"resume={tmp_path}"), tmp_path)
    assert f"the run's {KEPT_FILE} cannot be read; its maps are computed again" in caplog.text
    assert overlay.is_file() and not resumed.summary["maps_from_inference_pass"]


def test_the_kept_maps_file_is_in_the_run_directory(tmp_path: Path) -> None:
    pipeline.run(run_config("dataset.limit=10", "cache=null", *EVERY), tmp_path)
    kept = kept_from_bytes((tmp_path / KEPT_FILE).read_bytes())
    assert kept is not None and len(kept["gradcam"]) >= 10
