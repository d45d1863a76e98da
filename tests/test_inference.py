from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis_cli.data import Batch
from cnnvis_cli.inference import predict, prediction_header, predictions_bytes, predictions_from_bytes
from cnnvis_cli.models import Preprocess
from cnnvis_cli.run_dir import RunDir

IDENTITY = Preprocess(resize_size=2, input_size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class FixedLogits(nn.Module):
    """Returns the logits row named by the first pixel: an image whose pixel (0, 0) is i gets logits[i]."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[(x[:, 0, 0, 0] * 255).round().long()]


def batches(labels: list[int], size: int = 2):
    for start in range(0, len(labels), size):
        indices = list(range(start, min(start + size, len(labels))))
        images = torch.zeros(len(indices), 3, 2, 2, dtype=torch.uint8)
        images[:, 0, 0, 0] = torch.tensor(indices, dtype=torch.uint8)  # the model reads x * 255 = index
        yield Batch(images, torch.tensor([labels[i] for i in indices]), indices, [{} for _ in indices], [])


def test_statistics_and_csv_rows_have_the_right_values(tmp_path: Path) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    probs = logits.softmax(dim=1)
    run_dir = RunDir(tmp_path)
    with run_dir.csv_stream("predictions.csv", prediction_header(2, [])) as stream:
        p = predict(FixedLogits(logits), batches([0, 2, -1]), IDENTITY, torch.device("cpu"),
                    class_names=["a", "b", "c"], topk=2, csv=stream, show_progress=False)
    assert p.predicted.tolist() == [0, 0, 1]
    np.testing.assert_allclose(p.confidence, probs.max(dim=1).values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(p.margin, [probs[0, 0] - probs[0, 1], 0.0, probs[2, 1] - probs[2, 2]], atol=1e-6)
    np.testing.assert_allclose(p.entropy[1], 1.0, rtol=1e-6)  # uniform over 3 classes: the maximum
    np.testing.assert_allclose(p.loss[:2], [-math.log(probs[0, 0]), -math.log(probs[1, 2])], rtol=1e-5)
    assert math.isnan(p.loss[2])  # unlabelled
    assert p.correct.tolist() == [True, False, False] and p.accuracy() == pytest.approx(0.5)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert [r["predicted_name"] for r in rows] == ["a", "a", "b"]
    assert [r["correct"] for r in rows] == ["1", "0", ""]
    assert rows[2]["top2_classes"] == "b|c" and rows[2]["label"] == "" and rows[2]["loss"] == ""
    assert float(rows[0]["confidence"]) == pytest.approx(float(probs[0, 0]), abs=1e-6)


def test_keep_k_keeps_more_classes_than_the_csv_shows(tmp_path: Path) -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    with RunDir(tmp_path).csv_stream("p.csv", prediction_header(1, [])) as stream:
        p = predict(FixedLogits(logits), batches([3]), IDENTITY, torch.device("cpu"), class_names=list("abcd"),
                    topk=1, keep_k=3, csv=stream, show_progress=False)
    assert p.topk_classes.tolist() == [[0, 1, 2]]
    assert next(csv.DictReader((tmp_path / "p.csv").open()))["top1_classes"] == "a"


def test_the_label_and_named_classes_keep_their_probability_and_rank_beyond_the_top_k(tmp_path: Path) -> None:
    # ranks as panels show them: the place in the order by probability, ties by class index
    logits = torch.tensor([[5.0, 1.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    probs = logits.softmax(dim=1)
    with RunDir(tmp_path).csv_stream("p.csv", prediction_header(1, [])) as stream:
        p = predict(FixedLogits(logits), batches([3, 2, -1]), IDENTITY, torch.device("cpu"), class_names=list("abcde"),
                    topk=1, keep_k=1, tracked=(4,), csv=stream, show_progress=False)
    assert p.tracked_classes.tolist() == [[3, 4], [2, 4], [-1, 4]]
    assert p.tracked_ranks.tolist() == [[4, 5], [3, 5], [0, 1]]  # the tie of classes 1 and 3 puts 1 first
    np.testing.assert_allclose(p.tracked_probs[:, 1], probs[:, 4].numpy(), rtol=1e-6)
    for row in (0, 2):  # rows without a tie at the top, where torch.topk may pick either class
        order = np.argsort(-probs[row].numpy(), kind="stable")
        for class_index in (int(order[0]), 4, *([] if row == 2 else [int(p.labels[row])])):
            probability, rank = p.standing(row, class_index)
            assert rank == int(np.flatnonzero(order == class_index)[0]) + 1
            assert probability == pytest.approx(float(probs[row, class_index]), rel=1e-6)
    assert p.standing(0, 1) is None  # neither in the top 1, nor the label, nor named
    again = predictions_from_bytes(predictions_bytes(p))
    assert again.standing(2, 4) == p.standing(2, 4) and again.tracked_ranks.tolist() == p.tracked_ranks.tolist()


def test_bad_samples_are_collected_not_fatal(tmp_path: Path) -> None:
    from cnnvis_cli.data import BadSample

    good = next(batches([0]))
    bad = Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), [], [],
                [BadSample(7, "x.jpg", "truncated")])
    with RunDir(tmp_path).csv_stream("p.csv", prediction_header(1, [])) as stream:
        p = predict(FixedLogits(torch.tensor([[1.0, 0.0]])), [good, bad], IDENTITY, torch.device("cpu"),
                    class_names=["a", "b"], topk=1, csv=stream, show_progress=False)
    assert len(p) == 1 and p.bad == [BadSample(7, "x.jpg", "truncated")]


def test_features_are_kept_stored_and_joined_across_shards(tmp_path: Path) -> None:
    from cnnvis_cli.embeddings import FeatureTap
    from cnnvis_cli.inference import concat_predictions

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    model = FixedLogits(logits)
    run_dir = RunDir(tmp_path)
    with run_dir.csv_stream("predictions.csv", prediction_header(2, [])) as stream, FeatureTap(model, None) as tap:
        p = predict(model, batches([0, 2, 1]), IDENTITY, torch.device("cpu"), class_names=["a", "b", "c"], topk=2,
                    csv=stream, show_progress=False, features=tap)
    np.testing.assert_array_equal(p.embeddings, logits.numpy().astype(np.float16))  # a model with no head
    again = predictions_from_bytes(predictions_bytes(p))
    np.testing.assert_array_equal(again.embeddings, p.embeddings)
    with run_dir.csv_stream("empty.csv", prediction_header(2, [])) as stream:
        empty = predict(model, batches([]), IDENTITY, torch.device("cpu"), class_names=["a", "b", "c"], topk=2,
                        csv=stream, show_progress=False)
    joined = concat_predictions([p, empty, p])  # a shard without samples has no feature width
    assert joined.embeddings.shape == (6, 3)
    assert p.embeddings.dtype == np.float16 and empty.embeddings.shape == (0, 0)
