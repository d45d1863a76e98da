"""What an earlier attempt of a run finished, for `cnnvis run resume=RUN_DIR`.

A selected sample counts as finished when every file it needs is in the run directory (overlays, raw maps,
panel) and, when the run has them, all its rows of metrics.csv and all its maps collected for the analyses
(patterns/maps.csv). Those rows and maps are read back, so the resumed run's averages, groups and mean
maps cover every sample without explaining the finished ones again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnvis_cli.explain import Explained, RenderOptions, already_written, case_targets
from cnnvis_cli.inference import Predictions
from cnnvis_cli.metrics import finished_rows
from cnnvis_cli.patterns import MapEntry, finished_maps
from cnnvis_cli.run_dir import RunDir
from cnnvis_cli.selection import Case


@dataclass
class Finished:
    """The finished samples' records by case row, with their metric rows and collected maps."""

    explained: dict[int, Explained] = field(default_factory=dict)
    metric_rows: list[list[str]] = field(default_factory=list)
    map_entries: list[MapEntry] = field(default_factory=list)
    maps: list[torch.Tensor] = field(default_factory=list)  # shrunk, one per entry


def finished_work(cases: list[Case], predictions: Predictions, technique_names: list[str],
                  parsed_targets: list[str | int], class_names: list[str], run_dir: RunDir, options: RenderOptions,
                  metrics_header: list[str] | None, collects_maps: bool, also: list[Path] = ()) -> Finished:
    """The samples of `cases` that need no explaining again; `metrics_header` when the run computes
    metrics, `collects_maps` when it runs analyses. The rows and maps are read from the run directory and
    from the folders `also` names, where the other ranks of a run over many processes wrote theirs."""
    written = already_written(cases, predictions, technique_names, parsed_targets, class_names, run_dir, options)
    rows: dict[int, list[list[str]]] = {}
    collected: dict[int, list] = {}
    for root in (run_dir.root, *also):
        for index, found in (finished_rows(root, metrics_header) if metrics_header else {}).items():
            rows.setdefault(index, []).extend(found)
        for index, found in (finished_maps(root) if collects_maps else {}).items():
            collected.setdefault(index, []).extend(found)
    finished = Finished()
    for row, record in written.items():
        index = int(predictions.indices[row])
        targets = case_targets(record.case, predictions, parsed_targets)
        predicted_rows = sum(target.explains_prediction for target in targets)
        if metrics_header and len(rows.get(index, [])) != len(technique_names) * len(targets):
            continue
        if collects_maps and len(collected.get(index, [])) != len(technique_names) * predicted_rows:
            continue
        finished.explained[row] = record
        finished.metric_rows += rows.get(index, [])
        for entry, shrunk in collected.get(index, []):
            finished.map_entries.append(entry)
            finished.maps.append(shrunk)
    return finished
