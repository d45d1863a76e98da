from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_config

from cnnvis_cli.checks import load_run_config
from cnnvis_cli.cli import compose, config_dir
from cnnvis_cli.errors import UserError

REQUIRED = {  # keys that an option leaves for the user to fill
    ("model", "torchvision"): ["model.name=resnet18"],
    ("model", "timm"): ["model.name=resnet18"],
    ("model", "custom"): ["model.factory=torchvision.models:resnet18"],
    ("dataset", "imagefolder"): ["dataset.root=/data"],
    ("dataset", "files"): ["dataset.list_file=-"],
}
OPTIONS = [(group, path.stem) for group in ("model", "dataset", "selection", "technique")
           for path in sorted((config_dir() / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes_and_validates(group: str, option: str) -> None:
    cfg = run_config(f"{group}={option}", *REQUIRED.get((group, option), []))
    if group == "technique" and option == "smoothgrad":  # a preset: smoothed vanilla gradients
        assert (cfg.techniques, cfg.technique.smooth.samples) == (["saliency"], 25)
    elif group == "technique":
        assert cfg.techniques == [option]
    elif group in ("model", "dataset"):
        assert getattr(cfg, group).name in (option, "resnet18") or option in ("custom",)


def test_shipped_model_options_cover_the_promised_architectures() -> None:
    shipped = {path.stem for path in (config_dir() / "model").glob("*.yaml")}
    assert {"alexnet", "vgg16", "vgg19_bn", "resnet18", "resnet50", "densenet121", "mobilenet_v3_large",
            "efficientnet_b0", "convnext_tiny", "custom", "demo"} <= shipped


def test_defaults_are_the_offline_demo_with_gradcam() -> None:
    cfg = run_config()
    assert (cfg.model.source, cfg.dataset.name, cfg.techniques) == ("demo", "demo", ["gradcam"])
    assert cfg.targets == ["pred", "true"]


def test_several_techniques_in_one_run_keep_their_order() -> None:
    assert run_config("technique=[scorecam,gradcam]").techniques == ["scorecam", "gradcam"]


def test_unknown_group_option_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown model 'vgg17'; did you mean vgg16"):
        compose(["model=vgg17"])


def test_unknown_key_in_override_suggests_the_right_key() -> None:
    with pytest.raises(UserError, match=r"unknown config key 'selection.treshold'; did you mean selection.threshold"):
        compose(["selection.treshold=0.3"])


def test_users_own_option_file_is_found_and_checked_by_the_schema(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("source: torchvision\nname: resnet34\nweights: null\n")
    (tmp_path / "model" / "typo.yaml").write_text("source: torchvision\nname: resnet34\ntarget_layr: layer3\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    assert run_config("model=mine", searchpath).model.name == "resnet34"
    with pytest.raises(UserError, match=r"^in config file model/typo.yaml: unknown config key 'model.target_layr'; "
                                        r"did you mean model.target_layer\?$"):
        compose(["model=typo", searchpath])


@pytest.mark.parametrize(("override", "message"), [
    ("selection.threshold=1.5", r"selection.threshold=1.5 is outside \[0, 1\]"),
    ("selection.threshold=abc", r"invalid value for 'selection.threshold'"),
    ("selection.criteria=[incorect]", r"unknown selection criterion 'incorect'; did you mean incorrect"),
    ("selection.order=random_", r"selection.order=random_ is not valid; did you mean random"),
    ("dataset.batch_size=0", r"dataset.batch_size=0 must be at least 1"),
    ("technique.batch_size=0", r"technique.batch_size=0 must be at least 1, or null for the device.s default"),
    ("metrics_steps=0", r"metrics_steps=0 must be at least 1"),
    ("dataset.num_workers=-1", r"dataset.num_workers=-1 must be 0 or more"),
    ("render.threads=-1", r"render.threads=-1 cannot be negative; use 0 to draw in the main thread"),
    ("device=gpu", r"device=gpu is not valid"),
    ("model.input_size=-5", r"model.input_size=-5 must be at least 1, or null for the model's own"),
    ("model.input_size=0", r"model.input_size=0 must be at least 1"),  # not silently the model's own size
    ("model.num_classes=7", r"model=demo does not use model.num_classes: the demo model has 4 classes"),
    ("model.weights=DEFAULT", r"model=demo does not use model.weights"),
    ("model.factory=nets:build", r"model=demo does not use model.factory: it is for model=custom"),
])
def test_invalid_values_are_one_line_user_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        run_config(override)
    assert "\n" not in str(raised.value)


def test_missing_mandatory_value_names_the_key() -> None:
    with pytest.raises(UserError, match=r"^model.name needs a value; set it on the command line: model.name=\.\.\.$"):
        run_config("model=torchvision")


def test_unknown_technique_option_or_name_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown technique 'gradcan'; did you mean gradcam"):
        compose(["technique=gradcan"])
    raw = compose([])
    with pytest.raises(UserError, match=r"unknown technique 'scorcam'; did you mean scorecam"):
        load_run_config({**dict(raw), "technique": {"methods": {"scorcam": True}}})
