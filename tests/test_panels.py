from __future__ import annotations

import numpy as np
import torch

from cnnvis_cli.panels import (
    BAR_COLOUR,
    PREDICTED_COLOUR,
    TARGETS_PER_ROW,
    TRUE_COLOUR,
    PanelContent,
    Tile,
    bar_chart,
    fit_text,
    percent,
    render_panel,
    text_width,
    tile_title,
    to_original,
    zoom_box,
    zoom_region,
)
from cnnvis_cli.render import colormap_lut


def test_zoom_box_holds_the_blob_around_the_peak_padded() -> None:
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[10:20, 40:56] = 1.0  # the peak's region
    heat[50:54, 2:6] = 0.9  # another region above the threshold, apart from the peak's
    x0, y0, x1, y1 = zoom_box(heat)
    assert x0 <= 40 and y0 <= 10 and x1 >= 56 and y1 >= 20  # the blob, whole
    assert x0 > 6 and y1 < 50  # not the other region
    assert zoom_box(np.zeros((8, 8), dtype=np.float32)) is None


def test_zoom_box_finds_where_a_speckled_map_is_dense() -> None:
    rng = np.random.default_rng(0)
    heat = (rng.random((96, 96)) > 0.995).astype(np.float32) * 0.6  # sparse speckle everywhere
    heat[60:80, 10:30] = (rng.random((20, 20)) > 0.5) * 1.0  # dense speckle in one place
    x0, y0, x1, y1 = zoom_box(heat)
    assert x0 <= 10 < 30 <= x1 and y0 <= 60 < 80 <= y1 and (x1 - x0) < 48 and (y1 - y0) < 48


def test_a_box_in_model_pixels_maps_back_to_the_original() -> None:
    # 400 x 300 original: resized to 341 x 256, centre crop 224 starts at (58, 16)
    assert to_original((0, 0, 224, 224), (400, 300), 256, 224) == (68, 18, 331, 282)
    assert to_original((10, 20, 30, 40), (96, 96), 96, 96) == (10, 20, 30, 40)  # the demo: no resize, no crop


def test_long_names_are_shortened_to_fit() -> None:
    name = "a class name far too long to fit in a narrow column of the chart"
    short = fit_text(name, 120, 0.42)
    assert short.endswith("...") and text_width(short, 0.42) <= 120 and fit_text("oak", 120, 0.42) == "oak"


def test_bar_chart_highlights_the_true_class_and_stays_readable_with_30_guesses() -> None:
    guesses = [(f"class {i}", 1 / (i + 2), i == 3, i + 1) for i in range(30)]
    chart = bar_chart(guesses, 320, predicted_correct=False)
    assert chart.shape[0] >= 30 * 14 and chart.shape[1] == 320
    assert (chart == np.array(TRUE_COLOUR, dtype=np.uint8)).all(axis=2).sum() > 50  # the green bar and name
    assert bar_chart(guesses[:10], 320, False).shape[0] < chart.shape[0]


def test_panel_grows_with_techniques_and_targets() -> None:
    overlay = np.full((32, 32, 3), 128, dtype=np.uint8)
    lut = colormap_lut("jet", torch.device("cpu")).numpy()

    def panel(techniques: list[str], targets: list[str], zoom: bool) -> np.ndarray:
        tiles = [Tile(t, role, "oak", 1, 0.5, overlay, (2, 2, 20, 20), overlay, role == "true")
                 for t in techniques for role in targets]
        content = PanelContent("title", overlay, tiles, [("oak", 0.5, True, 1)], [("heat", lut, "low", "high")])
        return render_panel(content, 128, zoom)

    one = panel(["gradcam"], ["pred"], zoom=True)
    assert one.dtype == np.uint8 and one.ndim == 3
    assert panel(["gradcam"], ["pred", "true"], zoom=True).shape[1] > one.shape[1]
    assert panel(["gradcam", "scorecam", "lrp"], ["pred"], zoom=True).shape[0] > one.shape[0]
    assert panel(["gradcam"], ["pred"], zoom=False).shape[1] < one.shape[1]
    # more targets than fit a row wrap onto further rows: the width stays that of a full row
    three = panel(["gradcam"], ["pred", "true", "top3"], zoom=True)
    many = panel(["gradcam", "lrp"], ["pred", "true", "top3", "top4", "top5"], zoom=True)
    assert TARGETS_PER_ROW == 3 and many.shape[1] == three.shape[1]
    assert many.shape[0] >= 4 * (128 + 38)  # two rows for each technique


