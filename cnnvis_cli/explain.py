"""The explanation stage: re-read the selected images, compute every technique's maps for every target,
and write the overlays (and raw maps, when asked) as each batch finishes.

Maps stay on the device from the technique to the colour-mapped overlay; one copy per batch brings the
finished overlays to the CPU for PNG encoding. Signed techniques are drawn with a diverging colormap and
save their signed map (`save_maps=true`); the others draw and save their [0, 1] map. With panels on, each
sample also gets one panel (`panels.py`) with every overlay, zooms into the original and its top guesses.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress, TaskID

from cnnvis_cli.background import BackgroundWork
from cnnvis_cli.data import UNLABELLED, UNREADABLE, Batch, Source
from cnnvis_cli.fused import Key, kept_maps
from cnnvis_cli.inference import Predictions, class_name, normalise
from cnnvis_cli.memory import Halving, release_freed_memory
from cnnvis_cli.metrics import MetricRecorder, RowInfo
from cnnvis_cli.models import Preprocess
from cnnvis_cli.panels import PanelContent, Tile, render_panel, to_original, zoom_region
from cnnvis_cli.patterns import MapCollector, MapEntry
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.render import colormap_lut, diverging_lut, encode_png, overlay, signed_overlay
from cnnvis_cli.run_dir import RunDir, panel_path, safe_name
from cnnvis_cli.selection import Case
from cnnvis_cli.targets import Target, targets_for
from cnnvis_cli.techniques import Explanation, Technique
from cnnvis_cli.techniques.base import passes_reported_to
from cnnvis_cli.techniques.contrast import scoring_pair


@dataclass
class Explained:
    """The files written for one selected sample."""

    case: Case
    overlays: list[str] = field(default_factory=list)  # paths relative to the run directory
    maps: list[str] = field(default_factory=list)
    panel: str | None = None


@dataclass(frozen=True)
class RenderOptions:
    colormap: str
    alpha: float
    save_maps: bool
    panels: bool = False
    zoom: bool = True
    zoom_threshold: float = 0.5
    topn: int = 10
    panel_size: int = 224
    threads: int = 0  # for drawing, encoding and writing beside the model (background.py); 0: in the main thread


def heatmap_name(index: int, sample_id: str, true_name: str, target_name: str) -> str:
    """`000042-img_0007__true-oak__target-building`: sample, true class and target class, file-safe."""
    stem = safe_name(Path(sample_id).stem, 40)
    return f"{index:06d}-{stem}__true-{safe_name(true_name)}__target-{safe_name(target_name)}"


def explain_cases(batches: Iterable[Batch], cases: list[Case], predictions: Predictions,
                  techniques: list[Technique], parsed_targets: list[str | int], class_names: list[str],
                  preprocess: Preprocess, device: torch.device, run_dir: RunDir, options: RenderOptions,
                  source: Source | None = None, show_progress: bool = True,
                  recorder: MetricRecorder | None = None, collector: MapCollector | None = None,
                  kept: dict[str, dict[Key, list[np.ndarray]]] | None = None) -> list[Explained]:
    """Maps and overlays for every case, technique and target (and a panel per case when asked, which
    re-reads the original from `source` for its zooms), scoring every map with `recorder` and keeping the
    predicted-class maps in `collector` when given; a technique's maps that the inference stage `kept`
    (fused.py) are only upsampled. Returns what was written per case."""
    case_of_index = {int(predictions.indices[case.row]): case for case in cases}
    explained = {case.row: Explained(case) for case in cases}
    lut = colormap_lut(options.colormap, device)
    signed_lut = diverging_lut(device)
    halvings: dict[str, Halving] = {}
    colour_bars = _colour_bars(techniques, options.colormap, lut, signed_lut)
    with progress_bar(show_progress) as bar, BackgroundWork(options.threads) as work:
        task = bar.add_task("heatmaps", total=len(cases), unit="images")
        finished = 0  # images whose batch is done
        for batch_number, batch in enumerate(batches):
            release_freed_memory(batch_number)
            if not batch.indices:
                continue
            batch_cases = [case_of_index[index] for index in batch.indices]
            rows = [(position, target) for position, case in enumerate(batch_cases)
                    for target in case_targets(case, predictions, parsed_targets)]
            finished += len(batch.indices)
            if not rows:  # e.g. targets=[true] on unlabelled images
                bar.update(task, completed=finished)
                continue
            image_rows = torch.tensor([position for position, _ in rows], dtype=torch.long, device=device)
            target_classes = torch.tensor([target.class_index for _, target in rows], dtype=torch.long, device=device)
            images = batch.images.to(device, non_blocking=True)
            model_input = normalise(images, preprocess)
            drawn = []  # per technique: R overlays and R [0, 1] maps, on the CPU
            infos = _row_infos(rows, batch, batch_cases, predictions, class_names) if recorder or collector else []
            for number, technique in enumerate(techniques):
                # the bar moves within the batch as a many-pass technique's passes go
                share = len(batch.indices) / len(techniques)
                start = finished - len(batch.indices) + number * share
                bar.update(task, description=f"heatmaps ({technique.name})", completed=start)
                keys = [(batch.indices[position], target.class_index) for position, target in rows]
                maps = kept_maps(kept.get(technique.name) if kept else None, technique, keys,
                                 model_input.shape[-2:], device)
                if maps is not None:
                    explanation = Explanation(maps)
                else:
                    with passes_reported_to(_BarShare(bar, task, start, share)):
                        explanation = explain_targets(technique, model_input, rows, image_rows, target_classes,
                                                      halvings.setdefault(technique.name, Halving(technique.name)))
                measured: dict[str, list[float]] = {}
                if recorder is not None:
                    measured = _record_metrics(recorder, technique, model_input, rows, image_rows, target_classes,
                                               explanation.maps, infos, batch.extras)
                if explanation.signed is None:
                    pictures = overlay(images[image_rows], explanation.maps, lut, options.alpha)
                    raw_maps = explanation.maps
                else:
                    pictures = signed_overlay(images[image_rows], explanation.signed, signed_lut)
                    raw_maps = explanation.signed
                pictures = pictures.cpu().numpy()
                raw = raw_maps.cpu().numpy() if options.save_maps else None
                drawn.append((technique, pictures, explanation.maps.cpu().numpy() if options.panels else None,
                              hiding_findings(measured, len(rows))))
                overlays, map_paths = [], []
                for position, target in rows:
                    case = batch_cases[position]
                    path, map_path = output_paths(technique.name, batch.indices[position], case, target,
                                                  predictions, class_names)
                    explained[case.row].overlays.append(path)
                    overlays.append(path)
                    if raw is not None:
                        explained[case.row].maps.append(map_path)
                        map_paths.append(map_path)
                work.submit(_write_overlays, run_dir, overlays, pictures, map_paths, raw)
                if collector is not None:
                    _collect(collector, technique.name, explanation.maps, infos, overlays)
            if options.panels:
                pixels = images.permute(0, 2, 3, 1).cpu().numpy()
                for position, case in enumerate(batch_cases):
                    record = explained[case.row]
                    record.panel = panel_path(batch.indices[position], predictions.sample_ids[case.row])
                    work.submit(_write_panel, run_dir, record.panel, case, batch.indices[position], rows, position,
                                drawn, pixels[position], predictions, class_names, preprocess, source, options,
                                colour_bars)
            bar.update(task, completed=finished)
        bar.update(task, description="heatmaps")
    return [explained[case.row] for case in cases]


class _BarShare:
    """Moves a progress bar through one technique's share of a batch as its passes go, never backwards (a
    batch split after running out of GPU memory counts its passes again from 0)."""

    def __init__(self, bar: Progress, task: TaskID, start: float, share: float) -> None:
        self.bar, self.task, self.start, self.share, self.reached = bar, task, start, share, 0.0

    def __call__(self, done: int, total: int) -> None:
        self.reached = max(self.reached, min(1.0, done / max(total, 1)))
        self.bar.update(self.task, completed=self.start + self.share * self.reached)


def _collect(collector: MapCollector, technique: str, maps: torch.Tensor, infos: list[RowInfo],
             overlays: list[str]) -> None:
    """Keep a technique's predicted-class maps of a batch (rows described by `infos`, drawn to `overlays`)
    for the patterns across samples."""
    chosen = [row for row, info in enumerate(infos) if info.explains_prediction]
    collector.add(maps[chosen], [
        MapEntry(technique, infos[row].index, infos[row].sample_id, infos[row].true_class, infos[row].target_class,
                 infos[row].correct, overlays[row]) for row in chosen])


def _row_infos(rows: list[tuple[int, Target]], batch: Batch, batch_cases: list[Case], predictions: Predictions,
               class_names: list[str]) -> list[RowInfo]:
    """Who each row of a batch is, for the metrics and the patterns; the same for every technique."""
    infos = []
    for position, target in rows:
        row = batch_cases[position].row
        labelled = bool(predictions.labelled[row])
        infos.append(RowInfo(batch.indices[position], predictions.sample_ids[row], target.role,
                             target.name(class_names), bool(predictions.correct[row]) if labelled else None,
                             class_name(class_names, int(predictions.labels[row])),
                             int(predictions.labels[row]) if labelled else -1))
    return infos


def _write_overlays(run_dir: RunDir, paths: list[str], pictures: np.ndarray, map_paths: list[str],
                    raw: np.ndarray | None) -> None:
    """Encode and write one technique's overlays of a batch (and its raw maps, when kept)."""
    for path, picture in zip(paths, pictures, strict=True):
        run_dir.write_bytes(path, encode_png(picture))
    if raw is not None:
        for map_path, values in zip(map_paths, raw, strict=True):
            run_dir.write_bytes(map_path, _npy_bytes(values))


