from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_config, write_image_folder

from cnnvis_cli.cli import prepare_overrides
from cnnvis_cli.data import ImageFolderSource, SampleSet
from cnnvis_cli.errors import UserError
from cnnvis_cli.inference import normalise
from cnnvis_cli.models import imagenet_class_names, load_model

timm = pytest.importorskip("timm")

# a ViT (bicubic, crop 0.9), timm's ResNet-D recipe (bicubic, crop 0.95, 176 px), a ConvNeXt (crop 0.875)
DATA_CONFIGS = ["deit_tiny_patch16_224", "resnet10t.c3_in1k", "convnext_atto"]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_model_input_is_what_timms_own_transform_makes(name: str, tmp_path: Path) -> None:
    """Preprocessing comes from the model's data config: the tensor the model gets equals
    `timm.data.create_transform(**resolve_model_data_config(model))` of the same image."""
    loaded = load_model(run_config("model=timm", f"model.name={name}", "model.weights=null").model)
    preprocess = loaded.preprocess
    root = write_image_folder(tmp_path / "images", {"a": 1}, size=(300, 411))
    source = ImageFolderSource(root, [".png"])
    ours = normalise(SampleSet(source, preprocess, [0])[0][0][None], preprocess)[0]
    config = timm.data.resolve_model_data_config(loaded.module)
    theirs = timm.data.create_transform(**config)(source.load(0).image)
    assert ours.shape == theirs.shape == (3, preprocess.input_size, preprocess.input_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_timm_model_is_built_with_its_classes_and_overrides() -> None:
    loaded = load_model(run_config("model=timm", "model.name=deit_tiny_patch16_224", "model.weights=null").model)
    assert loaded.num_classes == 1000 and loaded.class_names == imagenet_class_names()
    assert loaded.preprocess.interpolation == "bicubic" and loaded.preprocess.resize_size == 248  # 224 / 0.9
    assert loaded.target_layer == "blocks.11.norm1"
    assert not loaded.module.training and not any(p.requires_grad for p in loaded.module.parameters())
    small = load_model(run_config("model=timm", "model.name=deit_tiny_patch16_224", "model.weights=null",
                                  "model.input_size=64", "model.num_classes=3", "model.class_names=[a,b,c]").model)
    assert small.num_classes == 3 and small.class_names == ["a", "b", "c"]
    assert small.preprocess.input_size == 64 and small.preprocess.resize_size == 71  # floor(64 / 0.9)
    assert next(layer for layer in small.layers if layer.name == small.target_layer).shape == (192, 4, 4)


def test_architecture_options_reach_timm() -> None:
    overrides = prepare_overrides(["model=timm", "model.name=vit_tiny_patch16_224", "model.weights=null",
                                   "model.kwargs={img_size: 48, patch_size: 12, depth: 2}", "model.num_classes=4"])
    loaded = load_model(run_config(*overrides).model)
    assert len(loaded.module.blocks) == 2 and loaded.module.patch_embed.patch_size == (12, 12)
    assert loaded.preprocess.input_size == 48 and loaded.target_layer == "blocks.1.norm1"
    assert next(layer for layer in loaded.layers if layer.name == loaded.target_layer).shape == (192, 4, 4)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.name=deit_tiny_patch16_22"], "unknown timm model 'deit_tiny_patch16_22'; did you mean "
                                          "deit_tiny_patch16_224"),
    (["model.name=resnet18", "model.weights=DEFAULT"], "a timm model takes model.weights=pretrained or null"),
    (["model.name=resnet18", "model.factory=a.b:c"], "model=resnet18 does not use model.factory: it is for "
                                                     "model=custom"),
    (["model.name=resnet18", "model.kwargs={drop_rate: 0.1, no_such_option: 1}"],
     "timm model resnet18 cannot be built with .*no_such_option"),
])
def test_timm_mistakes_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_model(run_config(*prepare_overrides(["model=timm", *overrides])).model)


def test_weights_that_cannot_be_fetched_say_how_to_give_a_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an empty cache, and no network asked
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"could not fetch timm's weights for deit_tiny_patch16_224 .*"
                                        r"model.checkpoint=PATH .* model.weights=null"):
        load_model(run_config("model=timm", "model.name=deit_tiny_patch16_224").model)


def test_a_checkpoint_replaces_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    path = tmp_path / "fine_tuned.pth"
    torch.save(trained.state_dict(), path)
    loaded = load_model(run_config("model=timm", "model.name=resnet10t", f"model.checkpoint={path}",
                                   "model.num_classes=2", "model.class_names=[cat,dog]").model)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.module(images), trained.eval()(images))


def test_without_timm_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UserError, match=r"model=timm needs the timm package: pip install 'cnnvis\[timm\]'"):
        run_config("model=timm", "model.name=resnet18")


@pytest.mark.parametrize(("name", "layer"), [("deit_tiny_patch16_224", "blocks.11.norm1"), ("resnet10t", "layer4")])
def test_a_timm_transformer_and_cnn_run_end_to_end(name: str, layer: str, tmp_path: Path) -> None:
    from cnnvis_cli.pipeline import run

    images = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 1}, size=(80, 96))
    cfg = run_config("model=timm", f"model.name={name}", "model.weights=null", "model.input_size=64",
                     "dataset=imagefolder", f"dataset.root={images}", "dataset.num_workers=0",
                     "selection.criteria=[all]", "targets=[pred]", "technique=[gradcam,eigencam]", "save_maps=true")
    result = run(cfg, tmp_path / "run")
    out = tmp_path / "run"
    assert result.summary["samples"] == 3 and result.summary["heatmaps"] == 6
    assert result.summary["model"]["target_layers"] == [layer]
    for technique in ("gradcam", "eigencam"):
        maps = [np.load(path) for path in sorted((out / "maps" / technique).glob("*.npy"))]
        assert len(maps) == 3 and all(m.shape == (64, 64) and np.ptp(m) > 0 for m in maps)  # not blank
    assert len(list((out / "panels").glob("*.png"))) == 3
    assert (out / "report.html").is_file()
