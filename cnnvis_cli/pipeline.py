"""One run, stage by stage: model -> test set -> predictions -> selection -> heatmaps -> summary.

Each stage writes its own artefact into the run directory as it goes. Nothing here imports Hydra: tests
call `run(checks.load_run_config(cfg), folder)` directly.
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnvis_cli import __version__
from cnnvis_cli.background import default_threads
from cnnvis_cli.cache import FILES, PredictionCache, prediction_key
from cnnvis_cli.config import RunConfig
from cnnvis_cli.cost import explanation_estimates, say_estimates
from cnnvis_cli.data import (
    SampleSet,
    Source,
    label_mapping,
    make_loader,
    open_source,
    printable,
    subset_indices,
    unmatched_classes,
)
from cnnvis_cli.device import resolve_device
from cnnvis_cli.errors import UserError, for_terminal
from cnnvis_cli.explain import Explained, RenderOptions, explain_cases
from cnnvis_cli.fused import KEPT_FILE, SharedForward, kept_bytes, kept_from_bytes, worth_sharing
from cnnvis_cli.inference import (
    Predictions,
    UnreadablePredictions,
    class_name,
    normalise,
    predict,
    prediction_header,
    predictions_bytes,
    predictions_from_bytes,
    refuse_unreadable,
)
from cnnvis_cli.metrics import METRICS_FILE, MetricRecorder
from cnnvis_cli.models import LoadedModel, load_model, resolve_target_layer
from cnnvis_cli.patterns import MAPS_FILE, MAPS_HEADER, MapCollector, find_patterns
from cnnvis_cli.report import write_report
from cnnvis_cli.resume import Finished, finished_work
from cnnvis_cli.run_dir import RunDir
from cnnvis_cli.sanity import cascading_randomisation, compare_maps, record_sanity
from cnnvis_cli.selection import Selection, select
from cnnvis_cli.targets import deepest_top, parse_targets
from cnnvis_cli.techniques import NORMALISATION, Technique, TechniqueContext, build_technique
from cnnvis_cli.techniques.base import inputs_per_pass

log = logging.getLogger("cnnvis")
PREDICTIONS_NPZ = "predictions.npz"  # the predictions at full precision, for resuming


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # one per selected sample, for JSON lines


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after its summary.json has recorded where."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class Stages:
    """Which stage a run is in, and how long each finished stage took."""

    def __init__(self) -> None:
        self.started = datetime.now(UTC)
        self.current = "setup"
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def finish(self, next_stage: str) -> None:
        now = time.perf_counter()
        self.seconds[self.current] = round(now - self._clock, 3)
        self.current, self._clock = next_stage, now


def run(cfg: RunConfig, output_dir: Path) -> RunResult:
    """Run every stage of `cfg` into `output_dir`. On Ctrl-C, `summary.json` says where the run stopped and
    how to resume it; with `cfg.resume`, finished work found in `output_dir` is reused."""
    run_dir = RunDir(output_dir)
    stages = Stages()
    try:
        with run_dir.held():
            return _run(cfg, run_dir, stages)
    except KeyboardInterrupt:
        run_dir.write_json("summary.json", {
            "status": "interrupted", "interrupted_in": stages.current,
            "started": stages.started.isoformat(timespec="seconds"),
            "interrupted": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": stages.seconds, "resume": f"cnnvis run resume={run_dir.root}",
        })
        raise Interrupted(run_dir.root) from None


def _run(cfg: RunConfig, run_dir: RunDir, stages: Stages) -> RunResult:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = resolve_device(cfg.device)
    source = open_source(cfg.dataset)
    loaded = load_model(cfg.model)
    loaded.module.to(device)
    class_names = _class_names(loaded, source.class_names)
    label_map = label_mapping(source, loaded.class_names, loaded.num_classes)
    _check_labels(source.highest_label(), len(label_map) if label_map is not None else loaded.num_classes)
    unmatched = unmatched_classes(source, label_map)
    if unmatched:
        log.warning("%d dataset classes are not classes of the model; their samples count as unlabelled: %s",
                    len(unmatched), ", ".join(unmatched[:10]) + (", ..." if len(unmatched) > 10 else ""))
    parsed_targets = parse_targets(cfg.targets, class_names)
    indices = subset_indices(len(source), cfg.dataset.limit, cfg.dataset.seed)
    layers = [resolve_target_layer(loaded.module, name, loaded.layers) for name in cfg.technique.layers] \
        if cfg.technique.layers else [loaded.target_layer]
    techniques = _techniques(cfg, loaded, layers, device)
    # the label test's model is loaded now (on the CPU until the test), so that a file that does not fit stops
    # the run before any work
    shuffled = load_model(replace(cfg.model, checkpoint=cfg.sanity_label_model)).module \
        if cfg.sanity and cfg.sanity_label_model else None
    for layer in loaded.layers:
        if layer.name in layers and layer.calls > 1 and any(t.uses_layers for t in techniques):
            log.warning("layer %s is one module called %d times per forward pass (a shared activation, say); the "
                        "CAMs explain its last call (shape %s); name another layer with model.target_layer=NAME",
                        layer.name, layer.calls, " x ".join(map(str, layer.shape)))
    log.info("model %s (%d classes, target layer %s) on %s; %d test samples from %s",
             loaded.name, loaded.num_classes, ", ".join(layers), device, len(indices), cfg.dataset.name)
    stages.finish("inference")

    def loader(selected: list[int], batch_size: int):
        test_set = SampleSet(source, loaded.preprocess, selected, label_map)
        return make_loader(test_set, batch_size, cfg.dataset.num_workers, pin_memory=device.type == "cuda")

    stored = run_dir.root / PREDICTIONS_NPZ
    keep_k = max(cfg.topk, cfg.selection.topk, deepest_top(parsed_targets), cfg.render.topn)
    tracked = tuple(target for target in parsed_targets if isinstance(target, int))  # classes named in targets
    cache = PredictionCache(Path(cfg.cache).expanduser()) if cfg.cache and not cfg.resume else None
    key = prediction_key(cfg, loaded.preprocess, source, indices, class_names, label_map, keep_k, tracked, device) \
        if cache else None
    cached = cache.load(key) if cache and key else None
    predictions = None
    if cfg.resume and stored.is_file() and (run_dir.root / "predictions.csv").is_file():
        predictions = _readable(stored.read_bytes(), f"the run's {PREDICTIONS_NPZ}")
        if predictions is not None:
            log.info("resuming: reusing the %d predictions of %s", len(predictions), run_dir.root)
    if predictions is None and cached is not None:
        predictions = _readable(cached[PREDICTIONS_NPZ], f"the cached predictions at {cache.entry(key)}")
        if predictions is None:
            cache.discard(key)  # replaced by this run's
            cached = None
        else:
            for name, data in cached.items():
                run_dir.write_bytes(name, data)
            _write_errors(run_dir, predictions)
            log.info("inference skipped: reusing the %d predictions cached by an earlier run with the same model, "
                     "weights, data and preprocessing (%s)", len(predictions), cache.entry(key))
    shared = None
    if predictions is None:
        cells = sum(layer.shape[-2] * layer.shape[-1] for layer in loaded.layers if layer.name in layers)
        if worth_sharing(cfg.selection, len(indices), techniques, parsed_targets, cells,
                         cfg.amp and device.type == "cuda"):
            shared = SharedForward(techniques, parsed_targets, keep_k)
            log.info("every sample is explained: the inference pass also computes the maps of %s",
                     ", ".join(technique.name for technique in techniques))
        with run_dir.csv_stream("predictions.csv", prediction_header(cfg.topk, source.extra_columns)) as csv:
            predictions = predict(
                loaded.module, loader(indices, cfg.dataset.batch_size), loaded.preprocess, device,
                class_names=class_names, topk=cfg.topk, keep_k=keep_k, tracked=tracked, csv=csv,
                extra_columns=source.extra_columns, amp=cfg.amp, total=len(indices), show_progress=cfg.progress,
                sample_id=source.sample_id, strict=cfg.strict, forward=shared,
            )
        if shared is not None:
            run_dir.write_bytes(KEPT_FILE, kept_bytes(shared.kept))
        _write_errors(run_dir, predictions)
        run_dir.write_bytes(PREDICTIONS_NPZ, predictions_bytes(predictions))
        if cache and key:
            cache.store(key, {name: run_dir.path(name).read_bytes() for name in FILES})
    kept = shared.kept if shared is not None else None
    if cfg.resume and kept is None and (run_dir.root / KEPT_FILE).is_file():  # the maps the first run drew from
        kept = kept_from_bytes(run_dir.path(KEPT_FILE).read_bytes())
        if kept is None:
            log.warning("the run's %s cannot be read; its maps are computed again", KEPT_FILE)
    if cfg.strict:  # also for predictions read back, which recorded their unreadable images
        refuse_unreadable(predictions.bad)
    stages.finish("selection")

    selection = select(predictions, cfg.selection)
    _write_selected(run_dir, predictions, selection, class_names)
    stages.finish("explanation")

    options = RenderOptions(cfg.render.colormap, cfg.render.alpha, cfg.save_maps, cfg.render.panels, cfg.render.zoom,
                            cfg.render.zoom_threshold, cfg.render.topn, cfg.render.panel_size,
                            default_threads() if cfg.render.threads is None else cfg.render.threads)
    has_cue = "cue_box" in source.extra_columns
    metrics_header = MetricRecorder.header(cfg.metrics, has_cue) if cfg.metrics else None
    finished = finished_work(selection.cases, predictions, [t.name for t in techniques], parsed_targets, class_names,
                             run_dir, options, metrics_header, bool(cfg.analysis)) if cfg.resume else Finished()
    done = finished.explained
    if done:
        log.info("resuming: %d of %d selected samples already explained", len(done), len(selection.cases))
    todo = [case for case in selection.cases if case.row not in done]
    size = loaded.preprocess.input_size
    say_estimates(techniques, explanation_estimates(
        techniques, torch.zeros((1, 3, size, size), device=device), len(todo),
        inputs_per_pass(techniques_context(cfg, loaded, layers))), len(todo), device)
    with ExitStack() as stack:
        recorder = collector = None
        if cfg.analysis:
            collector = MapCollector(stack.enter_context(run_dir.csv_stream(MAPS_FILE, MAPS_HEADER)))
            if finished.maps:
                collector.keep(torch.stack(finished.maps), finished.map_entries)
        if metrics_header:
            csv = stack.enter_context(run_dir.csv_stream(METRICS_FILE, metrics_header))
            recorder = MetricRecorder(cfg.metrics, cfg.metrics_steps, loaded.preprocess,
                                      inputs_per_pass(techniques_context(cfg, loaded, layers)), csv, has_cue)
            recorder.keep(finished.metric_rows)
        fresh = explain_cases(
            loader([int(predictions.indices[case.row]) for case in todo], cfg.explain_batch_size), todo,
            predictions, techniques, parsed_targets, class_names, loaded.preprocess, device, run_dir, options,
            source=source, show_progress=cfg.progress, recorder=recorder, collector=collector, kept=kept,
        ) if todo else []
    by_row = {**done, **{item.case.row: item for item in fresh}}
    explained = [by_row[case.row] for case in selection.cases]
    sanity = None
    if cfg.sanity:
        stages.finish("sanity")
        sanity = _sanity(cfg, loaded, shuffled, layers, techniques, selection, predictions, device, run_dir,
                         lambda chosen: loader(chosen, cfg.explain_batch_size))
    stages.finish("report")

    summary = _summary(cfg, loaded, layers, techniques, device, predictions, selection, explained, stages.seconds,
                       stages.started)
    summary["predictions_from_cache"] = None if cached is None else str(cache.entry(key))
    summary["maps_from_inference_pass"] = kept is not None  # fused.py: one forward pass served both stages
    summary["dataset_classes_not_in_model"] = unmatched  # their samples counted as unlabelled
    if recorder is not None:
        summary["metrics"] = {"names": cfg.metrics, "steps": cfg.metrics_steps, "per_technique": recorder.summary()}
    if sanity is not None:
        summary["sanity"] = sanity
    if collector is not None:
        collector.sort({int(predictions.indices[case.row]): place for place, case in enumerate(selection.cases)})
        summary["patterns"] = find_patterns(collector, [t.name for t in techniques], cfg.analysis, cfg.analysis_groups,
                                            cfg.seed, lambda path, data: (run_dir.write_bytes(path, data), path)[1])
    if cfg.report:
        write_report(run_dir.root, summary)
    stages.finish("done")
    summary["seconds"] = {**stages.seconds, "total": round(sum(stages.seconds.values()), 3)}
    run_dir.write_json("summary.json", summary)
    records = [_record(item, predictions, class_names, source, run_dir.root) for item in explained]
    return RunResult(run_dir.root, summary, records)


def _sanity(cfg: RunConfig, loaded: LoadedModel, shuffled: torch.nn.Module | None, layers: list[str],
            techniques: list[Technique], selection: Selection, predictions: Predictions, device: torch.device,
            run_dir: RunDir, loader) -> dict[str, Any]:
    """The cascading randomisation test on the first `sanity_samples` selected samples, for their predicted
    classes: sanity.csv, and what summary.json and the report show."""
    rows = [case.row for case in selection.cases[:cfg.sanity_samples]]
    batches = [batch for batch in loader([int(predictions.indices[row]) for row in rows]) if batch.indices]
    if not batches:
        return {"samples": 0, "stages": [], "flagged": []}
    images = normalise(torch.cat([batch.images for batch in batches]).to(device), loaded.preprocess)
    by_index = {int(predictions.indices[row]): row for row in rows}
    order = [index for batch in batches for index in batch.indices]
    targets = torch.tensor([int(predictions.predicted[by_index[index]]) for index in order], device=device)
    image_rows = torch.arange(len(images), device=device)

    def explain(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        context = TechniqueContext(model, layers, cfg.technique, cfg.amp, loaded.preprocess.mean,
                                   loaded.preprocess.std, cfg.seed)
        return {technique.name: build_technique(technique.name.removesuffix("_smooth"), context).explain(
                    images, image_rows, targets).maps for technique in techniques}

    results = cascading_randomisation(loaded.module, explain, cfg.sanity_stages, cfg.seed)
    labels = None
    if shuffled is not None:
        labels = compare_maps(explain(loaded.module), explain(shuffled.to(device)))
    return record_sanity(results, labels, len(images), run_dir)


def techniques_context(cfg: RunConfig, loaded: LoadedModel, layers: list[str]) -> TechniqueContext:
    return TechniqueContext(loaded.module, layers, cfg.technique, cfg.amp, loaded.preprocess.mean,
                            loaded.preprocess.std, cfg.seed)


def _techniques(cfg: RunConfig, loaded: LoadedModel, layers: list[str], device: torch.device) -> list[Technique]:
    """The run's techniques, each checked against the model on one blank input before any heavy work."""
    context = techniques_context(cfg, loaded, layers)
    techniques = [build_technique(name, context) for name in cfg.techniques]
    size = loaded.preprocess.input_size
    example = torch.zeros((1, 3, size, size), device=device)
    for technique in techniques:
        technique.check(example)
    return techniques


