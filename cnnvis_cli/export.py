"""`cnnvis export RUN_DIR --to fiftyone`: a run as a FiftyOne dataset, to browse, filter and sort its
failures in the FiftyOne app. One sample per test sample, with its image (the file itself, or a PNG written
under RUN_DIR/fiftyone/images for a dataset without files, such as the demo's), `ground_truth` and
`prediction` (with its confidence) as classifications, `correct`, `margin`, `entropy`, `loss`, the
selection's reasons as tags and in `reasons`, and every map the run saved (`save_maps=true`) as a heatmap
field named TECHNIQUE_ROLE: `gradcam_pred`, `gradcam_true`, `gradcam_contrast`, or `gradcam_class_NAME` for
a class the run was asked to explain."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from cnnvis_cli.errors import UserError
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.run_dir import safe_name

log = logging.getLogger("cnnvis")
INSTALL = "pip install 'cnnvis[fiftyone]'"
_MAP_NAME = re.compile(r"(?P<index>\d{6})-.*__true-(?P<true>.*)__target-(?P<target>.*)")


def export_to_fiftyone(run: Path, name: str | None = None, overwrite: bool = False,
                       progress: bool = True) -> tuple[str, int, int]:
    """Write the run at `run` into a persistent FiftyOne dataset; its name, its samples and its heatmaps."""
    run = run.expanduser().resolve()
    if not (run / "predictions.csv").is_file() or not (run / ".hydra" / "config.yaml").is_file():
        raise UserError(f"{run} is not a finished cnnvis run directory (no predictions.csv or .hydra/config.yaml)")
    try:
        import fiftyone as fo
    except ImportError as error:
        raise UserError(f"exporting to FiftyOne needs the fiftyone package: {INSTALL}") from error
    name = name or f"cnnvis-{run.parent.name}-{run.name}"
    if fo.dataset_exists(name) and not overwrite:
        raise UserError(f"FiftyOne already has a dataset named {name}; choose another name with --name NAME, "
                        "or replace it with --overwrite")
    from cnnvis_cli.report import read_csv

    source = _run_source(run)
    reasons = {int(row["index"]): row["reasons"].split("|") for row in read_csv(run / "selected.csv")} \
        if (run / "selected.csv").is_file() else {}
    maps = saved_maps(run)
    images = run / "fiftyone" / "images"
    samples, heatmaps = [], 0
    rows = read_csv(run / "predictions.csv")
    with progress_bar(progress) as bar:
        task = bar.add_task("export", total=len(rows), unit="samples")
        for row in rows:
            index = int(row["index"])
            sample = fo.Sample(filepath=str(_image_path(source, index, row["sample_id"], images)),
                               tags=reasons.get(index, []))
            sample["cnnvis_id"], sample["index"] = row["sample_id"], index
            sample["prediction"] = fo.Classification(label=row["predicted_name"], confidence=float(row["confidence"]))
            if row["label_name"]:
                sample["ground_truth"] = fo.Classification(label=row["label_name"])
                sample["correct"] = row["correct"] == "1"
            for key in ("margin", "entropy", "loss"):
                if row.get(key):
                    sample[key] = float(row[key])
            sample["selected"] = index in reasons
            sample["reasons"] = reasons.get(index, [])
            for field, (array, value_range) in _heatmap_fields(maps.get(index, []), row).items():
                sample[field] = fo.Heatmap(map=array, range=value_range)
                heatmaps += 1
            samples.append(sample)
            bar.advance(task)
    dataset = fo.Dataset(name, overwrite=overwrite)
    dataset.persistent = True
    dataset.info = {"cnnvis_run": str(run)}
    dataset.add_samples(samples, progress=False)
    dataset.save()
    return name, len(samples), heatmaps


def saved_maps(run: Path) -> dict[int, list[tuple[str, str, Path]]]:
    """The run's saved maps by sample index: (technique, sanitised target name, file)."""
    found: dict[int, list[tuple[str, str, Path]]] = defaultdict(list)
    for path in sorted((run / "maps").glob("*/*.npy")):
        match = _MAP_NAME.fullmatch(path.stem)
        if match:
            found[int(match["index"])].append((path.parent.name, match["target"], path))
    return found


def _heatmap_fields(maps: list[tuple[str, str, Path]], row: dict[str, str]) -> dict[str, tuple[np.ndarray, list]]:
    """Each map as field name -> (array, value range): [0, 1], or a signed map's symmetric range."""
    predicted, true = safe_name(row["predicted_name"]), safe_name(row["label_name"]) if row["label_name"] else None
    fields = {}
    for technique, target, path in maps:
        array = np.load(path).astype(np.float32)
        peak = float(np.abs(array).max()) or 1.0
        value_range = [0.0, 1.0] if array.min() >= 0 and array.max() <= 1 else [-peak, peak]
        roles = [role for role, name in (("pred", predicted), ("true", true)) if target == name]
        if not roles:
            roles = ["contrast"] if true and target == safe_name(f"{row['predicted_name']} vs {row['label_name']}") \
                else [f"class_{target}"]
        for role in roles:
            fields[re.sub(r"\W", "_", f"{technique}_{role}")] = (array, value_range)
    return fields


def _run_source(run: Path):
    """The run's test set, opened from its own config."""
    from omegaconf import OmegaConf

    from cnnvis_cli.checks import load_run_config
    from cnnvis_cli.data import open_source

    return open_source(load_run_config(OmegaConf.load(run / ".hydra" / "config.yaml")).dataset)


def _image_path(source, index: int, sample_id: str, folder: Path) -> Path:
    """The sample's image file, or a PNG of it written under `folder` when the dataset has no files."""
    path = source.path(index)
    if path is not None:
        return Path(path).resolve()
    target = folder / f"{index:06d}-{safe_name(Path(sample_id).stem, 40)}.png"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        source.load(index).image.convert("RGB").save(target)
    return target
