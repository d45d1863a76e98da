"""Channel exemplars: the samples where each channel fires most, kept in bounded memory, and each channel's
part in a Grad-CAM map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import forward_keeping, run_config
from torch import nn

from cnnvis_cli.exemplars import TOP, ExemplarCollector, Exemplars, channel_shares, merge_exemplars, receptive_field
from cnnvis_cli.inference import predictions_from_bytes
from cnnvis_cli.pipeline import run


class Spots(nn.Module):
    """A 'layer' whose channel c is the image's channel c % 3 times (c + 1): easy to predict maxima."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = torch.cat([images * (c + 1) for c in range(2)], dim=1)  # 6 channels
        return self.layer(grid).mean(dim=(2, 3))


def test_each_channel_keeps_the_samples_where_it_peaks_highest_and_where() -> None:
    model = Spots()
    torch.manual_seed(0)
    images = torch.rand(20, 3, 5, 5) * 0.5
    images[13, 1, 2, 4] = 3.0  # channel 1 (and 4) peak on sample 13 at (2, 4)
    images[7, 0, 0, 1] = 2.0
    with ExemplarCollector(model, "layer") as collector:
        for start in range(0, 20, 6):  # batch by batch, as the inference pass goes
            model(images[start:start + 6])
            collector.update(list(range(100 + start, 100 + min(start + 6, 20))))
    found = collector.exemplars
    assert found.values.shape == (6, TOP) and found.grid == (5, 5)
    assert (found.indices[1, 0], found.ys[1, 0], found.xs[1, 0]) == (113, 2, 4)
    assert (found.indices[4, 0], found.indices[0, 0], found.ys[0, 0], found.xs[0, 0]) == (113, 107, 0, 1)
    peaks = (torch.cat([images, images * 2], dim=1)).flatten(2).amax(dim=2)  # 20 x 6
    expected = torch.sort(peaks, dim=0, descending=True).values[:TOP].T.numpy()
    np.testing.assert_allclose(found.values, expected, rtol=1e-6)
    assert not model.layer._forward_hooks


def test_shards_merged_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((4, 30)).astype(np.float32)
    indices = np.tile(np.arange(30), (4, 1))
    where = rng.integers(0, 3, size=(4, 30))
    whole = Exemplars.empty(4, (3, 3)).merged(values, indices, where, where)
    parts = [Exemplars.empty(4, (3, 3)).merged(values[:, s], indices[:, s], where[:, s], where[:, s])
             for s in (slice(0, 11), slice(11, 30))]
    joined = merge_exemplars([parts[0], None, parts[1]])
    for name in ("values", "indices", "ys", "xs"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))


def test_the_receptive_field_of_three_3x3_convolutions_is_7_pixels() -> None:
    model = nn.Sequential(*(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert receptive_field(model.eval(), "2", 32) == (7, 7)


def test_channel_shares_add_up_to_the_mean_of_the_grad_cam_map_before_its_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(5, 3)).eval().requires_grad_(False)
    images = torch.randn(2, 3, 6, 6)
    shares = channel_shares(model, "1", images, torch.arange(2), torch.tensor([2, 0]))
    logits, activation = forward_keeping(model, model[1], images)
    gradient, = torch.autograd.grad(logits[0, 2] + logits[1, 0], activation)
    cam = (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)
    torch.testing.assert_close(shares.sum(dim=1), cam.mean(dim=(1, 2)).detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_run_shows_the_channels_of_the_demos_confusions_with_their_patches(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(run_config("analysis=[channels]", "dataset.limit=300", f"cache={cache}", "selection.max_samples=20"),
                tmp_path / "first")
    stored = predictions_from_bytes((tmp_path / "first" / "predictions.npz").read_bytes())
    assert stored.exemplars.values.shape == (64, TOP) and stored.exemplars.grid == (12, 12)
    assert set(stored.exemplars.indices.ravel()) <= set(stored.indices.tolist())
    found = first.summary["channels"]
    assert found["layer"] == "features" and found["receptive_field"] == [37, 37]
    assert found["confusions"] and all(len(item["channels"]) == 3 for item in found["confusions"])
    for item in found["confusions"]:
        for channel in item["channels"]:
            assert (tmp_path / "first" / channel["patches"]).is_file() and len(channel["samples"]) == TOP
    assert "What the model sees there" in (tmp_path / "first" / "report.html").read_text()
    again = run(run_config("analysis=[channels]", "dataset.limit=300", f"cache={cache}", "selection.max_samples=20"),
                tmp_path / "again")
    assert again.summary["predictions_from_cache"]  # the exemplars came back with the cached predictions
    assert again.summary["channels"] == {**found}