def _class_names(loaded: LoadedModel, dataset_names: list[str] | None) -> list[str]:
    """The model's class names, else the dataset's when they fit the model's outputs, else class_0..."""
    if loaded.class_names is not None:
        return loaded.class_names
    if dataset_names is not None and len(dataset_names) == loaded.num_classes:
        return list(dataset_names)
    if loaded.class_names_from_dataset:
        count = "no class names" if dataset_names is None else f"{len(dataset_names)} classes"
        raise UserError(f"model.class_names=dataset but the dataset has {count} and the model "
                        f"{loaded.num_classes} outputs; set model.num_classes or list model.class_names")
    if dataset_names is not None:
        raise UserError(f"the dataset has {len(dataset_names)} classes but the model {loaded.num_classes} outputs "
                        "and no class names; set model.class_names (or model.num_classes to match)")
    return [f"class_{index}" for index in range(loaded.num_classes)]


def _check_labels(highest: int | None, label_count: int) -> None:
    if highest is not None and highest >= label_count:
        raise UserError(f"the dataset has label {highest} but only labels 0..{label_count - 1} fit the model; "
                        "check the labels, model.num_classes and model.class_names")


def _readable(data: bytes, what: str) -> Predictions | None:
    """Stored predictions, or None (and a log line) when they cannot be read: inference runs again."""
    try:
        return predictions_from_bytes(data)
    except UnreadablePredictions as error:
        log.warning("%s cannot be read (%s); running inference again", what, error)
        return None


