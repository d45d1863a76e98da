"""One picture per selected sample: the input, each technique's overlay for each target (titled with the
class, its rank and probability), a zoom into the region each map points at, the model's top guesses as a
bar chart, and colour bars for the heatmap scales. Drawn with OpenCV on RGB uint8 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
BACKGROUND = (255, 255, 255)
TRUE_COLOUR = (30, 150, 60)  # the true class, in titles and in the bar chart
PREDICTED_COLOUR = (200, 60, 40)  # a wrong prediction
BAR_COLOUR = (120, 140, 170)
GRID_COLOUR = (225, 225, 225)
ZOOM_BOX = (255, 255, 255)
MARGIN = 8


@dataclass(frozen=True)
class Tile:
    """One overlay of a panel: what it explains, and the crop of the original it points at."""

    technique: str
    role: str  # "pred", "true", "top2", or the class the user named
    class_name: str
    rank: int  # 1 = the model's top guess
    probability: float
    overlay: np.ndarray  # H x W x 3 RGB uint8, at the model's input size
    box: tuple[int, int, int, int] | None = None  # the zoomed region in overlay pixels: x0, y0, x1, y1
    zoom: np.ndarray | None = None  # that region cut from the full-resolution original, RGB uint8
    is_true: bool = False
    note: str = ""  # why there is no zoom (an empty map, a map too spread to zoom)
    finding: tuple[str, bool] = ("", False)  # what hiding the box did (metrics=[counterfactual]); turned right


@dataclass(frozen=True)
class PanelContent:
    title: str  # sample, true and predicted class, reasons
    image: np.ndarray  # the input as the model saw it, RGB uint8
    tiles: list[Tile]  # technique by technique, target by target
    top: list[tuple[str, float, bool, int]]  # the model's top guesses: name, probability, is the true class, rank
    colour_bars: list[tuple[str, np.ndarray, str, str]]  # caption, 256 x 3 RGB lookup table, low and high labels


TARGETS_PER_ROW = 3  # a technique with more targets wraps onto further rows, so panels stay readable
TITLE_HEIGHT = 38


def percent(probability: float) -> str:
    """A probability as a percentage, with the smallest ones shown as below 0.1%, not as 0.0%."""
    return f"{probability:.1%}" if probability >= 0.0005 or probability == 0 else "<0.1%"


def text_width(text: str, scale: float, thickness: int = 1) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def fit_text(text: str, width: int, scale: float, thickness: int = 1) -> str:
    """`text`, shortened with '...' until it fits `width` pixels."""
    if text_width(text, scale, thickness) <= width:
        return text
    while text and text_width(text + "...", scale, thickness) > width:
        text = text[:-1]
    return text + "..."


def wrap_text(text: str, width: int, scale: float) -> list[str]:
    """`text` broken into lines of at most `width` pixels, at spaces."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", scale) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def put_text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, colour=TEXT,
             width: int | None = None, thickness: int = 1) -> None:
    """Draw `text` with its baseline at y, shortened to `width` pixels when given."""
    if width is not None:
        text = fit_text(text, width, scale, thickness)
    cv2.putText(canvas, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """`image` scaled to fit a size x size square (aspect kept), centred on the background colour. Enlarged
    three times or more, its pixels are shown as squares (nearest neighbour) rather than smoothed into a blur."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST_EXACT if scale >= 3 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=interpolation)
    square = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    square[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return square


def bar_chart(top: list[tuple[str, float, bool, int]], width: int, predicted_correct: bool | None) -> np.ndarray:
    """The model's top guesses (name, probability, is the true class, rank) as horizontal bars on an
    absolute scale (a full bar is 100%, with a 0-50-100% axis), with their probabilities; the true class in
    green (listed last, with its rank, when it is not among them), a wrong top guess in red
    (`predicted_correct` None: unlabelled, no colour for right or wrong)."""
    row = 18 if len(top) <= 16 else 14
    scale = 0.42 if len(top) <= 16 else 0.36
    title_height, axis_height = 22, 18
    chart = np.full((title_height + row * len(top) + axis_height, width, 3), BACKGROUND, dtype=np.uint8)
    guesses = sum(rank == position + 1 for position, (_, _, _, rank) in enumerate(top))
    put_text(chart, f"top {guesses} guesses", 0, 15, 0.45, TEXT)
    name_width, value_width = int(width * 0.42), 50
    bar_space = width - name_width - value_width - 8
    bottom = title_height + row * len(top)
    for share in (0.0, 0.5, 1.0):  # the scale: light rules under the bars, labelled below them
        x = name_width + round(bar_space * share)
        cv2.line(chart, (x, title_height), (x, bottom + 2), GRID_COLOUR, 1)
        label = f"{share:.0%}"
        put_text(chart, label, min(x - text_width(label, 0.35) // 2, width - text_width(label, 0.35)),
                 bottom + 14, 0.35, MUTED)
    for position, (name, probability, is_true, rank) in enumerate(top):
        top_y = title_height + position * row
        wrong = rank == 1 and predicted_correct is False
        colour = TRUE_COLOUR if is_true else (PREDICTED_COLOUR if wrong else BAR_COLOUR)
        label = name if rank == position + 1 else f"#{rank} {name}"
        put_text(chart, label, 0, top_y + row - 5, scale, TRUE_COLOUR if is_true else TEXT, width=name_width - 4,
                 thickness=2 if is_true else 1)
        length = max(1, round(bar_space * min(1.0, probability)))
        cv2.rectangle(chart, (name_width, top_y + 3), (name_width + length, top_y + row - 3), colour, -1)
        put_text(chart, percent(probability), name_width + bar_space + 6, top_y + row - 5, scale, MUTED)
    return chart


def colour_bar(caption: str, lut: np.ndarray, low: str, high: str, width: int) -> np.ndarray:
    """A labelled strip of a colour map: `low` at the left end, `high` at the right."""
    strip = np.full((40, width, 3), BACKGROUND, dtype=np.uint8)
    put_text(strip, caption, 0, 13, 0.42, TEXT, width=width)
    label_width = max(text_width(low, 0.4), text_width(high, 0.4)) + 6
    ramp_width = max(16, width - 2 * label_width)
    ramp = lut[np.linspace(0, 255, ramp_width).round().astype(int)]
    strip[20:34, label_width:label_width + ramp_width] = ramp[None]
    put_text(strip, low, 0, 32, 0.4, MUTED)
    put_text(strip, high, label_width + ramp_width + 6, 32, 0.4, MUTED)
    return strip


def tile_title(tile: Tile, width: int, scale: float = 0.45) -> str:
    """`class  #rank  probability`, the class name shortened so that rank and probability always show."""
    numbers = f"  #{tile.rank}  {percent(tile.probability)}"
    thickness = 2 if tile.is_true else 1
    return fit_text(tile.class_name, width - text_width(numbers, scale, thickness), scale, thickness) + numbers


def tile_picture(tile: Tile, size: int) -> np.ndarray:
    """The overlay at `size` px with its title above and the zoomed box drawn on it."""
    picture = np.full((TITLE_HEIGHT + size, size, 3), BACKGROUND, dtype=np.uint8)
    overlay = cv2.resize(tile.overlay, (size, size), interpolation=cv2.INTER_LINEAR)
    if tile.box is not None:
        factor = size / tile.overlay.shape[1]
        x0, y0, x1, y1 = (round(v * factor) for v in tile.box)
        cv2.rectangle(overlay, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), ZOOM_BOX, 2)
    picture[TITLE_HEIGHT:] = overlay
    put_text(picture, f"{tile.technique}  {tile.role}", 0, 14, 0.45, MUTED, width=size)
    put_text(picture, tile_title(tile, size), 0, 31, 0.45, TRUE_COLOUR if tile.is_true else TEXT,
             thickness=2 if tile.is_true else 1)
    return picture


def zoom_picture(tile: Tile, size: int) -> np.ndarray:
    """The zoom into the tile's box, or in its place the reason there is none."""
    picture = np.full((TITLE_HEIGHT + size, size, 3), BACKGROUND, dtype=np.uint8)
    if tile.zoom is not None:
        picture[TITLE_HEIGHT:] = fit_image(tile.zoom, size)
        put_text(picture, "zoom on the box", 0, 31, 0.45, MUTED, width=size)
        words, turned_right = tile.finding
        if words:
            put_text(picture, words, 0, 14, 0.45, TRUE_COLOUR if turned_right else TEXT, width=size,
                     thickness=2 if turned_right else 1)
    elif tile.note:
        cv2.rectangle(picture, (0, TITLE_HEIGHT), (size - 1, TITLE_HEIGHT + size - 1), GRID_COLOUR, 1)
        for line, text in enumerate(wrap_text(tile.note, size - 16, 0.42)):
            put_text(picture, text, 8, TITLE_HEIGHT + 24 + 18 * line, 0.42, MUTED)
    return picture


def render_panel(content: PanelContent, size: int = 224, zoom: bool = True,
                 predicted_correct: bool | None = False) -> np.ndarray:
    """The whole panel as an RGB uint8 array: the input and the top guesses on the left; on the right one
    row per technique (wrapping after TARGETS_PER_ROW targets), each target's overlay beside its zoom."""
    gap = MARGIN
    rows: list[list[np.ndarray]] = []
    for technique in dict.fromkeys(tile.technique for tile in content.tiles):
        tiles = [tile for tile in content.tiles if tile.technique == technique]
        for start in range(0, len(tiles), TARGETS_PER_ROW):
            rows.append([picture for tile in tiles[start:start + TARGETS_PER_ROW]
                         for picture in ((tile_picture(tile, size), zoom_picture(tile, size)) if zoom
                                         else (tile_picture(tile, size),))])
    per_row = max((len(row) for row in rows), default=1)
    tile_h, tile_w = TITLE_HEIGHT + size, size
    grid_w = per_row * tile_w + (per_row - 1) * gap
    grid_h = len(rows) * tile_h + max(0, len(rows) - 1) * gap

    left_w = max(size, 320)
    chart = bar_chart(content.top, left_w, predicted_correct)
    left_h = 20 + size + gap + chart.shape[0]
    bars = [colour_bar(caption, lut, low, high, min(360, grid_w)) for caption, lut, low, high in content.colour_bars]
    bars_h = sum(bar.shape[0] for bar in bars)

    header_h = 30
    width = MARGIN + left_w + 2 * gap + grid_w + MARGIN
    height = header_h + max(left_h, grid_h + gap + bars_h) + MARGIN
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    put_text(canvas, content.title, MARGIN, 20, 0.5, TEXT, width=width - 2 * MARGIN)

    y = header_h
    put_text(canvas, "input", MARGIN, y + 14, 0.45, MUTED)
    image = fit_image(content.image, size)
    canvas[y + 20:y + 20 + size, MARGIN + (left_w - size) // 2:MARGIN + (left_w - size) // 2 + size] = image
    canvas[y + 20 + size + gap:y + 20 + size + gap + chart.shape[0], MARGIN:MARGIN + left_w] = chart

    x0 = MARGIN + left_w + 2 * gap
    for row_index, row in enumerate(rows):
        top = y + row_index * (tile_h + gap)
        for column, picture in enumerate(row):
            left = x0 + column * (tile_w + gap)
            canvas[top:top + tile_h, left:left + tile_w] = picture
    bar_y = y + grid_h + gap
    for bar in bars:
        canvas[bar_y:bar_y + bar.shape[0], x0:x0 + bar.shape[1]] = bar
        bar_y += bar.shape[0]
    return canvas


EMPTY_MAP = ("empty map (all zero): nothing the technique sees raises this class's score here (for a CAM, "
             "every weighted sum of the layer's channels is negative), or the map is flat")
SPREAD = 0.5  # a zoom box (the region around the peak, with its margin) larger than this share is no zoom


def zoom_region(heat: np.ndarray, threshold: float = 0.5) -> tuple[tuple[int, int, int, int] | None, str]:
    """The box to zoom into (`zoom_box`), or None with the reason: the map is empty, or the box around its
    peak (with its margin) would cover more than SPREAD of the image."""
    box = zoom_box(heat, threshold)
    if box is None:
        return None, EMPTY_MAP
    x0, y0, x1, y1 = box
    share = (x1 - x0) * (y1 - y0) / heat.size
    if share > SPREAD:
        return None, f"no zoom: the box around the map's peak would cover {share:.0%} of the image, with no one " \
                     "region to look at"
    return box, ""


def zoom_box(heat: np.ndarray, threshold: float = 0.5, padding: float = 0.15) -> tuple[int, int, int, int] | None:
    """The most active region of a map: the bounding box (x0, y0, x1, y1, end exclusive) of the connected
    region around the map's peak where it is at or above `threshold` of the peak, padded by `padding` of its
    size on each side (and to at least an eighth of the map's side) and kept inside the map; None for an
    empty map. Regions are found on the map blurred (sigma 1/32 of its side): the box holds the map's own
    peak wherever that lies in a region, and only for a speckled gradient map whose highest pixel stands
    alone does it go to where the map is densest instead."""
    if float(heat.max()) <= 0:
        return None
    sigma = max(heat.shape) / 32
    blurred = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
    mask = (blurred >= threshold * float(blurred.max())).astype(np.uint8)
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    if not mask[peak_y, peak_x]:  # a lone speck: the peak of the blurred map instead
        peak_y, peak_x = np.unravel_index(int(np.argmax(blurred)), heat.shape)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    rows, cols = np.nonzero(labels == labels[peak_y, peak_x])
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = heat.shape
    smallest = max(height, width) // 8
    pad_y = max(2, round((y1 - y0) * padding), (smallest - (y1 - y0) + 1) // 2)
    pad_x = max(2, round((x1 - x0) * padding), (smallest - (x1 - x0) + 1) // 2)
    return (int(max(0, x0 - pad_x)), int(max(0, y0 - pad_y)), int(min(width, x1 + pad_x)),
            int(min(height, y1 + pad_y)))


def to_original(box: tuple[int, int, int, int], original_size: tuple[int, int], resize_size: int,
                input_size: int) -> tuple[int, int, int, int]:
    """A box in model-input pixels mapped back to the original image, undoing the resize of the shorter side
    to `resize_size` and the centre crop to `input_size` (torchvision's Resize and CenterCrop)."""
    width, height = original_size
    scale = resize_size / min(width, height)
    resized_w, resized_h = int(width * scale) if width > height else resize_size, \
        int(height * scale) if height > width else resize_size
    left = int(round((resized_w - input_size) / 2.0))
    top = int(round((resized_h - input_size) / 2.0))
    x0, y0, x1, y1 = box
    to_x, to_y = width / resized_w, height / resized_h
    return (max(0, int((x0 + left) * to_x)), max(0, int((y0 + top) * to_y)),
            min(width, int(np.ceil((x1 + left) * to_x))), min(height, int(np.ceil((y1 + top) * to_y))))
