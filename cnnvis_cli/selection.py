"""Selection: pure functions from predictions to the cases worth explaining, each with its reasons."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnvis_cli.config import SelectionConfig
from cnnvis_cli.inference import Predictions

Criterion = Callable[[Predictions, SelectionConfig], np.ndarray]


def _incorrect(p: Predictions, _: SelectionConfig) -> np.ndarray:
    return p.labelled & ~p.correct


def _low_confidence(p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    return p.confidence < cfg.threshold


def _low_margin(p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    return p.margin < cfg.margin


def _high_entropy(p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    return p.entropy > cfg.entropy


def _label_not_in_topk(p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    in_topk = (p.topk_classes[:, : cfg.topk] == p.labels[:, None]).any(axis=1)
    return p.labelled & ~in_topk


def _every(p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    return np.ones(len(p), dtype=bool)


CRITERIA: dict[str, Criterion] = {
    "all": _every,
    "incorrect": _incorrect,
    "low_confidence": _low_confidence,
    "low_margin": _low_margin,
    "high_entropy": _high_entropy,
    "label_not_in_topk": _label_not_in_topk,
}

CRITERIA_HELP: dict[str, str] = {
    "all": "every sample (with selection.max_samples=null, the whole test set is explained)",
    "incorrect": "the predicted class is not the label",
    "low_confidence": "top-1 probability below selection.threshold",
    "low_margin": "top-1 minus top-2 probability below selection.margin",
    "high_entropy": "entropy / log(classes) above selection.entropy",
    "label_not_in_topk": "the label is not among the top selection.topk guesses",
}


@dataclass(frozen=True)
class Case:
    """A selected prediction: its row in `Predictions` and the criteria it met."""

    row: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    cases: list[Case]
    matched: dict[str, int]  # samples meeting each criterion, before any cap
    flags: dict[str, np.ndarray]  # criterion -> per-sample booleans


def select(predictions: Predictions, cfg: SelectionConfig) -> Selection:
    """The cases that meet the criteria (any or all of them), ordered, capped per class and in total."""
    flags = {name: CRITERIA[name](predictions, cfg) for name in cfg.criteria}
    stacked = np.stack(list(flags.values())) if flags else np.zeros((1, len(predictions)), dtype=bool)
    chosen = stacked.any(axis=0) if cfg.mode == "any" else stacked.all(axis=0)
    rows = _ordered(np.flatnonzero(chosen), predictions, cfg)
    rows = _cap_per_class(rows, predictions, cfg.per_class_max)
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    cases = [Case(int(row), tuple(name for name, flag in flags.items() if flag[row])) for row in rows]
    return Selection(cases, {name: int(flag.sum()) for name, flag in flags.items()}, flags)


def _ordered(rows: np.ndarray, p: Predictions, cfg: SelectionConfig) -> np.ndarray:
    if cfg.order == "least_confident":
        return rows[np.argsort(p.confidence[rows], kind="stable")]
    if cfg.order == "highest_loss":
        loss = np.nan_to_num(p.loss[rows], nan=-np.inf)  # unlabelled samples last
        return rows[np.argsort(-loss, kind="stable")]
    return np.random.default_rng(cfg.seed).permutation(rows)


def _cap_per_class(rows: np.ndarray, p: Predictions, per_class_max: int | None) -> np.ndarray:
    """Keep at most `per_class_max` rows of each class (the label, or the prediction when unlabelled)."""
    if per_class_max is None:
        return rows
    classes = np.where(p.labelled[rows], p.labels[rows], p.predicted[rows])
    kept, counts = [], {}
    for row, cls in zip(rows, classes, strict=True):
        if counts.get(cls, 0) < per_class_max:
            counts[cls] = counts.get(cls, 0) + 1
            kept.append(row)
    return np.asarray(kept, dtype=np.int64)