def _write_errors(run_dir: RunDir, predictions: Predictions) -> None:
    with run_dir.csv_stream("errors.csv", ["index", "sample_id", "reason"]) as csv:
        csv.write([bad.index, bad.sample_id, bad.reason] for bad in predictions.bad)
    for bad in predictions.bad:
        log.warning("skipped unreadable sample %s: %s", for_terminal(bad.sample_id), for_terminal(bad.reason))


def _write_selected(run_dir: RunDir, predictions: Predictions, selection: Selection, class_names: list[str]) -> None:
    header = ["rank", "index", "sample_id", "label_name", "predicted_name", "confidence", "margin", "entropy",
              "loss", "reasons", *selection.flags]
    with run_dir.csv_stream("selected.csv", header) as csv:
        csv.write(
            [rank, int(predictions.indices[case.row]), predictions.sample_ids[case.row],
             class_name(class_names, int(predictions.labels[case.row])),
             class_names[int(predictions.predicted[case.row])],
             f"{predictions.confidence[case.row]:.6f}", f"{predictions.margin[case.row]:.6f}",
             f"{predictions.entropy[case.row]:.6f}",
             "" if np.isnan(predictions.loss[case.row]) else f"{predictions.loss[case.row]:.6f}",
             "|".join(case.reasons), *(int(flag[case.row]) for flag in selection.flags.values())]
            for rank, case in enumerate(selection.cases, start=1)
        )


