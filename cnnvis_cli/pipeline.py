"""One run, stage by stage: model -> test set -> predictions -> selection -> heatmaps -> summary.

Each stage writes its own artefact into the run directory as it goes. Nothing here imports Hydra: tests
call `run(checks.load_run_config(cfg), folder)` directly.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnvis_cli import __version__
from cnnvis_cli.background import default_threads
from cnnvis_cli.cache import FILES, PredictionCache, prediction_key
from cnnvis_cli.channels import describe_channels
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
from cnnvis_cli.device import device_of_rank, resolve_device
from cnnvis_cli.embeddings import FeatureTap, classifier_head
from cnnvis_cli.errors import UserError, for_terminal
from cnnvis_cli.exemplars import ExemplarCollector
from cnnvis_cli.explain import Explained, RenderOptions, case_targets, explain_cases
from cnnvis_cli.fused import KEPT_FILE, Key, SharedForward, kept_bytes, kept_from_bytes, worth_sharing
from cnnvis_cli.inference import (
    Predictions,
    UnreadablePredictions,
    class_name,
    concat_predictions,
    normalise,
    predict,
    prediction_header,
    predictions_bytes,
    predictions_from_bytes,
    refuse_unreadable,
)
from cnnvis_cli.metrics import METRICS_FILE, MetricRecorder, finished_rows
from cnnvis_cli.metrics.counterfactual import CounterfactualOptions
from cnnvis_cli.models import LoadedModel, load_model, place_model, resolve_target_layer
from cnnvis_cli.output import stdout_to_stderr
from cnnvis_cli.patterns import MAP_ANALYSES, MAPS_FILE, MAPS_HEADER, MapCollector, find_patterns, finished_maps
from cnnvis_cli.progress import share_progress
from cnnvis_cli.report import write_report
from cnnvis_cli.resume import Finished, finished_work
from cnnvis_cli.run_dir import RunDir, read_stream
from cnnvis_cli.sanity import cascading_randomisation, compare_maps, record_sanity
from cnnvis_cli.selection import Case, Selection, select
from cnnvis_cli.slices import describe_slices, find_slices
from cnnvis_cli.targets import deepest_top, parse_targets
from cnnvis_cli.techniques import NORMALISATION, Technique, TechniqueContext, build_technique
from cnnvis_cli.techniques.base import inputs_per_pass
from cnnvis_cli.world import SINGLE, RankFailed, StoreBoard, World, balance, shard

log = logging.getLogger("cnnvis")
PREDICTIONS_NPZ = "predictions.npz"  # the predictions at full precision, for resuming
RANKS_DIR = ".ranks"  # while a run over many processes runs: each rank's own part of the shared files


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # one per selected sample, for JSON lines


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, or another rank that stopped (`reason`), after summary.json has recorded where."""

    def __init__(self, run_dir: Path, reason: str | None = None) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.reason = reason


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


def run(cfg: RunConfig, output_dir: Path, world: World = SINGLE) -> RunResult:
    """Run every stage of `cfg` into `output_dir`, as this process's part of `world`. On Ctrl-C, or when
    another rank stops, `summary.json` says where the run stopped and how to resume it; with `cfg.resume`,
    finished work found in `output_dir` is reused. Only rank 0's result holds the summary and records."""
    run_dir = RunDir(output_dir)
    stages = Stages()
    try:
        with run_dir.held() if world.main else nullcontext():
            return _run(cfg, run_dir, stages, world)
    except (KeyboardInterrupt, RankFailed) as stop:
        reason = str(stop) if isinstance(stop, RankFailed) else world.watchdog.failure if world.watchdog else None
        if reason is None:
            world.fail("interrupted (Ctrl-C)")  # the other ranks stop now, not at their heartbeat timeout
        if world.main:
            run_dir.write_json("summary.json", {
                "status": "interrupted", "interrupted_in": stages.current, "reason": reason or "interrupted",
                "started": stages.started.isoformat(timespec="seconds"),
                "interrupted": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": stages.seconds, "resume": f"cnnvis run resume={run_dir.root}",
            })
        raise Interrupted(run_dir.root, reason) from None
    finally:
        share_progress(None)