def _write_panel(run_dir: RunDir, path: str, case: Case, index: int, rows: list[tuple[int, Target]], position: int,
                 drawn: list, image: np.ndarray, predictions: Predictions, class_names: list[str],
                 preprocess: Preprocess, source: Source | None, options: RenderOptions, colour_bars: list) -> None:
    """Draw, encode and write one sample's panel."""
    content = _panel_content(case, index, rows, position, drawn, image, predictions, class_names, preprocess,
                             source, options, colour_bars)
    correct = bool(predictions.correct[case.row]) if predictions.labelled[case.row] else None
    run_dir.write_bytes(path, encode_png(render_panel(content, options.panel_size, options.zoom,
                                                      predicted_correct=correct)))


def _panel_content(case: Case, index: int, rows: list[tuple[int, Target]], position: int, drawn: list,
                   image: np.ndarray, predictions: Predictions, class_names: list[str],
                   preprocess: Preprocess, source: Source | None, options: RenderOptions,
                   colour_bars: list) -> PanelContent:
    """What one sample's panel shows, with the probabilities and ranks the inference stage kept."""
    label = int(predictions.labels[case.row])
    original = _original(source, index) if options.zoom else None
    tiles = []
    for technique, pictures, heat, findings in drawn:
        for row, (row_position, target) in enumerate(rows):
            if row_position != position:
                continue
            box, note = zoom_region(heat[row], options.zoom_threshold) if options.zoom else (None, "")
            zoom = None
            if box is not None and original is not None:
                x0, y0, x1, y1 = to_original(box, (original.shape[1], original.shape[0]), preprocess.resize_size,
                                             preprocess.input_size)
                zoom = original[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else None
            probability, rank = _standing(predictions, case.row, target.class_index)
            tiles.append(Tile(technique.name, target.role, target.name(class_names), rank, probability,
                              pictures[row], box, zoom, is_true=target.class_index == label and target.against is None,
                              note=note,
                              finding=findings[row]))
    guesses = zip(predictions.topk_classes[case.row][:options.topn], predictions.topk_probs[case.row], strict=False)
    top = [(class_names[c], float(p), int(c) == label, place) for place, (c, p) in enumerate(guesses, start=1)]
    if label != UNLABELLED:
        probability, rank = _standing(predictions, case.row, label)
        if rank > options.topn:  # the true class, with its rank, last
            top.append((class_names[label], probability, True, rank))
    true_name = class_name(class_names, label, "unlabelled")
    predicted = int(predictions.predicted[case.row])
    title = (f"#{index}   true: {true_name}   predicted: {class_names[predicted]} "
             f"({float(predictions.confidence[case.row]):.1%})   selected: {', '.join(case.reasons)}   "
             f"{predictions.sample_ids[case.row]}")  # the id last: a long path is what gets cut short
    return PanelContent(title, image, tiles, top, colour_bars)


def hiding_findings(measured: dict[str, list[float]], rows: int) -> list[tuple[str, bool]]:
    """Per row, what hiding the zoomed box did to a wrong prediction (metrics=[counterfactual]), for the
    panel: the words and whether the prediction turned right; ("", False) for rows not measured."""
    flips, to_true = measured.get("hide_box_flips"), measured.get("hide_box_to_true")
    changes = measured.get("hide_box_pred_change")
    if flips is None or to_true is None or changes is None:
        return [("", False)] * rows
    findings = []
    for flipped, right, change in zip(flips, to_true, changes, strict=True):
        if math.isnan(flipped):
            findings.append(("", False))
            continue
        outcome = "turns it right" if right == 1 else "changes the class" if flipped == 1 else "keeps the class"
        findings.append((f"box hidden: {outcome} ({change:+.0%})", right == 1))
    return findings


def _standing(predictions: Predictions, row: int, class_index: int) -> tuple[float, int]:
    """The probability and rank of a class a panel shows; the inference stage keeps every such class."""
    standing = predictions.standing(row, class_index)
    if standing is None:
        raise RuntimeError(f"the predictions kept no probability for class {class_index} of row {row}")
    return standing


def _colour_bars(techniques: list[Technique], colormap: str, lut: torch.Tensor,
                 signed_lut: torch.Tensor) -> list[tuple[str, np.ndarray, str, str]]:
    """The scales a panel explains: the heatmap colormap, and the diverging map of signed techniques."""
    bars = []
    if any(not technique.signed for technique in techniques):
        bars.append((f"heatmap ({colormap}): where the model looked", lut.cpu().numpy(), "low", "high"))
    if any(technique.signed for technique in techniques):
        bars.append(("attribution: blue speaks against the class, red for it", signed_lut.cpu().numpy(),
                     "against", "for"))
    return bars


def _original(source: Source | None, index: int) -> np.ndarray | None:
    """The sample's original image (full resolution, RGB), or None when it cannot be read again."""
    if source is None:
        return None
    try:
        return np.asarray(source.load(index).image.convert("RGB"))
    except UNREADABLE:
        return None


def explain_targets(technique: Technique, images: torch.Tensor, rows: list[tuple[int, Target]],
                    image_rows: torch.Tensor, target_classes: torch.Tensor, halving: Halving) -> Explanation:
    """The maps of every row: the class targets in one call, each contrast (predicted, true) pair in a call of
    its own over the images that have it, with the model scoring the pair (techniques/contrast.py)."""
    plain = [number for number, (_, target) in enumerate(rows) if target.against is None]
    pairs: dict[tuple[int, int], list[int]] = {}
    for number, (_, target) in enumerate(rows):
        if target.against is not None:
            pairs.setdefault((target.class_index, target.against), []).append(number)
    if not pairs:
        return explain_in_parts(technique, images, image_rows, target_classes, halving)
    parts: list[tuple[list[int], Explanation]] = []
    if plain:
        chosen = torch.tensor(plain, device=images.device)
        parts.append((plain, explain_in_parts(technique, images, image_rows[chosen], target_classes[chosen], halving)))
    for (target, against), numbers in pairs.items():
        positions = sorted({rows[number][0] for number in numbers})
        place = {position: local for local, position in enumerate(positions)}
        local_rows = torch.tensor([place[rows[number][0]] for number in numbers], device=images.device)
        with scoring_pair(technique.model, target, against):
            parts.append((numbers, explain_in_parts(technique, images[positions], local_rows,
                                                    torch.zeros_like(local_rows), halving)))
    order = torch.tensor([number for numbers, _ in parts for number in numbers], device=images.device)
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=images.device)
    maps = torch.cat([part.maps for _, part in parts])[back]
    signed = None if parts[0][1].signed is None else torch.cat([part.signed for _, part in parts])[back]
    return Explanation(maps, signed)


