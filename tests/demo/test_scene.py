"""Tests for the synthetic shortcut scenes of the embedded demo."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from cnnvis_cli.demo import scene as scene_module
from cnnvis_cli.demo.scene import (
    CLASS_NAMES,
    CUE_SIZE,
    IMAGE_SIZE,
    SPLIT_SIZES,
    TRAIN_CUE_AGREEMENT,
    DemoScene,
    cue_box_for_class,
    render_object_mask,
    render_scene,
)

NUM_CLASSES = len(CLASS_NAMES)


def _boxes_overlap(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> bool:
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


def _cue_and_label_table(split: str, count: int) -> np.ndarray:
    table = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for index in range(count):
        scene = render_scene(split, index)
        table[scene.label, scene.cue_class] += 1
    return table


def test_public_constants() -> None:
    assert NUM_CLASSES == 4
    assert len(set(CLASS_NAMES)) == NUM_CLASSES
    assert IMAGE_SIZE >= 96
    assert set(SPLIT_SIZES) == {"train", "test"}
    assert SPLIT_SIZES["test"] >= 500
    assert SPLIT_SIZES["train"] > SPLIT_SIZES["test"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_scene_fields_have_expected_types(split: str) -> None:
    scene = render_scene(split, 7)
    assert isinstance(scene, DemoScene)
    assert scene.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert scene.image.dtype == np.uint8
    assert 0 <= scene.label < NUM_CLASSES
    assert 0 <= scene.cue_class < NUM_CLASSES
    for box in (scene.object_box, scene.cue_box):
        assert len(box) == 4
        assert all(isinstance(value, int) for value in box)
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= IMAGE_SIZE
        assert 0 <= y0 < y1 <= IMAGE_SIZE


def test_render_is_deterministic() -> None:
    first = render_scene("test", 42, seed=3)
    second = render_scene("test", 42, seed=3)
    np.testing.assert_array_equal(first.image, second.image)
    assert (first.label, first.object_box, first.cue_box, first.cue_class) == (
        second.label,
        second.object_box,
        second.cue_box,
        second.cue_class,
    )


def test_scene_does_not_depend_on_render_order() -> None:
    direct = render_scene("train", 123)
    for index in range(5):
        render_scene("train", index)
    np.testing.assert_array_equal(render_scene("train", 123).image, direct.image)


def test_index_split_and_seed_all_change_the_image() -> None:
    reference = render_scene("train", 10).image
    others = [
        render_scene("train", 11).image,
        render_scene("test", 10).image,
        render_scene("train", 10, seed=1).image,
    ]
    for other in others:
        assert np.abs(reference.astype(int) - other.astype(int)).mean() > 5.0


def test_labels_are_balanced_over_the_test_split() -> None:
    counts = np.bincount([render_scene("test", index).label for index in range(SPLIT_SIZES["test"])])
    assert counts.tolist() == [SPLIT_SIZES["test"] // NUM_CLASSES] * NUM_CLASSES


@pytest.mark.parametrize(
    ("split", "index"),
    [("validation", 0), ("", 0), ("test", -1), ("test", SPLIT_SIZES["test"]), ("train", SPLIT_SIZES["train"])],
)
def test_bad_requests_raise_value_error(split: str, index: int) -> None:
    with pytest.raises(ValueError, match="split|index"):
        render_scene(split, index)


def test_unknown_split_message_lists_known_splits() -> None:
    with pytest.raises(ValueError, match="train.*test|test.*train"):
        render_scene("val", 0)


@pytest.mark.parametrize("split", ["train", "test"])
def test_object_box_is_tight_around_the_object_mask(split: str) -> None:
    for index in range(60):
        scene = render_scene(split, index)
        mask = render_object_mask(split, index)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        assert rows.size > 0 and cols.size > 0
        assert scene.object_box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)


def test_object_is_visibly_drawn_inside_its_box() -> None:
    contrasts = []
    for index in range(100):
        scene = render_scene("test", index)
        mask = render_object_mask("test", index)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
        inside_colour = scene.image[mask].astype(float).mean(axis=0)
        ring_colour = scene.image[ring].astype(float).mean(axis=0)
        contrasts.append(np.linalg.norm(inside_colour - ring_colour))
        # The object is a flat colour plus pixel noise, so its pixels are far less
        # varied than the textured background around it.
        assert scene.image[mask].astype(float).std(axis=0).mean() < 20.0
    assert min(contrasts) > 8.0
    assert np.median(contrasts) > 40.0


def test_object_sizes_vary() -> None:
    widths = {
        render_scene("test", index).object_box[2] - render_scene("test", index).object_box[0] for index in range(40)
    }
    assert max(widths) - min(widths) >= 8


def test_cue_box_is_fixed_per_class_and_apart_from_the_object() -> None:
    corner_boxes = [cue_box_for_class(cue_class) for cue_class in range(NUM_CLASSES)]
    assert len(set(corner_boxes)) == NUM_CLASSES
    for split in ("train", "test"):
        for index in range(200):
            scene = render_scene(split, index)
            assert scene.cue_box == corner_boxes[scene.cue_class]
            x0, y0, x1, y1 = scene.cue_box
            assert x1 - x0 == CUE_SIZE and y1 - y0 == CUE_SIZE
            assert not _boxes_overlap(scene.cue_box, scene.object_box)


def test_cue_box_for_class_rejects_unknown_classes() -> None:
    with pytest.raises(ValueError):
        cue_box_for_class(NUM_CLASSES)


def test_exactly_one_cue_mark_is_drawn() -> None:
    inner = CUE_SIZE // 3
    for index in range(40):
        scene = render_scene("test", index)
        grey = scene.image.astype(float).mean(axis=2)
        for cue_class in range(NUM_CLASSES):
            x0, y0, x1, y1 = cue_box_for_class(cue_class)
            frame = np.ones((CUE_SIZE, CUE_SIZE), dtype=bool)
            frame[inner:-inner, inner:-inner] = False
            patch = grey[y0:y1, x0:x1]
            has_mark = patch[frame].mean() - patch[~frame].mean() > 100.0
            assert has_mark == (cue_class == scene.cue_class)


def test_test_split_cue_is_independent_of_the_label() -> None:
    table = _cue_and_label_table("test", SPLIT_SIZES["test"])
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi_square = float(((table - expected) ** 2 / expected).sum())
    # 27.9 is the 0.999 quantile of the chi-square distribution with 9 degrees of freedom.
    assert chi_square < 27.9
    agreement = np.trace(table) / table.sum()
    assert 0.17 < agreement < 0.33
    assert table.sum(axis=0).min() > 0.15 * table.sum()


def test_train_split_cue_mostly_agrees_with_the_label() -> None:
    table = _cue_and_label_table("train", 2000)
    agreement = np.trace(table) / table.sum()
    assert abs(agreement - TRAIN_CUE_AGREEMENT) < 0.03
    disagreeing = table.copy()
    np.fill_diagonal(disagreeing, 0)
    # Every wrong mark occurs for every label, so no pair is left out.
    off_diagonal = disagreeing[~np.eye(NUM_CLASSES, dtype=bool)]
    assert off_diagonal.min() > 0


def test_agreement_setting_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scene_module, "TRAIN_CUE_AGREEMENT", 1.0)
    assert all(render_scene("train", index).cue_class == render_scene("train", index).label for index in range(50))


def test_rendering_is_fast() -> None:
    render_scene("test", 0)
    started = time.perf_counter()
    for index in range(300):
        render_scene("train", index)
    per_image = (time.perf_counter() - started) / 300
    assert per_image < 0.003