def run_as_rank(world: World, cfg: RunConfig, output_dir: Path) -> None:
    """One rank (not 0) of a run that `devices=N` spawned: its log goes to `cnnvis.rankR.log` in the run
    directory, and its warnings, marked with the rank, to standard error."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    for handler, level in ((logging.StreamHandler(), logging.WARNING),
                           (logging.FileHandler(output_dir / f"cnnvis.rank{world.rank}.log"), logging.INFO)):
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank {world.rank}][%(levelname)s] %(message)s"))
        root.addHandler(handler)
    with stdout_to_stderr():  # standard output is rank 0's: the run directory, or the JSON lines
        run(cfg, output_dir, world)


def _run(cfg: RunConfig, run_dir: RunDir, stages: Stages, world: World) -> RunResult:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = device_of_rank(resolve_device(cfg.device), world.local_rank)
    world.use(device)
    if world.size > 1:
        log.info("%s: process %d on %s", world.label, os.getpid(), device)
    source = open_source(cfg.dataset)
    loaded = load_model(cfg.model)
    place_model(loaded, device, cfg.model)
    class_names = _class_names(loaded, source.class_names)
    label_map = label_mapping(source, loaded.class_names, loaded.num_classes)
    _check_labels(source.highest_label(), len(label_map) if label_map is not None else loaded.num_classes)
    unmatched = unmatched_classes(source, label_map)
    if unmatched:
        log.warning("%d dataset classes are not classes of the model; their samples count as unlabelled: %s",
                    len(unmatched), ", ".join(unmatched[:10]) + (", ..." if len(unmatched) > 10 else ""))
    parsed_targets = parse_targets(cfg.targets, class_names)
    if "counterfactual" in cfg.metrics and "pred" not in cfg.targets:
        log.warning("metrics=[counterfactual] tests the maps of the predicted class, and targets=%s has none; "
                    "add pred: targets=[pred,true]", "[" + ",".join(cfg.targets) + "]")
    indices = subset_indices(len(source), cfg.dataset.limit, cfg.dataset.seed)
    layers = [resolve_target_layer(loaded.module, name, loaded.layers) for name in cfg.technique.layers] \
        if cfg.technique.layers else [loaded.target_layer]
    techniques = _techniques(cfg, loaded, layers, device)
    size = loaded.preprocess.input_size
    # the label test's model is loaded now (on the CPU until the test), so that a file that does not fit stops
    # the run before any work
    shuffled = load_model(replace(cfg.model, checkpoint=cfg.sanity_label_model)).module \
        if cfg.sanity and cfg.sanity_label_model and world.main else None
    for layer in loaded.layers:
        if layer.name in layers and layer.calls > 1 and any(t.uses_layers for t in techniques):
            log.warning("layer %s is one module called %d times per forward pass (a shared activation, say); the "
                        "CAMs explain its last call (shape %s); name another layer with model.target_layer=NAME",
                        layer.name, layer.calls, " x ".join(map(str, layer.shape)))
    log.info("model %s (%d classes, target layer %s) on %s; %d test samples from %s%s",
             loaded.name, loaded.num_classes, ", ".join(layers), device, len(indices), cfg.dataset.name,
             f"; {world.size} processes ({world.backend})" if world.size > 1 else "")
    stages.finish("inference")

    def loader(selected: list[int], batch_size: int):
        test_set = SampleSet(source, loaded.preprocess, selected, label_map)
        return make_loader(test_set, batch_size, cfg.dataset.num_workers, pin_memory=device.type == "cuda")

    board = StoreBoard(world, {"inference": len(indices)} if world.main else None) if world.size > 1 else None
    share_progress(board)  # one bar per stage for the whole run, on rank 0
    keep_k = max(cfg.topk, cfg.selection.topk, deepest_top(parsed_targets), cfg.render.topn)
    tracked = tuple(target for target in parsed_targets if isinstance(target, int))  # classes named in targets
    cache = PredictionCache(Path(cfg.cache).expanduser()) if cfg.cache and not cfg.resume else None
    key = prediction_key(cfg, loaded.preprocess, source, indices, class_names, label_map, keep_k, tracked, device) \
        if cache and world.main else None
    cached = cache.load(key) if cache and key else None
    head = classifier_head(loaded.module, loaded.preprocess.input_size) if "slices" in cfg.analysis else None
    predictions = kept = claim = None
    try:
        if world.main:
            if cache and key and cached is None:
                claim, cached = cache.claim(key)  # or another run's predictions, computed while this one waited
            predictions, cached = _stored_predictions(cfg, run_dir, cache, key, cached)
        shared = None
        if world.share(predictions is None):  # rank 0 found no predictions to reuse: every rank predicts its shard
            cells = sum(layer.shape[-2] * layer.shape[-1] for layer in loaded.layers if layer.name in layers)
            if worth_sharing(cfg.selection, len(indices), techniques, parsed_targets, cells,
                             cfg.amp and device.type == "cuda"):
                shared = SharedForward(techniques, parsed_targets, keep_k)
                if world.main:
                    log.info("every sample is explained: the inference pass also computes the maps of %s",
                             ", ".join(technique.name for technique in techniques))
            mine = shard(len(indices), world.size, world.rank)
            part_csv = "predictions.csv" if world.size == 1 else f"{RANKS_DIR}/{world.rank}/predictions.csv"
            tap = FeatureTap(loaded.module, head) if "slices" in cfg.analysis else None
            exemplars = ExemplarCollector(loaded.module, layers[0]) if "channels" in cfg.analysis else None
            with run_dir.csv_stream(part_csv, prediction_header(cfg.topk, source.extra_columns)) as csv, \
                    tap or nullcontext(), exemplars or nullcontext():
                part = predict(
                    loaded.module, loader([indices[i] for i in mine], cfg.dataset.batch_size), loaded.preprocess,
                    device,
                    class_names=class_names, topk=cfg.topk, keep_k=keep_k, tracked=tracked, csv=csv,
                    extra_columns=source.extra_columns, amp=cfg.amp, total=len(mine),
                    show_progress=cfg.progress and world.main, sample_id=source.sample_id, strict=cfg.strict,
                    forward=shared, features=tap, exemplars=exemplars,
                )
            parts = world.gather((part, shared.kept if shared is not None else None))
            if world.main:
                predictions = concat_predictions([predicted for predicted, _ in parts])
                if world.size > 1:
                    _merge_csv_parts(run_dir, "predictions.csv", world.size)
                if shared is not None:
                    kept = _merged_kept([maps for _, maps in parts])
                    run_dir.write_bytes(KEPT_FILE, kept_bytes(kept))
                _write_errors(run_dir, predictions)
                run_dir.write_bytes(PREDICTIONS_NPZ, predictions_bytes(predictions))
                if cache and key:
                    cache.store(key, {name: run_dir.path(name).read_bytes() for name in FILES})
    finally:
        if claim is not None:  # also when the inference failed: a parallel job waiting for it computes itself
            claim.release()
    if world.main and cfg.resume and kept is None and (run_dir.root / KEPT_FILE).is_file():
        kept = kept_from_bytes(run_dir.path(KEPT_FILE).read_bytes())  # the maps the first run drew from
        if kept is None:
            log.warning("the run's %s cannot be read; its maps are computed again", KEPT_FILE)
    stages.finish("selection")

    options = RenderOptions(cfg.render.colormap, cfg.render.alpha, cfg.save_maps, cfg.render.panels, cfg.render.zoom,
                            cfg.render.zoom_threshold, cfg.render.topn, cfg.render.panel_size,
                            default_threads() if cfg.render.threads is None else cfg.render.threads)
    has_cue = "cue_box" in source.extra_columns
    metrics_header = MetricRecorder.header(cfg.metrics, has_cue) if cfg.metrics else None
    selection, finished, shares = None, Finished(), None
    if world.main:
        if cfg.strict:  # also for predictions read back, which recorded their unreadable images
            refuse_unreadable(predictions.bad)
        selection = select(predictions, cfg.selection)
        _write_selected(run_dir, predictions, selection, class_names)
        if cfg.resume:  # what the attempts before finished, by any of their ranks
            finished = finished_work(selection.cases, predictions, [t.name for t in techniques], parsed_targets,
                                     class_names, run_dir, options, metrics_header, bool(cfg.analysis),
                                     also=rank_parts(run_dir.root))
            if finished.explained:
                log.info("resuming: %d of %d selected samples already explained", len(finished.explained),
                         len(selection.cases))
        todo = [case for case in selection.cases if case.row not in finished.explained]
        say_estimates(techniques, explanation_estimates(  # each rank explains its share at the same time
            techniques, torch.zeros((1, 3, size, size), device=device), -(-len(todo) // world.size),
            inputs_per_pass(techniques_context(cfg, loaded, layers))), len(todo), device)
        shares = explanation_shares(todo, predictions, parsed_targets, kept, world.size)
        if board is not None:
            board.wholes["heatmaps"] = len(todo)
    # the selection, split so that every rank has as many maps (samples x targets) to make as the others
    predictions, todo, kept = world.scatter(shares)
    stages.finish("explanation")

    # rank 0 streams metrics.csv and patterns/maps.csv, the other ranks their own parts, which rank 0 then reads
    streams = RunDir(run_dir.path(RANKS_DIR, str(world.rank))) if not world.main else run_dir
    with ExitStack() as stack:
        if not world.main:
            world.meet()  # no rank writes its part before rank 0 has taken in the parts of the attempts before
        recorder = collector = None
        if cfg.analysis:
            collector = MapCollector(stack.enter_context(streams.csv_stream(MAPS_FILE, MAPS_HEADER)))
            if finished.maps:
                collector.keep(torch.stack(finished.maps), finished.map_entries)
        if metrics_header:
            csv = stack.enter_context(streams.csv_stream(METRICS_FILE, metrics_header))
            recorder = MetricRecorder(cfg.metrics, cfg.metrics_steps, loaded.preprocess,
                                      inputs_per_pass(techniques_context(cfg, loaded, layers)), csv, has_cue,
                                      CounterfactualOptions(cfg.counterfactual.fill, cfg.counterfactual.top_percent,
                                                            cfg.counterfactual.draws, cfg.render.zoom_threshold,
                                                            cfg.seed))
            recorder.keep(finished.metric_rows)
        if world.main:
            for part in rank_parts(run_dir.root):  # an earlier attempt's parts, now in rank 0's files
                shutil.rmtree(part, ignore_errors=True)
            world.meet()
        fresh = explain_cases(
            loader([int(predictions.indices[case.row]) for case in todo], cfg.explain_batch_size), todo,
            predictions, techniques, parsed_targets, class_names, loaded.preprocess, device, run_dir, options,
            source=source, show_progress=cfg.progress and world.main, recorder=recorder, collector=collector,
            kept=kept,
        ) if todo or world.size > 1 else []  # (a rank with nothing to do still says so to the bar)
        if not world.main:
            stack.close()  # the other ranks' parts are whole before rank 0 reads them
        everyone = world.gather(fresh)
        if not world.main:
            world.meet()  # the run ends when rank 0 has written its shared files
            return RunResult(run_dir.root, {})
        fresh = [item for part in everyone for item in part]
        for part in rank_parts(run_dir.root):
            if recorder is not None:
                recorder.keep([row for rows in finished_rows(part, metrics_header).values() for row in rows])
            if collector is not None:
                entries = [entry for found in finished_maps(part).values() for entry in found]
                if entries:
                    collector.keep(torch.stack([shrunk for _, shrunk in entries]), [entry for entry, _ in entries])
    shutil.rmtree(run_dir.root / RANKS_DIR, ignore_errors=True)  # all in rank 0's files now: read once, not twice
    by_row = {**finished.explained, **{item.case.row: item for item in fresh}}
    explained = [by_row[case.row] for case in selection.cases]
    # in selection order, then technique order, whichever rank or batch made a row (the same for any world)
    place = {int(predictions.indices[case.row]): number for number, case in enumerate(selection.cases)}
    order = {technique.name: number for number, technique in enumerate(techniques)}
    if metrics_header:
        _sort_stream(run_dir, METRICS_FILE, metrics_header, lambda row: (place[int(row[0])], order[row[2]]))
    if cfg.analysis:
        _sort_stream(run_dir, MAPS_FILE, MAPS_HEADER, lambda row: (place[int(row[1])], order[row[0]]))
    sanity = None
    if cfg.sanity:
        stages.finish("sanity")
        sanity = _sanity(cfg, loaded, shuffled, layers, techniques, selection, predictions, device, run_dir,
                         lambda chosen: loader(chosen, cfg.explain_batch_size))
    stages.finish("report")

    summary = _summary(cfg, loaded, layers, techniques, device, predictions, selection, explained, stages.seconds,
                       stages.started)
    summary["predictions_from_cache"] = None if cached is None else str(cache.entry(key))
    summary["processes"] = world.size  # world.py: ranks that shared the run's work
    summary["maps_from_inference_pass"] = kept is not None  # fused.py: one forward pass served both stages
    summary["dataset_classes_not_in_model"] = unmatched  # their samples counted as unlabelled
    if recorder is not None:
        summary["metrics"] = {"names": cfg.metrics, "steps": cfg.metrics_steps, "per_technique": recorder.summary()}
        if "counterfactual" in cfg.metrics:
            summary["counterfactual"] = {"fill": cfg.counterfactual.fill, "top_percent": cfg.counterfactual.top_percent,
                                         "draws": cfg.counterfactual.draws,
                                         "per_technique": recorder.counterfactual_summary()}
    if sanity is not None:
        summary["sanity"] = sanity

    def write_file(path: str, data: bytes) -> str:
        run_dir.write_bytes(path, data)
        return path

    if collector is not None:
        collector.sort({int(predictions.indices[case.row]): place for place, case in enumerate(selection.cases)})
    if "slices" in cfg.analysis:
        features = f"the input of its last linear layer ({head})" if head else \
            "its class scores (the model ends in no linear layer)"
        summary["slices"] = describe_slices(
            find_slices(predictions.embeddings, predictions.labels, predictions.predicted, cfg.seed), predictions,
            class_names, features, collector, recorder.rows if recorder is not None else [], write_file)
    if "channels" in cfg.analysis:
        summary["channels"] = describe_channels(
            loaded.module, layers[0], predictions, class_names, loaded.preprocess, source, device,
            lambda chosen: loader(chosen, cfg.explain_batch_size), write_file)
    if "class_images" in cfg.analysis:
        from cnnvis_cli.visualise.confusions import describe_class_images
        from cnnvis_cli.visualise.render import Pixels

        summary["class_images"] = describe_class_images(
            loaded.module, predictions, class_names, size=cfg.visualise.size or loaded.preprocess.input_size,
            pixels=Pixels(loaded.preprocess.mean, loaded.preprocess.std), layer=layers[0],
            layouts={info.name: info.layout for info in loaded.layers}, channels=summary.get("channels"),
            options=cfg.visualise, seed=cfg.seed, progress=cfg.progress, write=write_file)
    if collector is not None and set(cfg.analysis) & set(MAP_ANALYSES):
        summary["patterns"] = find_patterns(collector, [t.name for t in techniques], cfg.analysis, cfg.analysis_groups,
                                            cfg.seed, write_file)
    if cfg.report:
        write_report(run_dir.root, summary)
    stages.finish("done")
    summary["seconds"] = {**stages.seconds, "total": round(sum(stages.seconds.values()), 3)}
    run_dir.write_json("summary.json", summary)
    world.meet()
    records = [_record(item, predictions, class_names, source, run_dir.root) for item in explained]
    return RunResult(run_dir.root, summary, records)


def _stored_predictions(cfg: RunConfig, run_dir: RunDir, cache: PredictionCache | None, key: dict | None,
                        cached: dict[str, bytes] | None) -> tuple[Predictions | None, dict[str, bytes] | None]:
    """The predictions a resumed run made before, else those of the cache (copied into the run directory);
    with the cache entry they came from."""
    stored = run_dir.root / PREDICTIONS_NPZ
    if cfg.resume and stored.is_file() and (run_dir.root / "predictions.csv").is_file():
        predictions = _readable(stored.read_bytes(), f"the run's {PREDICTIONS_NPZ}")
        if predictions is not None:
            log.info("resuming: reusing the %d predictions of %s", len(predictions), run_dir.root)
            return predictions, cached
    if cached is None:
        return None, None
    predictions = _readable(cached[PREDICTIONS_NPZ], f"the cached predictions at {cache.entry(key)}")
    if predictions is None:
        cache.discard(key)  # replaced by this run's
        return None, None
    for name, data in cached.items():
        run_dir.write_bytes(name, data)
    _write_errors(run_dir, predictions)
    log.info("inference skipped: reusing the %d predictions cached by an earlier run with the same model, "
             "weights, data and preprocessing (%s)", len(predictions), cache.entry(key))
    return predictions, cached


def rank_parts(root: Path) -> list[Path]:
    """The folders where ranks 1, 2, ... of this or an earlier attempt wrote their parts, in rank order."""
    folder = root / RANKS_DIR
    ranks = [path for path in folder.iterdir() if path.name.isdigit()] if folder.is_dir() else []
    return sorted((path for path in ranks if path.name != "0"), key=lambda path: int(path.name))


def _merge_csv_parts(run_dir: RunDir, name: str, size: int) -> None:
    """`name` from each rank's part, in rank order, with one header."""
    texts = [run_dir.path(RANKS_DIR, str(rank), name).read_bytes() for rank in range(size)]
    run_dir.write_bytes(name, texts[0] + b"".join(text.partition(b"\n")[2] for text in texts[1:]))


