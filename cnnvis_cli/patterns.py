"""What the failures have in common: where the model looks, averaged and grouped over the explained samples.

- Mean maps: for each frequent confusion (true -> predicted), the mean of its predicted-class maps; for
  each true class, the mean predicted-class map of its correct and of its wrong predictions.
- Groups: the predicted-class maps, shrunk to 16 x 16 and scaled to unit length, are clustered with
  k-means (k-means++ seeding, Arthur and Vassilvitskii, SODA 2007); the number of groups is the one with the
  best mean silhouette (Rousseeuw, J. Comput. Appl. Math. 1987) from 2 to 8, or `analysis_groups`. A
  systematic failure (always the lower-left corner, the background, a watermark) comes out as a group
  whose mean map shows the place.
Maps are kept shrunk in memory (1 KB each), so a run of any size can be grouped, and streamed to
`patterns/maps.csv`, from which a resumed run reads back the maps of the samples it does not explain again.
"""

from __future__ import annotations

import base64
import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnvis_cli.run_dir import CsvStream, flag_cell, flag_from_cell, read_stream, safe_name

MAP_SIDE = 16
MAX_GROUPS = 8


@dataclass(frozen=True)
class MapEntry:
    """One explained (sample, technique) pair: its predicted-class map, shrunk, and who it belongs to."""

    technique: str
    index: int
    sample_id: str
    true_class: str  # "" when unlabelled
    predicted_class: str
    correct: bool | None
    overlay: str  # relative path of the overlay in the run directory


MAPS_FILE = "patterns/maps.csv"  # the shrunk maps, float32 in base64, with their entries
MAPS_HEADER = [*(field.name for field in fields(MapEntry)), "map"]


class MapCollector:
    """Keeps the predicted-class maps of the explanation stage, shrunk to MAP_SIDE x MAP_SIDE, and streams
    them to `csv` when given."""

    def __init__(self, csv: CsvStream | None = None) -> None:
        self.entries: list[MapEntry] = []
        self.maps: list[torch.Tensor] = []
        self.csv = csv

    def add(self, maps: torch.Tensor, entries: list[MapEntry]) -> None:
        """`maps`: R x H x W in [0, 1], one per entry."""
        if entries:
            self.keep(F.adaptive_avg_pool2d(maps[:, None].float(), MAP_SIDE)[:, 0].cpu(), entries)

    def keep(self, shrunk: torch.Tensor, entries: list[MapEntry]) -> None:
        """Take maps already shrunk (N x MAP_SIDE x MAP_SIDE): fresh ones from `add`, or those a resumed
        run read back with `finished_maps`."""
        self.maps.append(shrunk)
        self.entries += entries
        if self.csv is not None:
            self.csv.write([
                entry.technique, entry.index, entry.sample_id, entry.true_class, entry.predicted_class,
                flag_cell(entry.correct), entry.overlay,
                base64.b64encode(one.numpy().astype("<f4").tobytes()).decode("ascii")]
                for entry, one in zip(entries, shrunk, strict=True))

    def sort(self, order: dict[int, int]) -> None:
        """Put the maps in the order of `order` (sample index -> place), as an uninterrupted run has them:
        a resumed run collects the samples it read back first."""
        if not self.maps:
            return
        everything = torch.cat(self.maps)
        rows = sorted(range(len(self.entries)), key=lambda row: order.get(self.entries[row].index, len(order)))
        self.maps, self.entries = [everything[rows]], [self.entries[row] for row in rows]

    def stacked(self, technique: str) -> tuple[torch.Tensor, list[MapEntry]]:
        """The technique's maps (N x MAP_SIDE x MAP_SIDE) and their entries, in the order collected."""
        if not self.maps:
            return torch.zeros(0, MAP_SIDE, MAP_SIDE), []
        everything = torch.cat(self.maps)
        chosen = [row for row, entry in enumerate(self.entries) if entry.technique == technique]
        return everything[chosen], [self.entries[row] for row in chosen]


def finished_maps(run_root: Path) -> dict[int, list[tuple[MapEntry, torch.Tensor]]]:
    """The shrunk maps an earlier attempt of this run collected (patterns/maps.csv, or its .partial), by
    sample index."""
    found: dict[int, list[tuple[MapEntry, torch.Tensor]]] = defaultdict(list)
    for line in read_stream(run_root / MAPS_FILE, MAPS_HEADER):
        technique, index, sample_id, true_class, predicted_class, correct, overlay, encoded = line
        values = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
        entry = MapEntry(technique, int(index), sample_id, true_class, predicted_class,
                         flag_from_cell(correct), overlay)
        found[entry.index].append((entry, torch.from_numpy(values.copy()).reshape(MAP_SIDE, MAP_SIDE)))
    return dict(found)