def _record_metrics(recorder: MetricRecorder, technique: Technique, images: torch.Tensor,
                    rows: list[tuple[int, Target]], image_rows: torch.Tensor, target_classes: torch.Tensor,
                    maps: torch.Tensor, infos: list[RowInfo], extras: list[dict[str, str]]) -> dict[str, list[float]]:
    """Score the maps of the class targets, and of the contrasts only with the metrics that read the map alone
    (a contrast's score is no class's probability); returns each column's values for every row."""
    measured: dict[str, list[float]] = {}
    for scores in (True, False):
        numbers = [number for number, (_, target) in enumerate(rows) if (target.against is None) == scores]
        if not numbers:
            continue
        chosen = torch.tensor(numbers, device=maps.device)
        found = recorder.record(technique.name, technique.model, images, image_rows[chosen], target_classes[chosen],
                                maps[chosen], [infos[number] for number in numbers], extras, scores=scores)
        for column, values in found.items():
            filled = measured.setdefault(column, [math.nan] * len(rows))
            for number, value in zip(numbers, values, strict=True):
                filled[number] = value
    return measured


def explain_in_parts(technique: Technique, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor,
                     halving: Halving) -> Explanation:
    """`technique.explain` over the batch, split into fewer images at a time when the GPU runs out of memory
    (rows are grouped by image, in image order)."""

    def part(images_part: slice) -> Explanation:
        rows = (image_rows >= images_part.start) & (image_rows < images_part.stop)
        return technique.explain(images[images_part], image_rows[rows] - images_part.start, targets[rows])

    parts = halving.run(len(images), part)
    if len(parts) == 1:
        return parts[0]
    signed = None if parts[0].signed is None else torch.cat([p.signed for p in parts])
    return Explanation(torch.cat([p.maps for p in parts]), signed)


