"""Tests for the demo network, its packaged weights and the training helpers."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis_cli.demo import train as train_module
from cnnvis_cli.demo.network import MEAN, STD, WEIGHTS_FILE, DemoNet, load_demo_model, preprocess
from cnnvis_cli.demo.scene import CLASS_NAMES, IMAGE_SIZE, render_scene
from cnnvis_cli.demo.train import shortcut_metrics

EVALUATED_TEST_SCENES = 200


@pytest.fixture(scope="module")
def model() -> DemoNet:
    return load_demo_model()


@pytest.fixture(scope="module")
def test_scenes() -> list:
    return [render_scene("test", index) for index in range(EVALUATED_TEST_SCENES)]


@pytest.fixture(scope="module")
def test_predictions(model: DemoNet, test_scenes: list) -> np.ndarray:
    with torch.no_grad():
        logits = model(preprocess(np.stack([scene.image for scene in test_scenes])))
    return logits.argmax(dim=1).numpy()


def test_preprocess_scales_and_normalises() -> None:
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[..., 0] = 255
    batch = preprocess(image)
    assert batch.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch[0, 0], torch.full((IMAGE_SIZE, IMAGE_SIZE), (1.0 - MEAN[0]) / STD[0]))
    torch.testing.assert_close(batch[0, 1], torch.full((IMAGE_SIZE, IMAGE_SIZE), -MEAN[1] / STD[1]))
    assert preprocess(np.stack([image, image])).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_architecture_has_named_parts() -> None:
    network = DemoNet()
    assert isinstance(network.features, nn.Sequential)
    assert isinstance(network.classifier, nn.Linear)
    assert network.classifier.out_features == len(CLASS_NAMES)
    kinds = {type(layer) for layer in network.features}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU} <= kinds
    assert all(layer.inplace for layer in network.features if isinstance(layer, nn.ReLU))
    assert isinstance(network.features[-1], nn.ReLU)
    assert DemoNet(num_classes=7).classifier.out_features == 7


def test_last_feature_map_is_spatial() -> None:
    network = DemoNet().eval()
    with torch.no_grad():
        feature_map = network.features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
        logits = network(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert feature_map.shape[-2] >= 6 and feature_map.shape[-1] >= 6
    assert feature_map.shape[1] == network.classifier.in_features
    assert logits.shape == (2, len(CLASS_NAMES))


def test_weights_file_is_packaged_and_small() -> None:
    weights = resources.files("cnnvis_cli.demo").joinpath(WEIGHTS_FILE)
    assert weights.is_file()
    assert len(weights.read_bytes()) < 2 * 1024 * 1024


def test_shipped_model_loads_in_eval_mode(model: DemoNet) -> None:
    assert isinstance(model, DemoNet)
    assert not model.training
    assert not any(module.training for module in model.modules())
    assert all(parameter.device.type == "cpu" for parameter in model.parameters())


def test_shipped_model_is_deterministic(model: DemoNet, test_scenes: list) -> None:
    batch = preprocess(np.stack([scene.image for scene in test_scenes[:8]]))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(batch), rtol=0, atol=0)


def test_shipped_model_learned_the_train_split(model: DemoNet) -> None:
    images = np.stack([render_scene("train", index).image for index in range(200)])
    labels = np.array([render_scene("train", index).label for index in range(200)])
    with torch.no_grad():
        predictions = model(preprocess(images)).argmax(dim=1).numpy()
    assert (predictions == labels).mean() > 0.9


def test_shipped_model_errs_on_test_and_follows_the_cue(test_scenes: list, test_predictions: np.ndarray) -> None:
    labels = np.array([scene.label for scene in test_scenes])
    cue_classes = np.array([scene.cue_class for scene in test_scenes])
    metrics = shortcut_metrics(test_predictions, labels, cue_classes)
    assert 0.05 <= metrics["error"] <= 0.30
    assert metrics["errors_following_cue"] > 0.5
    # When the mark agrees with the shape the model is almost always right.
    agreeing = labels == cue_classes
    assert (test_predictions[agreeing] == labels[agreeing]).mean() > 0.95


def test_grad_cam_of_cue_following_errors_points_at_the_cue_corner(
    model: DemoNet, test_scenes: list, test_predictions: np.ndarray
) -> None:
    followers = [
        index
        for index, scene in enumerate(test_scenes)
        if test_predictions[index] != scene.label and test_predictions[index] == scene.cue_class
    ]
    assert followers
    batch = preprocess(np.stack([test_scenes[index].image for index in followers]))
    captured: dict[str, torch.Tensor] = {}
    hook = model.features.register_forward_hook(lambda _module, _inputs, output: captured.update(maps=output))
    try:
        logits = model(batch)
    finally:
        hook.remove()
    chosen = torch.as_tensor(test_predictions[followers]).unsqueeze(1)
    maps = captured["maps"]
    (gradients,) = torch.autograd.grad(logits.gather(1, chosen).sum(), maps)
    heatmaps = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1)).detach()

    height, width = heatmaps.shape[1:]
    in_cue_quadrant = 0
    for heatmap, index in zip(heatmaps, followers, strict=True):
        row, col = divmod(int(heatmap.argmax()), width)
        x0, y0, x1, y1 = test_scenes[index].cue_box
        cue_right = (x0 + x1) / 2 > IMAGE_SIZE / 2
        cue_bottom = (y0 + y1) / 2 > IMAGE_SIZE / 2
        in_cue_quadrant += (col >= width / 2) == cue_right and (row >= height / 2) == cue_bottom
    assert in_cue_quadrant / len(followers) > 0.7


def test_shortcut_metrics_counts_cue_following_errors() -> None:
    predictions = np.array([0, 1, 2, 3, 3])
    labels = np.array([0, 1, 1, 1, 3])
    cue_classes = np.array([2, 2, 2, 0, 3])
    metrics = shortcut_metrics(predictions, labels, cue_classes)
    assert metrics["error"] == pytest.approx(0.4)
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["errors_following_cue"] == pytest.approx(0.5)


def test_train_help_names_the_command_and_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_module.main(["--help"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0 and shown.startswith("usage: cnnvis demo train")
    assert f"(default: {train_module.DEFAULT_EPOCHS})" in shown and "model.checkpoint=demo_net.pt" in shown
    assert "(default: None)" not in shown and "(default: False)" not in shown


def test_shuffled_labels_go_to_a_file_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: dict[str, object] = {}
    monkeypatch.setattr(train_module, "train", lambda output, **options: recorded.update(output=output))
    assert train_module.main(["--shuffle-labels"]) == 0
    assert recorded["output"] == Path("demo_net_shuffled_labels.pt")


def test_train_cli_rejects_non_positive_epochs() -> None:
    with pytest.raises(SystemExit):
        train_module.main(["--epochs", "0"])


def test_train_cli_defaults_reproduce_the_shipped_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: dict[str, object] = {}

    def fake_train(output, **options):  # type: ignore[no-untyped-def]
        recorded.update(output=output, **options)
        return {}

    monkeypatch.setattr(train_module, "train", fake_train)
    assert train_module.main([]) == 0
    assert recorded["output"] == Path(WEIGHTS_FILE)  # in the current folder, not inside the package
    assert recorded["epochs"] == train_module.DEFAULT_EPOCHS
    assert recorded["seed"] == train_module.DEFAULT_SEED