def kmeans(points: torch.Tensor, k: int, seed: int, iterations: int = 100) -> torch.Tensor:
    """Group labels (N) of N x D points into k groups: k-means++ seeding, then Lloyd's iterations."""
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(1, k):
        nearest = torch.cdist(points, centres).min(dim=1).values ** 2
        if float(nearest.sum()) == 0:  # fewer distinct points than groups
            break
        centres = torch.cat([centres, points[torch.multinomial(nearest, 1, generator=generator)]])
    labels = torch.cdist(points, centres).argmin(dim=1)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=len(centres)).float()[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # an empty group keeps its centre
        updated = torch.cdist(points, centres).argmin(dim=1)
        if torch.equal(updated, labels):
            break
        labels = updated
    return labels


def silhouette(points: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette of a grouping: (b - a) / max(a, b) per point, a its mean distance to its own group,
    b to the nearest other group; 0 for a point alone in its group."""
    groups = torch.unique(labels)
    if len(groups) < 2:
        return 0.0
    distances = torch.cdist(points, points)
    one_hot = (labels[:, None] == groups[None]).float()  # N x G
    sizes = one_hot.sum(dim=0)
    mean_to = distances @ one_hot  # N x G: summed distances to each group
    own = one_hot.bool()
    own_size = sizes[labels]
    a = torch.where(own_size > 1, mean_to[own] / (own_size - 1).clamp(min=1), 0.0)
    b = torch.where(own, torch.inf, mean_to / sizes).min(dim=1).values
    scores = torch.where(own_size > 1, (b - a) / torch.maximum(a, b).clamp(min=1e-12), 0.0)
    return float(scores.mean())


def group_maps(maps: torch.Tensor, groups: int | None, seed: int) -> torch.Tensor:
    """Group labels of N maps (N x h x w): `groups` groups, or the count from 2 to MAX_GROUPS with the best
    silhouette. Fewer than 3 maps form one group."""
    if len(maps) < 3:
        return torch.zeros(len(maps), dtype=torch.long)
    points = F.normalize(maps.flatten(1), dim=1)
    if groups is not None:
        return _renumbered(kmeans(points, min(groups, len(maps)), seed))
    best, best_score = torch.zeros(len(maps), dtype=torch.long), -1.0
    for k in range(2, min(MAX_GROUPS, len(maps) - 1) + 1):
        labels = kmeans(points, k, seed)
        score = silhouette(points, labels)
        if score > best_score + 1e-9:
            best, best_score = labels, score
    return _renumbered(best)


def _renumbered(labels: torch.Tensor) -> torch.Tensor:
    """Groups numbered by size, largest first (ties by first member), so group 0 is the largest."""
    counts = Counter(labels.tolist())
    first = {label: position for position, label in reversed(list(enumerate(labels.tolist())))}
    order = sorted(counts, key=lambda label: (-counts[label], first[label]))
    mapping = {label: rank for rank, label in enumerate(order)}
    return torch.tensor([mapping[label] for label in labels.tolist()], dtype=torch.long)


def mean_maps(maps: torch.Tensor, keys: list[tuple[str, ...]],
              minimum: int = 1) -> dict[tuple[str, ...], tuple[torch.Tensor, int]]:
    """The mean map and the count of each key's maps (keys with at least `minimum` maps)."""
    rows: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        rows[key].append(row)
    return {key: (maps[members].mean(dim=0), len(members)) for key, members in rows.items() if len(members) >= minimum}


ANALYSES: dict[str, str] = {
    "groups": "the selected samples grouped by where the model looked for its prediction (k-means on the maps)",
    "confusions": "the mean predicted-class map of each frequent confusion (true -> predicted)",
    "classes": "per true class, the mean predicted-class map of its correct and of its wrong predictions",
    "slices": "the test set clustered in the model's own features; the clusters where it fails, with their "
              "confusion and mean map (needs scikit-learn: pip install 'cnnvis[slices]')",
    "channels": "for the most frequent confusions, the target layer's channels that carry most of the maps, "
                "with the test-set patches that excite each most",
    "class_images": "for the most frequent confusions, the class images of both classes (feature visualisation, "
                    "visualise.* settings), and with channels, the images of their channels",
}
MAP_ANALYSES = ("groups", "confusions", "classes")  # those built from the maps alone
TOP_CONFUSIONS = 10
MEAN_MAP_SIDE = 128


def heat_png(mean_map: torch.Tensor) -> bytes:
    """A mean map as a colour PNG (jet, scaled to its own maximum), MEAN_MAP_SIDE pixels a side."""
    import cv2
    import numpy as np

    resized = F.interpolate(mean_map[None, None], size=MEAN_MAP_SIDE, mode="bilinear", align_corners=False)[0, 0]
    scaled = (resized / resized.max().clamp(min=1e-12) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    ok, encoded = cv2.imencode(".png", cv2.applyColorMap(scaled, cv2.COLORMAP_JET))
    if not ok:
        raise ValueError("could not encode a mean map as PNG")
    return np.asarray(encoded).tobytes()


def find_patterns(collector: MapCollector, techniques: list[str], analyses: list[str], groups: int | None,
                  seed: int, write) -> dict[str, dict[str, list[dict]]]:
    """Every analysis asked for, per technique; `write(relative_path, bytes)` stores the mean-map pictures.
    Returns what summary.json and the report show."""
    found: dict[str, dict[str, list[dict]]] = {}
    grouped = [["technique", "group", "index", "sample_id", "true_class", "predicted_class", "correct", "overlay"]]
    for technique in techniques:
        maps, entries = collector.stacked(technique)
        if not entries:
            continue
        folder = f"patterns/{safe_name(technique)}"
        result: dict[str, list[dict]] = {}
        if "groups" in analyses:
            labels = group_maps(maps, groups, seed)
            result["groups"] = []
            for group in range(int(labels.max()) + 1 if len(labels) else 0):
                members = [entry for entry, label in zip(entries, labels.tolist(), strict=True) if label == group]
                grouped += [[technique, group + 1, e.index, e.sample_id, e.true_class, e.predicted_class,
                             flag_cell(e.correct), e.overlay] for e in members]
                mean = maps[labels == group].mean(dim=0)
                peak = int(mean.flatten().argmax())
                x, y = (peak % MAP_SIDE + 0.5) / MAP_SIDE, (peak // MAP_SIDE + 0.5) / MAP_SIDE
                image = write(f"{folder}/group_{group:02d}.png", heat_png(mean))
                result["groups"].append({
                    "group": group, "size": len(members), "image": image,
                    "peak": [round(x, 3), round(y, 3)],  # the mean map's peak, as shares of width and height
                    "wrong": sum(entry.correct is False for entry in members),
                    "members": [{"index": e.index, "sample_id": e.sample_id, "true": e.true_class,
                                 "predicted": e.predicted_class, "overlay": e.overlay} for e in members],
                })
        if "confusions" in analyses:
            wrong = [row for row, entry in enumerate(entries) if entry.correct is False]
            keys = [(entries[row].true_class, entries[row].predicted_class) for row in wrong]
            means = mean_maps(maps[wrong], keys) if wrong else {}
            frequent = sorted(means.items(), key=lambda item: -item[1][1])[:TOP_CONFUSIONS]
            result["confusions"] = [
                {"true": true, "predicted": predicted, "count": count,
                 "image": write(f"{folder}/confusion_{safe_name(true)}__{safe_name(predicted)}.png", heat_png(mean))}
                for (true, predicted), (mean, count) in frequent
            ]
        if "classes" in analyses:
            labelled = [row for row, entry in enumerate(entries) if entry.correct is not None]
            keys = [(entries[row].true_class, "correct" if entries[row].correct else "wrong") for row in labelled]
            means = mean_maps(maps[labelled], keys) if labelled else {}
            result["classes"] = [
                {"class": name, **{
                    outcome: {"count": means[name, outcome][1],
                              "image": write(f"{folder}/class_{safe_name(name)}__{outcome}.png",
                                             heat_png(means[name, outcome][0]))}
                    for outcome in ("correct", "wrong") if (name, outcome) in means}}
                for name in sorted({key[0] for key in keys})
            ]
        found[technique] = result
    if "groups" in analyses and len(grouped) > 1:
        text = io.StringIO()
        csv.writer(text).writerows(grouped)
        write("patterns/groups.csv", text.getvalue().encode())
    return found
