"""Slices: the test set clustered in the model's features, the clusters where it fails found and described."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_config

from cnnvis_cli.embeddings import FeatureTap, classifier_head
from cnnvis_cli.errors import UserError
from cnnvis_cli.inference import predictions_from_bytes
from cnnvis_cli.pipeline import run
from cnnvis_cli.slices import find_slices

pytest.importorskip("sklearn")


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 samples of 3 classes in 16-d features, each class around its own centre and predicted right,
    except 30 of class 0 that sit apart (a shared cause) and are predicted as class 2."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], 100)
    centres = rng.normal(0, 4, size=(3, 16))
    features = centres[labels] + rng.normal(0, 1, size=(300, 16))
    predicted = labels.copy()
    features[:30] += rng.normal(0, 4, size=16)  # the failing group: its own place in feature space
    predicted[:30] = 2
    predicted[[150, 250]] = [0, 1]  # two scattered mistakes, which make no slice
    return features.astype(np.float16), labels, predicted


def test_the_planted_failure_comes_out_as_the_first_slice() -> None:
    features, labels, predicted = planted()
    slices = find_slices(features, labels, predicted, seed=0)
    first = slices[0]
    assert first.confusion == (0, 2, 30) and first.wrong == 30 and first.error_rate >= 0.9
    assert set(range(30)) <= set(first.rows)
    assert all(item.wrong >= 3 for item in slices) and sum(item.wrong for item in slices) <= 32
    again = find_slices(features, labels, predicted, seed=0)
    assert [item.rows for item in again] == [item.rows for item in slices]  # seeded: the same slices


def test_no_features_or_no_repeated_confusion_give_no_slices() -> None:
    features, labels, predicted = planted()
    assert find_slices(features[:, :0], labels, predicted, seed=0) == []
    scattered = labels.copy()
    scattered[[5, 150]] = [1, 2]  # two different confusions, once each
    assert find_slices(features, labels, scattered, seed=0) == []


def test_the_tap_keeps_the_input_of_the_classifier_head() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5, bias=False)).eval()
    assert classifier_head(model, 16) == "3"
    images = torch.randn(2, 3, 16, 16)
    with FeatureTap(model, "3") as tap, torch.no_grad():
        logits = model(images)
        kept = tap.take()
    assert kept.dtype == np.float16 and kept.shape == (2, 4)
    np.testing.assert_allclose(kept.astype(np.float32) @ model[3].weight.detach().T.numpy(), logits.numpy(), rtol=1e-2,
                               atol=1e-2)
    assert not model._forward_pre_hooks and not model[3]._forward_pre_hooks  # the hook is gone


def test_a_model_that_does_not_end_in_a_linear_layer_is_tapped_at_its_scores() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    assert classifier_head(model, 16) is None
    with FeatureTap(model, None) as tap, torch.no_grad():
        logits = model(torch.randn(3, 3, 16, 16))
        np.testing.assert_allclose(tap.take().astype(np.float32), logits.numpy(), rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_a_run_finds_slices_of_the_demo_and_keeps_its_features(tmp_path: Path) -> None:
    result = run(run_config("analysis=[slices]", "metrics=[counterfactual]", "dataset.limit=300", "cache=null"),
                 tmp_path)
    stored = predictions_from_bytes((tmp_path / "predictions.npz").read_bytes())
    assert stored.embeddings.shape == (300, 64) and stored.embeddings.dtype == np.float16  # the classifier's input
    found = result.summary["slices"]
    assert found["features"] == "the input of its last linear layer (classifier)" and found["slices"]
    members = list(csv.DictReader(io.StringIO((tmp_path / "patterns" / "slices.csv").read_text())))
    for item in found["slices"]:
        rows = [row for row in members if row["slice"] == str(item["slice"])]
        assert len(rows) == item["size"] and sum(row["correct"] == "0" for row in rows) == item["wrong"]
        assert item["wrong"] >= 3
        assert (tmp_path / item["maps"]["gradcam"]).is_file()
        measured = item["counterfactual"]["gradcam"]
        assert 0 < measured["measured"] <= item["wrong"]
    rates = [item["error_rate"] for item in found["slices"]]
    assert rates == sorted(rates, reverse=True) and rates[0] > found["error_rate"]
    assert "Slices: where the failures gather" in (tmp_path / "report.html").read_text()


def test_without_scikit_learn_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(UserError, match=r"analysis=\[slices\] needs scikit-learn: pip install 'cnnvis\[slices\]'"):
        run_config("analysis=[slices]")
