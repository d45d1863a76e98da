"""Helpers for tests: image folders written by the tests themselves, and composed configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnvis_cli.cli import compose
from cnnvis_cli.config import RunConfig, load_run_config


def write_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """`root/CLASS/img_N.png` with random pixels: `classes` maps class name -> image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{index}.png")
    return root


def run_config(*overrides: str) -> RunConfig:
    """The validated config `cnnvis run OVERRIDES` would use, with progress bars off."""
    return load_run_config(compose(["progress=false", *overrides]))