def _sort_stream(run_dir: RunDir, name: str, header: list[str], key) -> None:
    """Rewrite the CSV file `name` with its rows sorted (stably) by `key`."""
    rows = sorted(read_stream(run_dir.path(name), header), key=key)
    with run_dir.csv_stream(name, header) as csv:
        csv.write(rows)


def _merged_kept(parts: list[dict[str, dict[Key, list[np.ndarray]]]]) -> dict[str, dict[Key, list[np.ndarray]]]:
    merged: dict[str, dict[Key, list[np.ndarray]]] = {}
    for part in parts:
        for technique, maps in part.items():
            merged.setdefault(technique, {}).update(maps)
    return merged


def explanation_shares(todo: list[Case], predictions: Predictions, parsed_targets: list[str | int],
                       kept: dict[str, dict[Key, list[np.ndarray]]] | None, size: int) -> list[tuple]:
    """What each rank explains: the predictions, its contiguous part of `todo` (balanced by rows, samples x
    targets), and the maps the inference stage kept for that part."""
    weights = [max(1, len(case_targets(case, predictions, parsed_targets))) for case in todo]
    shares = []
    for part in balance(weights, size):
        cases = todo[part.start:part.stop]
        mine = kept if size == 1 else None
        if kept is not None and size > 1:
            indices = {int(predictions.indices[case.row]) for case in cases}
            mine = {name: {key: maps[key] for key in maps if key[0] in indices} for name, maps in kept.items()}
        shares.append((predictions, cases, mine))
    return shares


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

