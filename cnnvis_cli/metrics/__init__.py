"""Metrics of the heatmaps themselves, computed in the explanation stage for every (sample, target,
technique) row: faithfulness (`faithfulness.py`) and, where the dataset gives boxes, localisation
(`localisation.py`). `metrics=[deletion,insertion,drop,pointing,energy]` picks them; each row goes to
`metrics.csv` as its batch finishes, and the averages per technique to `summary.json` and the report.
A resumed run reads back the rows of the samples it does not explain again (`finished_rows`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnvis_cli.metrics.counterfactual import (
    CounterfactualOptions,
    counterfactual_columns,
    counterfactual_summary,
    region_outcomes,
)
from cnnvis_cli.metrics.faithfulness import faithfulness
from cnnvis_cli.metrics.localisation import (
    POINTING_TOLERANCE,
    box_masks,
    denser_first,
    energy_inside,
    nearer_first,
    parse_box,
    pointing_hits,
    to_input_box,
)
from cnnvis_cli.models import Preprocess
from cnnvis_cli.run_dir import CsvStream, flag_cell, flag_from_cell, read_stream
from cnnvis_cli.targets import explains_prediction
from cnnvis_cli.techniques.baselines import baseline_images

METRICS: dict[str, str] = {
    "deletion": "area under the deletion curve: pixels removed in the map's order (lower is more faithful)",
    "insertion": "area under the insertion curve: pixels restored in the map's order (higher is more faithful)",
    "drop": "average drop and increase in confidence when only the map's region is kept",
    "pointing": "pointing game: the map's peak inside the object's box (datasets with boxes)",
    "energy": "share of the map's mass inside the object's box (datasets with boxes)",
    "counterfactual": "wrong predictions predicted again with the map's region hidden, against a random region of "
                      "the same shape",
}
METRICS_FILE = "metrics.csv"
BOX_COLUMNS = {"object": "object_box", "cue": "cue_box"}  # dataset columns holding boxes; the demo has both
ROW_COLUMNS = ["index", "sample_id", "technique", "target", "target_class", "correct"]


def metric_columns(names: list[str], has_cue: bool) -> list[str]:
    columns = []
    for name in names:
        if name in ("deletion", "insertion"):
            columns.append(f"{name}_auc")
        elif name == "drop":
            columns += ["drop", "increase"]
        elif name == "counterfactual":
            columns += counterfactual_columns()
        else:
            columns += [f"{name}_{box}" for box in BOX_COLUMNS if box == "object" or has_cue]
            if name == "pointing" and has_cue:
                columns.append("nearer_cue")  # the peak nearer the mark than the object
            if name == "energy" and has_cue:
                columns.append("denser_cue")  # more of the map per pixel on the mark than on the object
    return columns


@dataclass(frozen=True)
class RowInfo:
    """Who one row of a batch is: the sample, the target explained, and whether the prediction was right."""

    index: int
    sample_id: str
    role: str
    target_class: str
    correct: bool | None  # None when unlabelled
    true_class: str = ""  # "" when unlabelled
    true_index: int = -1  # -1 when unlabelled

    @property
    def explains_prediction(self) -> bool:
        """Whether the row's target is the predicted class (alone or merged with another role)."""
        return explains_prediction(self.role)


