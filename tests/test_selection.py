from __future__ import annotations

import numpy as np

from cnnvis_cli.config import SelectionConfig
from cnnvis_cli.inference import Predictions
from cnnvis_cli.selection import select


def predictions() -> Predictions:
    """Six samples: 0 right and sure, 1 wrong and sure, 2 right and unsure, 3 wrong and unsure,
    4 unlabelled and unsure, 5 wrong with the label outside the top 2."""
    labels = np.array([0, 0, 1, 1, -1, 2])
    predicted = np.array([0, 1, 1, 0, 2, 0])
    confidence = np.array([0.95, 0.90, 0.40, 0.35, 0.30, 0.60])
    second = np.array([0.03, 0.05, 0.35, 0.33, 0.29, 0.30])
    return Predictions(
        indices=np.arange(6), sample_ids=[f"s{i}" for i in range(6)], labels=labels, predicted=predicted,
        confidence=confidence, margin=confidence - second,
        entropy=np.array([0.1, 0.2, 0.7, 0.8, 0.9, 0.6]),
        loss=np.array([0.05, 3.0, 0.9, 1.1, np.nan, 2.5]),
        topk_classes=np.array([[0, 1], [1, 0], [1, 0], [0, 1], [2, 1], [0, 1]]),
        topk_probs=np.stack([confidence, second], axis=1),
    )


def rows(cfg: SelectionConfig) -> list[int]:
    return [case.row for case in select(predictions(), cfg).cases]


def test_each_criterion_flags_the_right_samples() -> None:
    p = predictions()
    flags = select(p, SelectionConfig(criteria=["incorrect", "low_confidence", "low_margin", "high_entropy",
                                                "label_not_in_topk"], topk=2)).flags
    assert np.flatnonzero(flags["incorrect"]).tolist() == [1, 3, 5]
    assert np.flatnonzero(flags["low_confidence"]).tolist() == [2, 3, 4]
    assert np.flatnonzero(flags["low_margin"]).tolist() == [2, 3, 4]
    assert np.flatnonzero(flags["high_entropy"]).tolist() == [2, 3, 4, 5]
    assert np.flatnonzero(flags["label_not_in_topk"]).tolist() == [5]


def test_any_and_all_combine_criteria() -> None:
    assert sorted(rows(SelectionConfig(criteria=["incorrect", "low_confidence"], mode="any"))) == [1, 2, 3, 4, 5]
    assert rows(SelectionConfig(criteria=["incorrect", "low_confidence"], mode="all")) == [3]


def test_orders() -> None:
    base = dict(criteria=["incorrect", "low_confidence"])
    assert rows(SelectionConfig(**base, order="least_confident")) == [4, 3, 2, 5, 1]
    assert rows(SelectionConfig(**base, order="highest_loss")) == [1, 5, 3, 2, 4]  # unlabelled last
    shuffled = rows(SelectionConfig(**base, order="random", seed=3))
    assert sorted(shuffled) == [1, 2, 3, 4, 5] and shuffled == rows(SelectionConfig(**base, order="random", seed=3))


def test_caps_per_class_and_in_total() -> None:
    base = dict(criteria=["incorrect", "low_confidence"], order="least_confident")
    # classes (label, else prediction): 4 -> 2, 3 -> 1, 2 -> 1, 5 -> 2, 1 -> 0
    assert rows(SelectionConfig(**base, per_class_max=1)) == [4, 3, 1]
    assert rows(SelectionConfig(**base, max_samples=2)) == [4, 3]


def test_reasons_list_every_criterion_met_and_counts_are_before_caps() -> None:
    selection = select(predictions(), SelectionConfig(criteria=["incorrect", "low_confidence"], max_samples=1))
    assert [(c.row, c.reasons) for c in selection.cases] == [(4, ("low_confidence",))]
    assert selection.matched == {"incorrect": 3, "low_confidence": 3}
    assert select(predictions(), SelectionConfig(criteria=["incorrect"], max_samples=None)).cases[0].reasons == (
        "incorrect",)


def test_empty_selection_is_normal() -> None:
    assert rows(SelectionConfig(criteria=["low_confidence"], threshold=0.0)) == []
