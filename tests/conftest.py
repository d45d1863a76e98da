"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """`images/cat` with 3 and `images/dog` with 2 random PNGs."""
    return write_image_folder(tmp_path / "images", {"cat": 3, "dog": 2})
