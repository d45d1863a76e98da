"""Deterministic synthetic scenes for the embedded demo.

Each scene shows one shape (the class) on a textured background plus a small
square "watermark" in one of the four corners. The corner encodes a class: the
mark of class ``k`` always sits in corner ``k``. In the ``train`` split the mark
usually agrees with the label, so a classifier can take a shortcut through the
corner; in the ``test`` split the corner is drawn independently of the label,
which exposes classifiers that learned the shortcut instead of the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
IMAGE_SIZE: int = 96
SPLIT_SIZES: dict[str, int] = {"train": 6000, "test": 600}

#: Probability that a train image carries the mark of its own class; otherwise
#: it carries the mark of one of the other classes, chosen uniformly.
TRAIN_CUE_AGREEMENT: float = 0.85

#: Side of the square cue mark and its distance from the image border.
CUE_SIZE: int = 10
CUE_MARGIN: int = 3
#: Grey levels of the mark's frame and of its centre.
CUE_FRAME_LEVEL: float = 225.0
CUE_CENTRE_LEVEL: float = 35.0

#: Objects always lie inside ``[OBJECT_MIN, OBJECT_MAX)`` on both axes, which
#: keeps them clear of the corner marks.
OBJECT_MIN: int = 16
OBJECT_MAX: int = IMAGE_SIZE - 16

#: Range of the nominal object size in pixels (diameter or outer extent).
OBJECT_SIZE_RANGE: tuple[float, float] = (18.0, 34.0)

#: How much lighter or darker than the mean background the object is (grey
#: levels). The low end makes some objects faint, which is where the mark wins.
OBJECT_CONTRAST_RANGE: tuple[float, float] = (20.0, 110.0)
#: Spread of the random colour tint added to the object's grey level.
OBJECT_TINT: float = 15.0

#: Range of the mean background grey level and the spread of its colour tint.
BACKGROUND_LEVEL_RANGE: tuple[float, float] = (90.0, 170.0)
BACKGROUND_TINT: float = 15.0
#: Standard deviations of the background blotches and stripes (grey levels).
BLOTCH_STRENGTH: float = 20.0
STRIPE_STRENGTH: float = 10.0
#: Standard deviation of the per-pixel noise over the whole image.
NOISE_STRENGTH: float = 10.0

_SPLIT_IDS: dict[str, int] = {"train": 1, "test": 2}
_NUM_CHANNELS = 3
_BLOTCH_GRID = 6

_COORDS = np.arange(IMAGE_SIZE, dtype=np.float32)
_CENTRED = _COORDS - IMAGE_SIZE / 2
# Cubic interpolation weights that upsample a 6-point signal to IMAGE_SIZE points;
# ``_UPSAMPLE @ grid @ _UPSAMPLE.T`` enlarges a coarse grid into a smooth image.
_UPSAMPLE = cv2.resize(
    np.eye(_BLOTCH_GRID, dtype=np.float32),
    (_BLOTCH_GRID, IMAGE_SIZE),
    interpolation=cv2.INTER_CUBIC,
)
# A fixed bank of unit pixel noise; each scene takes a randomly offset window of it.
_NOISE_BANK = np.random.default_rng(20240611).standard_normal(
    size=(_NUM_CHANNELS, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE), dtype=np.float32
)


@dataclass(frozen=True)
class DemoScene:
    """One rendered scene with its ground truth."""

    image: np.ndarray
    label: int
    object_box: tuple[int, int, int, int]
    cue_box: tuple[int, int, int, int]
    cue_class: int


def cue_box_for_class(cue_class: int) -> tuple[int, int, int, int]:
    """Return the fixed ``(x0, y0, x1, y1)`` box of the mark that stands for ``cue_class``.

    Class 0 uses the top-left corner, 1 top-right, 2 bottom-left, 3 bottom-right.
    """
    if not 0 <= cue_class < len(CLASS_NAMES):
        raise ValueError(f"cue_class must be in [0, {len(CLASS_NAMES)}), got {cue_class}")
    far = IMAGE_SIZE - CUE_MARGIN - CUE_SIZE
    x0 = far if cue_class in (1, 3) else CUE_MARGIN
    y0 = far if cue_class in (2, 3) else CUE_MARGIN
    return (x0, y0, x0 + CUE_SIZE, y0 + CUE_SIZE)


def _check_request(split: str, index: int) -> None:
    if split not in SPLIT_SIZES:
        known = ", ".join(sorted(SPLIT_SIZES))
        raise ValueError(f"unknown split {split!r}; expected one of: {known}")
    size = SPLIT_SIZES[split]
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for split {split!r} (0..{size - 1})")


def _background(rng: np.random.Generator) -> np.ndarray:
    """Return a float32 3 x H x W textured background (blotches, stripes, gradient)."""
    coarse = rng.normal(0.0, BLOTCH_STRENGTH, size=(_NUM_CHANNELS, _BLOTCH_GRID, _BLOTCH_GRID))
    image = _UPSAMPLE @ coarse.astype(np.float32) @ _UPSAMPLE.T

    angle = rng.uniform(0.0, np.pi)
    wavenumber = np.float32(2.0 * np.pi / rng.uniform(5.0, 16.0))
    along_x = _COORDS * (np.float32(np.cos(angle)) * wavenumber)
    along_y = _COORDS * (np.float32(np.sin(angle)) * wavenumber)
    # sin(a + b) expanded into outer products keeps this separable and cheap.
    stripes = np.outer(np.cos(along_y), np.sin(along_x)) + np.outer(np.sin(along_y), np.cos(along_x))
    stripe_colour = rng.normal(0.0, STRIPE_STRENGTH, size=_NUM_CHANNELS).astype(np.float32)
    image += stripes[None] * stripe_colour[:, None, None]

    base = (rng.uniform(*BACKGROUND_LEVEL_RANGE) + rng.normal(0.0, BACKGROUND_TINT, size=_NUM_CHANNELS)).astype(
        np.float32
    )
    slope = rng.normal(0.0, 0.35, size=(2, _NUM_CHANNELS)).astype(np.float32)
    image += slope[0][:, None, None] * _CENTRED[None, None, :]
    image += (slope[1][:, None] * _CENTRED[None, :] + base[:, None])[:, :, None]
    return image


def _rotated(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _shape_outline(label: int, size: float, rng: np.random.Generator) -> np.ndarray | None:
    """Return polygon vertices centred on the origin, or ``None`` for a circle."""
    name = CLASS_NAMES[label]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    if name == "circle":
        return None
    if name == "square":
        half = size * 0.4
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        return _rotated(corners, angle)
    if name == "triangle":
        radius = size * 0.58
        turns = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0 + angle
        return radius * np.stack([np.cos(turns), np.sin(turns)], axis=1)
    if name == "cross":
        arm = size * 0.5
        width = size * rng.uniform(0.14, 0.2)
        plus = np.array(
            [
                [-width, -arm],
                [width, -arm],
                [width, -width],
                [arm, -width],
                [arm, width],
                [width, width],
                [width, arm],
                [-width, arm],
                [-width, width],
                [-arm, width],
                [-arm, -width],
                [-width, -width],
            ]
        )
        return _rotated(plus, angle)
    raise AssertionError(f"no outline for class {name!r}")


def _object_mask(label: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise the class shape at a random size, angle and place; 255 inside, 0 outside."""
    size = rng.uniform(*OBJECT_SIZE_RANGE)
    outline = _shape_outline(label, size, rng)
    if outline is None:
        extent_low = extent_high = np.full(2, size / 2.0)
    else:
        extent_low = -outline.min(axis=0)
        extent_high = outline.max(axis=0)
    # Keep a one-pixel safety margin for rasterisation rounding.
    low = OBJECT_MIN + 1 + extent_low
    high = OBJECT_MAX - 2 - extent_high
    centre = rng.uniform(low, high)

    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    if outline is None:
        cx, cy = (int(round(v)) for v in centre)
        cv2.circle(mask, (cx, cy), int(round(size / 2.0)), 255, thickness=-1, lineType=cv2.LINE_8)
    else:
        vertices = np.round(outline + centre).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 255, lineType=cv2.LINE_8)
    return mask