def output_paths(technique: str, index: int, case: Case, target: Target, predictions: Predictions,
                 class_names: list[str]) -> tuple[str, str]:
    """Where one (sample, target) overlay and raw map of a technique go, relative to the run directory."""
    name = heatmap_name(index, predictions.sample_ids[case.row],
                        class_name(class_names, int(predictions.labels[case.row]), "unknown"),
                        target.name(class_names))
    return f"heatmaps/{technique}/{name}.png", f"maps/{technique}/{name}.npy"


def already_written(cases: list[Case], predictions: Predictions, technique_names: list[str],
                    parsed_targets: list[str | int], class_names: list[str], run_dir: RunDir,
                    options: RenderOptions) -> dict[int, Explained]:
    """The cases whose every file (overlays, raw maps, panel, as the options ask) is already in the run
    directory, by row: a resumed run skips them. Files are written atomically, so one that exists is whole."""
    done = {}
    for case in cases:
        index = int(predictions.indices[case.row])
        record = Explained(case, panel=panel_path(index, predictions.sample_ids[case.row]) if options.panels else None)
        for technique in technique_names:
            for target in case_targets(case, predictions, parsed_targets):
                path, map_path = output_paths(technique, index, case, target, predictions, class_names)
                record.overlays.append(path)
                if options.save_maps:
                    record.maps.append(map_path)
        files = [*record.overlays, *record.maps, *([record.panel] if record.panel else [])]
        if all((run_dir.root / file).is_file() for file in files):
            done[case.row] = record
    return done


def case_targets(case: Case, predictions: Predictions, parsed_targets: list[str | int]) -> list[Target]:
    """The targets a case is explained for (`targets=[...]`), duplicates merged."""
    label = int(predictions.labels[case.row])
    return targets_for(parsed_targets, int(predictions.predicted[case.row]),
                       None if label == UNLABELLED else label,
                       [int(c) for c in predictions.topk_classes[case.row]])


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()