class MetricRecorder:
    """Computes the chosen metrics batch by batch, streams them to a CSV and keeps them for the averages."""

    def __init__(self, names: list[str], steps: int, preprocess: Preprocess, batch_size: int, csv: CsvStream,
                 has_cue: bool, counterfactual: CounterfactualOptions | None = None) -> None:
        self.names, self.steps, self.preprocess, self.batch_size = names, steps, preprocess, batch_size
        self.counterfactual = counterfactual or CounterfactualOptions()
        self.csv = csv
        self.columns = metric_columns(names, has_cue)
        self.rows: list[dict[str, Any]] = []

    @staticmethod
    def header(names: list[str], has_cue: bool) -> list[str]:
        return ROW_COLUMNS + metric_columns(names, has_cue)

    def record(self, technique: str, model: nn.Module, images: torch.Tensor, image_rows: torch.Tensor,
               targets: torch.Tensor, maps: torch.Tensor, infos: list[RowInfo],
               extras: list[dict[str, str]], scores: bool = True) -> dict[str, list[float]]:
        """Score the R maps of one technique on one batch (`images` normalised, B x 3 x H x W); returns each
        column's R values (NaN where a row has none). With `scores=False` (the maps of a contrast, whose score
        is no class's probability) only the metrics that read the map alone are computed (pointing, energy)."""
        values: dict[str, torch.Tensor] = {}
        if "counterfactual" in self.names and scores:
            values |= self._counterfactual(model, images, image_rows, targets, maps, infos)
        if {"deletion", "insertion", "drop"} & set(self.names) and scores:
            mean, std = self.preprocess.mean, self.preprocess.std
            result = faithfulness(model, images, image_rows, targets, maps, steps=self.steps,
                                  black=baseline_images("black", images, mean, std),
                                  blurred=baseline_images("blurred", images, mean, std),
                                  mean=mean, std=std, batch_size=self.batch_size,
                                  curves=tuple(name for name in ("deletion", "insertion") if name in self.names))
            if result.deletion_curve is not None:
                values["deletion_auc"] = result.deletion_auc
            if result.insertion_curve is not None:
                values["insertion_auc"] = result.insertion_auc
            values |= {"drop": result.drop, "increase": result.increase.float()}
        tolerance = POINTING_TOLERANCE * maps.shape[-1]
        found = {}
        for box_name, column in BOX_COLUMNS.items():
            boxes = self._boxes(extras, column, image_rows, maps)
            if boxes is None:
                continue
            table, known = boxes
            masks = box_masks(table, *maps.shape[-2:])
            found[box_name] = (table, known, masks)
            values[f"pointing_{box_name}"] = torch.where(known, pointing_hits(maps, table, tolerance), torch.nan)
            values[f"energy_{box_name}"] = torch.where(known, energy_inside(maps, masks), torch.nan)
        if {"cue", "object"} <= set(found):
            (cue, cue_known, cue_masks), (thing, thing_known, thing_masks) = found["cue"], found["object"]
            both = cue_known & thing_known
            values["nearer_cue"] = torch.where(both, nearer_first(maps, cue, thing), torch.nan)
            values["denser_cue"] = torch.where(both, denser_first(maps, cue_masks, thing_masks), torch.nan)
        table = {name: value.float().cpu().tolist() for name, value in values.items() if name in self.columns}
        lines = [[str(info.index), info.sample_id, technique, info.role, info.target_class,
                  flag_cell(info.correct),
                  *(_number(table[name][row]) if name in table else "" for name in self.columns)]
                 for row, info in enumerate(infos)]
        self.keep(lines)
        return table

    def _counterfactual(self, model: nn.Module, images: torch.Tensor, image_rows: torch.Tensor,
                        targets: torch.Tensor, maps: torch.Tensor, infos: list[RowInfo]) -> dict[str, torch.Tensor]:
        """The counterfactual columns: measured for the predicted-class maps of wrong predictions, NaN for the
        other rows."""
        wrong = [row for row, info in enumerate(infos) if info.explains_prediction and info.correct is False
                 and info.true_index >= 0]
        columns = {name: torch.full((len(infos),), math.nan, device=maps.device) for name in counterfactual_columns()}
        if not wrong:
            return columns
        chosen = torch.tensor(wrong, device=maps.device)
        true = torch.tensor([infos[row].true_index for row in wrong], device=maps.device)
        found = region_outcomes(model, images, image_rows[chosen], targets[chosen], true, maps[chosen],
                               [infos[row].index for row in wrong], self.counterfactual, self.preprocess.mean,
                               self.preprocess.std, self.batch_size)
        for name, value in found.items():
            columns[name][chosen] = value
        return columns

    def keep(self, lines: list[list[str]]) -> None:
        """Take CSV rows (as `header()` orders them) into the file and the averages: fresh ones from
        `record`, or those a resumed run read back with `finished_rows`."""
        for line in lines:
            row = dict(zip(ROW_COLUMNS + self.columns, line, strict=True))
            self.rows.append({
                "index": int(row["index"]), "technique": row["technique"], "target": row["target"],
                "prediction": explains_prediction(row["target"]),
                "correct": flag_from_cell(row["correct"]),
                **{name: float(row[name]) if row[name] else math.nan for name in self.columns},
            })
        self.csv.write(lines)

    def _boxes(self, extras: list[dict[str, str]], column: str, image_rows: torch.Tensor,
               maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """R x 4 boxes of the rows in input pixels, and which rows have a box; None when no image of the
        batch has one."""
        per_image = []
        for extra in extras:
            box = parse_box(extra.get(column, ""))
            size = tuple(int(side) for side in extra.get("original_size", "").split())
            per_image.append(None if box is None or len(size) != 2 else to_input_box(box, size, self.preprocess))
        if all(box is None for box in per_image):
            return None
        known = torch.tensor([box is not None for box in per_image], device=maps.device)[image_rows]
        table = torch.tensor([box or (0.0, 0.0, 0.0, 0.0) for box in per_image], device=maps.device)
        return table[image_rows], known

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """Per technique, the means over all rows of class targets, over the predicted-class maps of correct and
        of wrong predictions, and over the contrast maps (NaN values, such as empty maps, left out)."""
        groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for row in self.rows:
            technique_groups = groups[row["technique"]]
            if row["target"] == "contrast":  # targets=[contrast]: wrong predictions only, a group of their own
                technique_groups["contrast: predicted vs true"].append(row)
                continue
            technique_groups["all maps"].append(row)
            if row["prediction"] and row["correct"] is not None:
                technique_groups["predicted class, correct" if row["correct"] else "predicted class, wrong"].append(row)
        return {technique: {group: _means(rows, self.columns) for group, rows in by_group.items()}
                for technique, by_group in groups.items()}


    def counterfactual_summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """Per technique and region: what hiding it did to the wrong predictions, beside the random control."""
        by_technique: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            by_technique[row["technique"]].append(row)
        found = {technique: counterfactual_summary(rows) for technique, rows in by_technique.items()}
        return {technique: regions for technique, regions in found.items() if regions}


def finished_rows(run_root: Path, header: list[str]) -> dict[int, list[list[str]]]:
    """The rows an earlier attempt of this run wrote to metrics.csv (or its .partial), by sample index."""
    by_index: dict[int, list[list[str]]] = defaultdict(list)
    for line in read_stream(run_root / METRICS_FILE, header):
        by_index[int(line[0])].append(line)
    return dict(by_index)


def _means(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, float | int]:
    means: dict[str, float | int] = {"maps": len(rows)}
    for column in columns:
        values = [row[column] for row in rows if column in row and not math.isnan(row[column])]
        if values:
            means[column] = round(sum(values) / len(values), 4)
    return means


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"
