"""The model-parameter randomisation test: ranks, Spearman, SSIM, the cascade, and its verdict."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers import run_config

from cnnvis_cli.pipeline import run
from cnnvis_cli.sanity import (
    average_ranks,
    cascade_stages,
    cascading_randomisation,
    flagged,
    parameter_layers,
    randomise,
    spearman,
    ssim,
)
from cnnvis_cli.techniques.gradient import GradCAM


def test_average_ranks_share_ties() -> None:
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 5.0]])).tolist() == [
        [2.5, 0.0, 2.5, 1.0], [1.0, 1.0, 1.0, 3.0]]


def test_spearman_and_ssim_on_known_pairs() -> None:
    torch.manual_seed(0)
    maps = torch.rand(2, 16, 16)
    assert spearman(maps, maps).tolist() == pytest.approx([1.0, 1.0])
    assert spearman(maps, 1 - maps).tolist() == pytest.approx([-1.0, -1.0])
    assert spearman(maps, maps ** 3).tolist() == pytest.approx([1.0, 1.0])  # ranks only
    assert spearman(maps, torch.zeros(2, 16, 16)).tolist() == [0.0, 0.0]
    assert ssim(maps, maps).tolist() == pytest.approx([1.0, 1.0])
    assert float(ssim(maps, torch.rand(2, 16, 16)).max()) < 0.3


def test_the_cascade_goes_from_the_top_down_to_every_layer(tiny_net) -> None:
    layers = parameter_layers(tiny_net)
    assert layers == ["features.0", "features.3", "features.4", "classifier"]
    stages = cascade_stages(layers, 3)
    assert stages == [["classifier", "features.4"], ["classifier", "features.4", "features.3"],
                      ["classifier", "features.4", "features.3", "features.0"]]
    before = {name: tensor.clone() for name, tensor in tiny_net.state_dict().items()}
    randomise(tiny_net, ["classifier"], seed=0)
    after = tiny_net.state_dict()
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])


def test_a_map_of_the_image_alone_is_flagged_and_grad_cam_is_not(tiny_net) -> None:
    torch.manual_seed(1)
    images = torch.randn(4, 3, 16, 16)
    rows = torch.arange(4)
    targets = tiny_net(images).argmax(dim=1)

    def explain(model):
        edges = images.diff(dim=-1, prepend=images[..., :1]).abs().sum(dim=1)  # ignores the model
        return {"gradcam": GradCAM(model, ["features"]).explain(images, rows, targets).maps,
                "edges": edges / edges.amax(dim=(1, 2), keepdim=True)}

    results = cascading_randomisation(tiny_net, explain, stages=2, seed=0)
    assert [stage["random_layers"] for stage in results] == [2, 4]
    assert results[-1]["techniques"]["edges"] == {"spearman": 1.0, "ssim": 1.0}
    assert results[-1]["techniques"]["gradcam"]["spearman"] < 0.5
    assert flagged(results) == ["edges"]


def test_a_run_with_the_sanity_check_writes_its_table(tmp_path: Path) -> None:
    result = run(run_config("dataset.limit=80", "technique=[gradcam,guided_backprop]", "sanity=true",
                            "sanity_samples=4", "sanity_stages=3"), tmp_path)
    sanity = result.summary["sanity"]
    assert sanity["samples"] == 4 and len(sanity["stages"]) == 3
    with (tmp_path / "sanity.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6 and {row["technique"] for row in rows} == {"gradcam", "guided_backprop"}
    assert all(-1 <= float(row["spearman"]) <= 1 for row in rows)
    assert "Sanity check: the model" in (tmp_path / "report.html").read_text()
    assert "sanity" in result.summary["seconds"]


def test_the_label_test_compares_with_a_model_trained_on_shuffled_labels(tmp_path: Path) -> None:
    from cnnvis_cli.demo.network import DemoNet

    torch.manual_seed(5)
    stand_in = tmp_path / "shuffled.pt"  # any model of the same architecture exercises the comparison
    torch.save(DemoNet().state_dict(), stand_in)
    result = run(run_config("dataset.limit=60", "technique=[gradcam,saliency]", "sanity=true", "sanity_samples=3",
                            "sanity_stages=2", f"sanity_label_model={stand_in}"), tmp_path / "run")
    labels = result.summary["sanity"]["labels"]
    assert set(labels) == {"gradcam", "saliency"}
    assert all(-1 <= values["spearman"] <= 1 for values in labels.values())
    with (tmp_path / "run" / "sanity.csv").open(newline="") as file:
        assert [row["technique"] for row in csv.DictReader(file) if row["stage"] == "labels"] == ["gradcam",
                                                                                                 "saliency"]
    assert "model trained on shuffled labels" in (tmp_path / "run" / "report.html").read_text()
