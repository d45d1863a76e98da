"""Property-based tests: generated predictions drive the selection logic, generated files the image loader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnvis_cli.config import SelectionConfig
from cnnvis_cli.data import UNLABELLED, UNREADABLE, BadSample, ImageFolderSource, SampleSet, open_image
from cnnvis_cli.inference import Predictions
from cnnvis_cli.models import Preprocess
from cnnvis_cli.selection import CRITERIA, select


@st.composite
def predictions(draw) -> Predictions:
    size = draw(st.integers(0, 40))
    classes = draw(st.integers(2, 5))
    probs = np.array(draw(st.lists(st.lists(st.floats(0.01, 1.0), min_size=classes, max_size=classes),
                                   min_size=size, max_size=size)), dtype=np.float64).reshape(size, classes)
    probs = probs / probs.sum(axis=1, keepdims=True) if size else probs
    labels = np.array(draw(st.lists(st.integers(-1, classes - 1), min_size=size, max_size=size)), dtype=np.int64)
    order = np.argsort(-probs, axis=1, kind="stable") if size else np.empty((0, classes), dtype=np.int64)
    top = np.take_along_axis(probs, order, axis=1) if size else probs
    loss = np.where(labels >= 0, -np.log(probs[np.arange(size), np.maximum(labels, 0)]), np.nan) if size \
        else np.empty(0)
    entropy = -(probs * np.log(probs)).sum(axis=1) / np.log(classes) if size else np.empty(0)
    return Predictions(indices=np.arange(size), sample_ids=[f"s{i}" for i in range(size)], labels=labels,
                       predicted=order[:, 0] if size else np.empty(0, dtype=np.int64),
                       confidence=top[:, 0] if size else np.empty(0),
                       margin=(top[:, 0] - top[:, 1]) if size else np.empty(0), entropy=entropy, loss=loss,
                       topk_classes=order, topk_probs=top)


configs = st.builds(
    SelectionConfig,
    criteria=st.lists(st.sampled_from(sorted(CRITERIA)), min_size=1, max_size=3, unique=True),
    mode=st.sampled_from(["any", "all"]),
    threshold=st.floats(0, 1), margin=st.floats(0, 1), entropy=st.floats(0, 1), topk=st.integers(1, 3),
    max_samples=st.one_of(st.none(), st.integers(1, 50)), per_class_max=st.one_of(st.none(), st.integers(1, 5)),
    order=st.sampled_from(["least_confident", "highest_loss", "random"]), seed=st.integers(0, 5),
)


@given(predictions(), configs)
@settings(max_examples=300, deadline=None)
def test_selection_keeps_exactly_the_matching_rows_in_order_and_within_caps(p: Predictions,
                                                                           cfg: SelectionConfig) -> None:
    selection = select(p, cfg)
    rows = [case.row for case in selection.cases]
    flags = np.stack([selection.flags[name] for name in cfg.criteria]) if len(p) else np.zeros((1, 0), bool)
    matching = set(np.flatnonzero(flags.any(axis=0) if cfg.mode == "any" else flags.all(axis=0)).tolist())
    assert len(rows) == len(set(rows)) and set(rows) <= matching
    for case in selection.cases:  # each case names exactly the criteria it meets
        assert case.reasons == tuple(name for name in cfg.criteria if selection.flags[name][case.row])
    if cfg.max_samples is not None:
        assert len(rows) <= cfg.max_samples
    classes = [int(p.labels[r]) if p.labels[r] != UNLABELLED else int(p.predicted[r]) for r in rows]
    if cfg.per_class_max is not None:
        assert all(classes.count(c) <= cfg.per_class_max for c in set(classes))
    if cfg.max_samples is None and cfg.per_class_max is None:
        assert set(rows) == matching
    if cfg.order == "least_confident":
        assert all(a <= b for a, b in zip(p.confidence[rows], p.confidence[rows][1:], strict=False))
    if cfg.order == "highest_loss":
        losses = np.nan_to_num(p.loss[rows], nan=-np.inf)
        assert all(a >= b for a, b in zip(losses, losses[1:], strict=False))
    if "incorrect" in selection.flags:
        assert (selection.flags["incorrect"] == ((p.labels != UNLABELLED) & (p.predicted != p.labels))).all()


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "LA"]


@st.composite
def image_files(draw) -> tuple[bytes, tuple[int, int], bool]:
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # a format that cannot hold this mode
        image.convert("RGB").save(buffer, format=fmt)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1:]
    return data, size, damage != "none"


@given(image_files())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_loader_gives_rgb_at_the_files_size_or_a_recorded_skip(tmp_path: Path, file: tuple) -> None:
    data, size, damaged = file
    root = tmp_path / "data"
    (root / "cls").mkdir(parents=True, exist_ok=True)
    path = root / "cls" / "image.png"
    path.write_bytes(data)
    try:
        image = open_image(path)
    except UNREADABLE:
        image = None  # unreadable: the data set records it, below
    if not damaged:  # an intact file of any mode and format decodes, at its own size
        assert image is not None and image.size == size
    if image is not None:
        assert image.mode == "RGB"
    item = SampleSet(ImageFolderSource(root, [".png"]), Preprocess(16, 16, (0.5,) * 3, (0.5,) * 3), [0])[0]
    if image is None:
        assert isinstance(item, BadSample) and item.reason and item.sample_id == "cls/image.png"
    else:
        pixels, label, index, _ = item
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 16) and (label, index) == (0, 0)


def file_name_bytes() -> st.SearchStrategy[bytes]:
    """A file name of arbitrary bytes (not UTF-8 too), of Unicode text with control characters and newlines,
    or of quotes, commas and backslashes; never hidden (a leading dot: skipped by design)."""
    raw = st.binary(min_size=1, max_size=60)
    text = st.text(min_size=1, max_size=40).map(lambda name: name.encode("utf-8"))
    awkward = st.text(alphabet=',"\\\'\n\r\t <>&;|$`*?[]{}', min_size=1, max_size=12).map(str.encode)
    return st.one_of(raw, text, awkward).filter(
        lambda name: b"/" not in name and b"\0" not in name and not name.startswith(b".") and len(name) <= 200)


@pytest.mark.slow  # 25 whole runs
@given(st.lists(st.tuples(file_name_bytes(), st.booleans()), min_size=1, max_size=6,
                unique_by=lambda entry: entry[0].lower()))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_file_ends_in_exactly_one_of_predictions_and_errors_whatever_its_name(
        tmp_path_factory, files: list[tuple[bytes, bool]]) -> None:
    import csv
    import os

    from helpers import run_config

    from cnnvis_cli.pipeline import run

    top = tmp_path_factory.mktemp("names")
    images = top / "images"
    images.mkdir()
    good = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 40, 40)).save(good, format="PNG")
    for name, readable in files:
        with open(os.path.join(os.fsencode(images), name + b".png"), "wb") as file:
            file.write(good.getvalue() if readable else b"not an image")
    result = run(run_config("model=custom", "model.factory=helpers:tiny_classifier", "model.input_size=16",
                            "dataset=imagefolder", f"dataset.root={images}", "dataset.num_workers=0",
                            "selection.criteria=[all]", "targets=[pred]", "render.panels=false", "report=false"),
                 top / "run")
    rows = {}
    for table in ("predictions.csv", "errors.csv"):
        with (top / "run" / table).open(newline="", encoding="utf-8") as file:
            rows[table] = [row["sample_id"] for row in csv.DictReader(file)]
    def written(name: bytes) -> str:  # the name as the CSV files give it: bytes that are not UTF-8 as \xNN
        return (name + b".png").decode("utf-8", "backslashreplace")

    assert sorted(rows["predictions.csv"] + rows["errors.csv"]) == sorted(written(name) for name, _ in files)
    assert sorted(rows["predictions.csv"]) == sorted(written(name) for name, readable in files if readable)
    assert result.summary["samples"] + result.summary["unreadable"] == len(files)
    assert set(top.iterdir()) == {images, top / "run"}  # nothing written beside the run directory
    run_dir = (top / "run").resolve()
    assert all(path.resolve().is_relative_to(run_dir) for path in run_dir.rglob("*"))