def _pick_cue_class(split: str, label: int, rng: np.random.Generator) -> int:
    num_classes = len(CLASS_NAMES)
    if split == "test":
        return int(rng.integers(num_classes))
    if rng.random() < TRAIN_CUE_AGREEMENT:
        return label
    other = int(rng.integers(num_classes - 1))
    return other if other < label else other + 1


def _render(split: str, index: int, seed: int) -> tuple[DemoScene, np.ndarray]:
    """Render one scene and return it with the boolean mask of its object pixels."""
    _check_request(split, index)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    label = index % len(CLASS_NAMES)
    cue_class = _pick_cue_class(split, label, rng)

    image = _background(rng)

    mask = _object_mask(label, rng)
    inside = mask.astype(bool)
    background_mean = image.mean(axis=(1, 2))
    polarity = 1.0 if rng.random() < 0.5 else -1.0
    contrast = polarity * rng.uniform(*OBJECT_CONTRAST_RANGE)
    tint = rng.normal(0.0, OBJECT_TINT, size=_NUM_CHANNELS)
    colour = np.clip(background_mean + contrast + tint, 0.0, 255.0).astype(np.float32)
    image[:, inside] = colour[:, None]

    x0, y0, x1, y1 = cue_box_for_class(cue_class)
    image[:, y0:y1, x0:x1] = np.float32(CUE_FRAME_LEVEL)
    inner = CUE_SIZE // 3
    image[:, y0 + inner : y1 - inner, x0 + inner : x1 - inner] = np.float32(CUE_CENTRE_LEVEL)

    noise_y, noise_x = rng.integers(IMAGE_SIZE, size=2)
    noise = _NOISE_BANK[:, noise_y : noise_y + IMAGE_SIZE, noise_x : noise_x + IMAGE_SIZE]
    image += np.float32(NOISE_STRENGTH) * noise
    pixels = cv2.merge(list(np.clip(image, 0.0, 255.0).astype(np.uint8)))

    bx, by, bw, bh = cv2.boundingRect(mask)
    scene = DemoScene(
        image=pixels,
        label=label,
        object_box=(bx, by, bx + bw, by + bh),
        cue_box=(x0, y0, x1, y1),
        cue_class=cue_class,
    )
    return scene, inside


def render_scene(split: str, index: int, seed: int = 0) -> DemoScene:
    """Render scene ``index`` of ``split``; the result depends only on the arguments.

    Raises:
        ValueError: for an unknown split or an index outside ``SPLIT_SIZES[split]``.
    """
    return _render(split, index, seed)[0]


def render_object_mask(split: str, index: int, seed: int = 0) -> np.ndarray:
    """Return the boolean H x W mask of the pixels covered by the scene's object."""
    return _render(split, index, seed)[1]