def _summary(cfg: RunConfig, loaded: LoadedModel, layers: list[str], techniques: list[Technique],
             device: torch.device, predictions: Predictions, selection: Selection, explained: list[Explained],
             seconds: dict[str, float], started: datetime) -> dict[str, Any]:
    import cv2
    import hydra
    import torchvision

    accuracy = predictions.accuracy()
    selected_by_reason = {name: sum(name in case.reasons for case in selection.cases) for name in selection.flags}
    return {
        "status": "complete",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": loaded.name, "num_classes": loaded.num_classes, "target_layers": layers,
                  "input_size": loaded.preprocess.input_size},
        "dataset": cfg.dataset.name,
        "techniques": [technique.name for technique in techniques],
        "signed_techniques": [technique.name for technique in techniques if technique.signed],
        "device": str(device),
        "amp": cfg.amp and device.type == "cuda",
        "samples": len(predictions),
        "unreadable": len(predictions.bad),
        "labelled": int(predictions.labelled.sum()),
        "accuracy": None if accuracy is None else round(accuracy, 6),
        "selection": {
            "criteria": list(cfg.selection.criteria),
            "mode": cfg.selection.mode,
            "matched": selection.matched,
            "selected": len(selection.cases),
            "selected_by_reason": selected_by_reason,
        },
        "heatmaps": sum(len(item.overlays) for item in explained),
        "normalisation": NORMALISATION,
        "seconds": seconds,
        "versions": {
            "cnnvis": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }


def _record(item: Explained, predictions: Predictions, class_names: list[str], source: Source,
            root: Path) -> dict[str, Any]:
    row = item.case.row
    label = int(predictions.labels[row])
    path = source.path(int(predictions.indices[row]))
    return {
        "index": int(predictions.indices[row]),
        "id": predictions.sample_ids[row],
        "path": None if path is None else printable(str(path)),
        "label": class_name(class_names, label) or None,
        "prediction": class_names[int(predictions.predicted[row])],
        "confidence": round(float(predictions.confidence[row]), 6),
        "reasons": list(item.case.reasons),
        "overlays": [str(root / overlay) for overlay in item.overlays],
        "maps": [str(root / raw_map) for raw_map in item.maps],
        "panel": None if item.panel is None else str(root / item.panel),
    }

