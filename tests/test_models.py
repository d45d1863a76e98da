from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.errors import UserError
from cnnvis_cli.models import imagenet_class_names, inspect_layers, load_model, place_model, read_checkpoint

EXPECTED_TARGET_LAYERS = {  # the last layer whose output is a spatial map, for each shipped architecture
    "alexnet": "features", "vgg16": "features", "vgg19_bn": "features", "resnet18": "layer4",
    "resnet50": "layer4", "densenet121": "features", "mobilenet_v3_large": "features",
    "efficientnet_b0": "features", "convnext_tiny": "features",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TARGET_LAYERS))
def test_target_layer_found_automatically(name: str) -> None:
    loaded = load_model(ModelConfig(source="torchvision", name=name, weights=None))
    assert loaded.target_layer == EXPECTED_TARGET_LAYERS[name]
    assert loaded.num_classes == 1000 and loaded.class_names == imagenet_class_names()
    assert not loaded.module.training and not any(p.requires_grad for p in loaded.module.parameters())
    assert loaded.preprocess.input_size == 224 and loaded.preprocess.mean == (0.485, 0.456, 0.406)


def test_named_target_layer_and_unknown_one() -> None:
    assert load_model(ModelConfig(name="vgg16", weights=None, target_layer="features.29")).target_layer == "features.29"
    with pytest.raises(UserError, match=r"unknown target layer 'features.99'; did you mean features\.\d"):
        load_model(ModelConfig(name="vgg16", weights=None, target_layer="features.99"))


def test_inspect_layers_lists_spatial_outputs_in_order() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    layers, classes = inspect_layers(model, 64)
    names = [layer.name for layer in layers]
    assert classes == 1000 and names[0] == "conv1" and names[-1] == "layer4" and "avgpool" not in names
    assert dict((layer.name, layer.shape) for layer in layers)["layer4"] == (512, 2, 2)


def test_the_demo_model_honours_class_names_that_fit_and_refuses_others() -> None:
    names = ["ring", "box", "wedge", "plus"]
    assert load_model(ModelConfig(source="demo", name="demo", class_names=names)).class_names == names
    with pytest.raises(UserError, match="model 'demo' has 4 outputs but 2 class names"):
        load_model(ModelConfig(source="demo", name="demo", class_names=["a", "b"]))


def test_a_model_too_small_for_its_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"the model cannot run on 20 x 20 px inputs \(.*\); check model.input_size"):
        load_model(ModelConfig(name="vgg16", weights=None, input_size=20))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("text.pt", b"hello, this is a text file\n", r"text.pt is not a PyTorch checkpoint \(neither the zip file"),
    ("garbage.safetensors", b"\x00\x01garbage", r"cannot read .*garbage.safetensors as safetensors \("),
    ("cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", r"cannot read .*cut.safetensors as safetensors"),
    ("pickle.safetensors", pickle.dumps({"weight": [1.0]}), r"cannot read .*pickle.safetensors as safetensors"),
])
def test_a_checkpoint_that_cannot_be_read_is_said_in_words(name: str, content: bytes, message: str,
                                                           tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message) as raised:
        read_checkpoint(tmp_path / name)
    assert "\x1b[" not in str(raised.value) and "pop from empty list" not in str(raised.value)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnet51'; did you mean resnet50"):
        load_model(ModelConfig(name="resnet51", weights=None))


def test_unknown_weights_name_lists_the_choices() -> None:
    with pytest.raises(UserError, match=r"unknown weights for ResNet18_Weights 'IMAGENET_V9'"):
        load_model(ModelConfig(name="resnet18", weights="IMAGENET_V9"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_with_own_classes(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    trained = torchvision.models.resnet18(weights=None, num_classes=3)
    path = tmp_path / f"model{suffix}"
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}  # as DataParallel saves it
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = load_model(ModelConfig(name="resnet18", weights="DEFAULT", checkpoint=str(path), num_classes=3,
                                    class_names=["a", "b", "c"]))
    assert loaded.class_names == ["a", "b", "c"] and loaded.num_classes == 3
    torch.testing.assert_close(loaded.module.fc.weight, trained.fc.weight)


def test_checkpoint_that_does_not_fit_summarises_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    fc_mismatch = r"does not fit the architecture: 2 wrong shape \(fc.weight \(3, 512\) vs \(1000, 512\)"
    with pytest.raises(UserError, match=fc_mismatch):
        load_model(ModelConfig(name="resnet18", weights=None, checkpoint=str(path)))
    with pytest.raises(UserError, match=r"missing.*unexpected"):
        load_model(ModelConfig(name="vgg16", weights=None, checkpoint=str(path)))


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    _RunsCode.marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": _RunsCode()}))
    with pytest.raises(UserError, match="only tensors are allowed"):
        read_checkpoint(path)
    assert not (tmp_path / "code_ran").exists()


def test_custom_factory_with_kwargs_and_imagenet_names() -> None:
    loaded = load_model(ModelConfig(source="custom", name="custom", factory="torchvision.models:mobilenet_v3_small",
                                    kwargs={"num_classes": 1000}, class_names="imagenet", input_size=96))
    assert loaded.num_classes == 1000 and loaded.class_names[0] == "tench" and loaded.preprocess.input_size == 96
    with pytest.raises(UserError, match="cannot import model.factory 'nowhere.module:f'"):
        load_model(ModelConfig(source="custom", factory="nowhere.module:f"))


def test_class_names_that_do_not_fit_the_outputs() -> None:
    with pytest.raises(UserError, match="has 1000 outputs but 2 class names"):
        load_model(ModelConfig(name="resnet18", weights=None, class_names=["a", "b"]))


def _channels_last(loaded) -> bool:
    weight = next(p for p in loaded.module.parameters() if p.ndim == 4)
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize(("config", "setting", "device", "expected"), [
    (ModelConfig(name="resnet18", weights=None), None, "cpu", True),  # a convnet of the zoo, on the CPU
    (ModelConfig(name="demo", source="demo"), None, "cpu", True),
    (ModelConfig(name="convnext_tiny", weights=None), None, "cpu", False),  # LayerNorm: measured no faster
    (ModelConfig(name="custom", source="custom", factory="torchvision.models:mobilenet_v3_small"), None, "cpu",
     False),  # its own code may .view() a feature map
    (ModelConfig(name="custom", source="custom", factory="torchvision.models:mobilenet_v3_small"), True, "cpu",
     True),
    (ModelConfig(name="resnet18", weights=None), False, "cpu", False),
    (ModelConfig(name="resnet18", weights=None), None, "meta", False),  # not the CPU: unmeasured, left alone
])
def test_weights_are_stored_channels_last_where_that_measured_faster(config: ModelConfig, setting: bool | None,
                                                                      device: str, expected: bool) -> None:
    config.channels_last = setting
    loaded = load_model(config)
    place_model(loaded, torch.device(device), config)
    assert _channels_last(loaded) is expected


def test_channels_last_storage_predicts_what_the_default_layout_does() -> None:
    config = ModelConfig(name="resnet18", weights=None)
    torch.manual_seed(0)
    loaded = load_model(config)
    images = torch.randn(3, 3, 224, 224)
    expected = loaded.module(images)
    place_model(loaded, torch.device("cpu"), config)
    assert _channels_last(loaded)
    torch.testing.assert_close(loaded.module(images), expected, rtol=1e-4, atol=1e-4)
