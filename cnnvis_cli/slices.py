"""Slices: which failures belong together in the model's own representation.

Every labelled sample's penultimate features (`embeddings.py`, taken in the inference pass) are reduced with
PCA and clustered with k-means (scikit-learn), started from one centre per frequent confusion cell (the mean
of its wrong predictions: true -> predicted) and one per class (the mean of its right predictions), as Domino
(Eyuboglu et al., "Domino: Discovering Systematic Errors with Cross-Modal Embeddings", ICLR 2022) starts its
mixture from the confusion matrix. A slice is a cluster with at least MIN_WRONG wrong predictions; slices are
ranked by error rate, then size, and described by their main confusion, the class their wrong predictions
name most, the mean predicted-class map of their explained wrong predictions, and what hiding the maps'
region did to them (metrics=[counterfactual]).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnvis_cli.data import UNLABELLED
from cnnvis_cli.errors import UserError
from cnnvis_cli.inference import Predictions
from cnnvis_cli.patterns import MapCollector, heat_png
from cnnvis_cli.run_dir import flag_cell, safe_name

COMPONENTS = 32  # PCA components the clustering sees
MAX_CONFUSIONS = 8  # confusion cells that start a cluster, the most frequent first
MIN_WRONG = 3  # wrong predictions a cluster needs to count as a slice
SLICES_FILE = "patterns/slices.csv"


def require_sklearn():
    try:
        import sklearn
    except ImportError as error:
        raise UserError("analysis=[slices] needs scikit-learn: pip install 'cnnvis[slices]'") from error
    return sklearn


@dataclass(frozen=True)
class Slice:
    """A cluster of samples with its wrong predictions (rows of the predictions)."""

    size: int
    wrong: int
    rows: list[int]  # every member, in prediction order
    confusion: tuple[int, int, int]  # its most frequent (true, predicted) among the wrong ones, and the count
    predicted: tuple[int, int]  # the class its wrong predictions name most, and how many name it

    @property
    def error_rate(self) -> float:
        return self.wrong / self.size


def find_slices(embeddings: np.ndarray, labels: np.ndarray, predicted: np.ndarray, seed: int) -> list[Slice]:
    """The slices of the labelled samples, ranked by error rate and size."""
    require_sklearn()
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    rows = np.nonzero(labels != UNLABELLED)[0]
    if embeddings.shape[1] == 0 or len(rows) < 2:
        return []
    features = embeddings[rows].astype(np.float32)
    components = min(COMPONENTS, features.shape[1], len(rows) - 1)
    points = PCA(components, random_state=seed).fit_transform(features) if components >= 1 else features
    truth, guess = labels[rows], predicted[rows]
    wrong = truth != guess
    confusions = Counter(zip(truth[wrong].tolist(), guess[wrong].tolist(), strict=True))
    cells = [cell for cell, count in confusions.most_common(MAX_CONFUSIONS) if count >= 2]
    if not cells:
        return []
    starts = [points[wrong & (truth == t) & (guess == p)].mean(axis=0) for t, p in cells]
    starts += [points[~wrong & (truth == c)].mean(axis=0) for c in np.unique(truth[~wrong])]
    starts = np.unique(np.stack(starts), axis=0)  # identical centres would leave a cluster empty
    clusters = KMeans(len(starts), init=starts, n_init=1, random_state=seed).fit_predict(points)
    found = []
    for cluster in range(len(starts)):
        members = rows[clusters == cluster]
        bad = members[labels[members] != predicted[members]]
        if len(bad) < MIN_WRONG:
            continue
        (true, guessed), count = Counter(zip(labels[bad].tolist(), predicted[bad].tolist(),
                                             strict=True)).most_common(1)[0]
        named = Counter(predicted[bad].tolist()).most_common(1)[0]
        found.append(Slice(len(members), len(bad), members.tolist(), (true, guessed, count), named))
    return sorted(found, key=lambda item: (-item.error_rate, -item.size))


def describe_slices(slices: list[Slice], predictions: Predictions, class_names: list[str], features: str,
                    collector: MapCollector | None, counterfactual_rows: list[dict[str, Any]], write) -> dict:
    """What summary.json and the report say of each slice; writes its mean maps and patterns/slices.csv with
    `write(relative_path, bytes)`."""
    error = float(np.mean(predictions.labels[predictions.labelled] != predictions.predicted[predictions.labelled])) \
        if predictions.labelled.any() else 0.0
    listed = [["slice", "index", "sample_id", "true_class", "predicted_class", "correct"]]
    described = []
    for number, found in enumerate(slices, start=1):
        indices = {int(predictions.indices[row]) for row in found.rows}
        listed += [[number, int(predictions.indices[row]), predictions.sample_ids[row],
                    class_names[int(predictions.labels[row])], class_names[int(predictions.predicted[row])],
                    flag_cell(bool(predictions.correct[row]))] for row in found.rows]
        true, guessed, count = found.confusion
        item: dict[str, Any] = {
            "slice": number, "size": found.size, "wrong": found.wrong, "error_rate": round(found.error_rate, 4),
            "confusion": {"true": class_names[true], "predicted": class_names[guessed], "count": count},
            "predicted": {"class": class_names[found.predicted[0]], "count": found.predicted[1]},
            "wrong_members": [int(predictions.indices[row]) for row in found.rows if not predictions.correct[row]],
            "maps": {}, "counterfactual": {}, "overlays": [],
        }
        for technique, (maps, entries) in _technique_maps(collector).items():
            # the mean predicted-class map of its explained wrong predictions
            chosen = [place for place, entry in enumerate(entries) if entry.index in indices and entry.correct is False]
            if chosen:
                item["maps"][technique] = write(f"patterns/slices/{safe_name(technique)}/slice_{number:02d}.png",
                                                heat_png(maps[chosen].mean(dim=0)))
                if not item["overlays"]:
                    item["overlays"] = [entries[place].overlay for place in chosen]
        for technique in dict.fromkeys(row["technique"] for row in counterfactual_rows):
            measured = [row for row in counterfactual_rows if row["technique"] == technique
                        and row["index"] in indices and not np.isnan(row.get("hide_box_to_true", np.nan))]
            if measured:
                item["counterfactual"][technique] = {
                    "measured": len(measured), "turned_right": int(sum(row["hide_box_to_true"] for row in measured)),
                    "random_turned_right": round(float(sum(row["random_box_to_true"] for row in measured)), 1)}
        described.append(item)
    text = io.StringIO()
    csv.writer(text).writerows(listed)
    write(SLICES_FILE, text.getvalue().encode())
    return {"features": features, "error_rate": round(error, 4), "slices": described}


def _technique_maps(collector: MapCollector | None) -> dict[str, tuple[torch.Tensor, list]]:
    if collector is None:
        return {}
    techniques = dict.fromkeys(entry.technique for entry in collector.entries)
    return {technique: collector.stacked(technique) for technique in techniques}
