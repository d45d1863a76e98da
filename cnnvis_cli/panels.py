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


@dataclass(frozen=True)
class PanelContent:
    title: str  # sample, true and predicted class, reasons
    image: np.ndarray  # the input as the model saw it, RGB uint8
    tiles: list[Tile]  # technique by technique, target by target
    top: list[tuple[str, float, bool, int]]  # the model's top guesses: name, probability, is the true class, rank
    colour_bars: list[tuple[str, np.ndarray, str, str]]  # caption, 256 x 3 RGB lookup table, low and high labels


def percent(probability: float) -> str:
    """A probability as a percentage, with the smallest ones shown as below 0.1%, not as 0.0%."""
    return f"{probability:.1%}" if probability >= 0.0005 or probability == 0 else "<0.1%"


def text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def fit_text(text: str, width: int, scale: float) -> str:
    """`text`, shortened with '...' until it fits `width` pixels."""
    if text_width(text, scale) <= width:
        return text
    while text and text_width(text + "...", scale) > width:
        text = text[:-1]
    return text + "..."


def put_text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, colour=TEXT,
             width: int | None = None, thickness: int = 1) -> None:
    """Draw `text` with its baseline at y, shortened to `width` pixels when given."""
    if width is not None:
        text = fit_text(text, width, scale)
    cv2.putText(canvas, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """`image` scaled to fit a size x size square (aspect kept), centred on the background colour."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    square = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    square[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    return square


def bar_chart(top: list[tuple[str, float, bool, int]], width: int, predicted_correct: bool) -> np.ndarray:
    """The model's top guesses (name, probability, is the true class, rank) as horizontal bars scaled to the
    largest, with their probabilities; the true class in green (listed last, with its rank, when it is not
    among them), a wrong top guess in red."""
    row = 18 if len(top) <= 16 else 14
    scale = 0.42 if len(top) <= 16 else 0.36
    title_height = 22
    chart = np.full((title_height + row * len(top) + MARGIN, width, 3), BACKGROUND, dtype=np.uint8)
    guesses = sum(rank == position + 1 for position, (_, _, _, rank) in enumerate(top))
    put_text(chart, f"top {guesses} guesses", 0, 15, 0.45, TEXT)
    name_width, value_width = int(width * 0.45), 46
    bar_space = width - name_width - value_width - 8
    largest = max((probability for _, probability, _, _ in top), default=0.0) or 1.0
    for position, (name, probability, is_true, rank) in enumerate(top):
        top_y = title_height + position * row
        colour = TRUE_COLOUR if is_true else (PREDICTED_COLOUR if rank == 1 and not predicted_correct
                                              else BAR_COLOUR)
        label = name if rank == position + 1 else f"#{rank} {name}"
        put_text(chart, label, 0, top_y + row - 5, scale, TRUE_COLOUR if is_true else TEXT, width=name_width - 4,
                 thickness=2 if is_true else 1)
        length = max(1, round(bar_space * probability / largest))
        cv2.rectangle(chart, (name_width, top_y + 3), (name_width + length, top_y + row - 3), colour, -1)
        put_text(chart, percent(probability), name_width + bar_space + 4, top_y + row - 5, scale, MUTED)
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


def tile_picture(tile: Tile, size: int) -> np.ndarray:
    """The overlay at `size` px with its title above and the zoomed box drawn on it."""
    title_height = 38
    picture = np.full((title_height + size, size, 3), BACKGROUND, dtype=np.uint8)
    overlay = cv2.resize(tile.overlay, (size, size), interpolation=cv2.INTER_LINEAR)
    if tile.box is not None:
        factor = size / tile.overlay.shape[1]
        x0, y0, x1, y1 = (round(v * factor) for v in tile.box)
        cv2.rectangle(overlay, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), ZOOM_BOX, 2)
    picture[title_height:] = overlay
    put_text(picture, f"{tile.technique}  {tile.role}", 0, 14, 0.45, MUTED, width=size)
    put_text(picture, f"{tile.class_name}  #{tile.rank}  {percent(tile.probability)}", 0, 31, 0.45,
             TRUE_COLOUR if tile.is_true else TEXT, width=size, thickness=2 if tile.is_true else 1)
    return picture


def zoom_picture(tile: Tile, size: int) -> np.ndarray:
    title_height = 38
    picture = np.full((title_height + size, size, 3), BACKGROUND, dtype=np.uint8)
    if tile.zoom is not None:
        picture[title_height:] = fit_image(tile.zoom, size)
        put_text(picture, "zoom on the box", 0, 31, 0.45, MUTED, width=size)
    return picture


def render_panel(content: PanelContent, size: int = 224, zoom: bool = True,
                 predicted_correct: bool = False) -> np.ndarray:
    """The whole panel as an RGB uint8 array."""
    gap = MARGIN
    tiles = [tile_picture(tile, size) for tile in content.tiles]
    if zoom:
        tiles = [picture for tile, overlay in zip(content.tiles, tiles, strict=True)
                 for picture in (overlay, zoom_picture(tile, size))]
    targets_per_row = max(1, len({(t.role, t.class_name) for t in content.tiles}))
    per_row = targets_per_row * (2 if zoom else 1)
    grid_rows = [tiles[start:start + per_row] for start in range(0, len(tiles), per_row)]
    tile_h, tile_w = tiles[0].shape[:2] if tiles else (size, size)
    grid_w = per_row * tile_w + (per_row - 1) * gap
    grid_h = len(grid_rows) * tile_h + max(0, len(grid_rows) - 1) * gap

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
    for row_index, row in enumerate(grid_rows):
        top = y + row_index * (tile_h + gap)
        for column, picture in enumerate(row):
            left = x0 + column * (tile_w + gap)
            canvas[top:top + tile_h, left:left + tile_w] = picture
    bar_y = y + grid_h + gap
    for bar in bars:
        canvas[bar_y:bar_y + bar.shape[0], x0:x0 + bar.shape[1]] = bar
        bar_y += bar.shape[0]
    return canvas


def zoom_box(heat: np.ndarray, threshold: float = 0.5, padding: float = 0.15) -> tuple[int, int, int, int] | None:
    """The most active region of a map: the bounding box (x0, y0, x1, y1, end exclusive) of the connected
    region around the map's peak where it is at or above `threshold` of the peak, padded by `padding` of its
    size on each side (and to at least an eighth of the map's side) and kept inside the map; None for an
    empty map. The map is first blurred (sigma 1/32 of its side), so the box lands on where a speckled
    gradient map is dense, not on one pixel."""
    if float(heat.max()) <= 0:
        return None
    sigma = max(heat.shape) / 32
    heat = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
    peak = float(heat.max())
    mask = (heat >= threshold * peak).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
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