def test_a_true_class_outside_the_top_guesses_is_listed_last_with_its_rank() -> None:
    guesses = [("elm", 0.5, False, 1), ("ash", 0.3, False, 2), ("oak", 0.001, True, 577)]
    chart = bar_chart(guesses, 320, predicted_correct=False)
    bar_rows = chart[22:]  # below the title
    green_rows = np.flatnonzero((bar_rows == np.array(TRUE_COLOUR, dtype=np.uint8)).all(axis=2).any(axis=1))
    assert green_rows.min() >= 2 * 18  # the true class's row is the third, after the two guesses


def test_percentages_never_round_a_real_chance_to_zero() -> None:
    assert (percent(0.8312), percent(0.0004), percent(0.0)) == ("83.1%", "<0.1%", "0.0%")


def test_a_long_class_name_is_cut_short_and_rank_and_probability_stay() -> None:
    tile = Tile("gradcam", "pred", "Staffordshire bullterrier, Staffordshire bull terrier, pit bull", 12, 0.0734,
                np.zeros((8, 8, 3), dtype=np.uint8))
    title = tile_title(tile, 224)
    assert title.endswith("  #12  7.3%") and "..." in title and text_width(title, 0.45) <= 224


def colour_pixels(chart: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((chart == np.array(colour, dtype=np.uint8)).all(axis=2).sum())


def test_bars_are_on_an_absolute_scale() -> None:
    def bar_length(probability: float) -> int:
        chart = bar_chart([("oak", probability, False, 1)], 320, predicted_correct=None)
        return int((chart == np.array(BAR_COLOUR, dtype=np.uint8)).all(axis=2).any(axis=0).sum())

    sure, unsure = bar_length(0.95), bar_length(0.006)
    assert unsure <= 2 and sure >= 100  # an unsure top guess draws a sliver, not a full bar
    assert abs(bar_length(0.5) - sure * 0.5 / 0.95) <= 2


def test_unlabelled_samples_have_no_wrong_colour() -> None:
    guesses = [("elm", 0.6, False, 1), ("ash", 0.3, False, 2)]
    assert colour_pixels(bar_chart(guesses, 320, predicted_correct=False), PREDICTED_COLOUR) > 0
    assert colour_pixels(bar_chart(guesses, 320, predicted_correct=None), PREDICTED_COLOUR) == 0


def blobs(seed: int, size: int = 96) -> np.ndarray:
    """A smooth map with a few bumps of random place, width and height, as a CAM looks."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    heat = np.zeros((size, size))
    for _ in range(rng.integers(1, 5)):
        y, x, width, height = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 20), rng.uniform(0.2, 1)
        heat += height * np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * width ** 2))
    return (heat / heat.max()).astype(np.float32)


def test_the_zoom_holds_the_maps_peak() -> None:
    for seed in range(300):
        heat = blobs(seed)
        box, note = zoom_region(heat)
        if box is None:
            assert note.startswith("no zoom: the box around the map's peak would cover")
            continue
        x0, y0, x1, y1 = box
        peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert x0 <= peak_x < x1 and y0 <= peak_y < y1, seed


def test_no_zoom_for_an_empty_or_a_spread_map_and_the_panel_says_why() -> None:
    box, note = zoom_region(np.zeros((32, 32), dtype=np.float32))
    assert box is None and note.startswith("empty map (all zero)")
    box, note = zoom_region(np.ones((32, 32), dtype=np.float32))
    assert box is None and note == ("no zoom: the box around the map's peak would cover 100% of the image, with no "
                                    "one region to look at")
