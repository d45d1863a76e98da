"""All images of a visualisation on one sheet: one row per objective (its images side by side when there are
several), each captioned with the objective, at a size a person can read."""

from __future__ import annotations

import numpy as np

from cnnvis_cli.panels import BACKGROUND, MARGIN, fit_image, put_text, wrap_text

TILE = 192
CAPTION_SCALE = 0.45
LINE = 16
PER_ROW = 7


def contact_sheet(pictures: np.ndarray, captions: list[str], copies: int = 1, tile: int = TILE) -> np.ndarray:
    """`pictures` (N x H x W x 3, uint8 RGB) on a white sheet: with one image per objective, PER_ROW tiles a
    row; with several, one row per objective. Each tile is captioned with its objective (wrapped)."""
    columns = copies if copies > 1 else min(PER_ROW, len(pictures))
    count_rows = -(-len(pictures) // columns)
    lines = max(len(wrap_text(caption, tile, CAPTION_SCALE)) for caption in captions)
    cell_height = tile + LINE * lines + MARGIN
    sheet = np.full((MARGIN + count_rows * (cell_height + MARGIN), MARGIN + columns * (tile + MARGIN), 3),
                    BACKGROUND, dtype=np.uint8)
    for index, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        row, column = divmod(index, columns)
        top, left = MARGIN + row * (cell_height + MARGIN), MARGIN + column * (tile + MARGIN)
        sheet[top:top + tile, left:left + tile] = fit_image(picture, tile)
        if copies == 1 or column == 0:
            for number, line in enumerate(wrap_text(caption, tile, CAPTION_SCALE)):
                put_text(sheet, line, left, top + tile + LINE * (number + 1) - 3, CAPTION_SCALE, width=tile)
    return sheet
