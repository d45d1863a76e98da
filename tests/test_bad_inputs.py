"""A corpus of bad inputs, written by the test itself: every readable image is converted as the model needs,
every unreadable one is skipped, recorded in errors.csv with its reason and counted, and the run goes on."""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import run_config
from PIL import Image

from cnnvis_cli.data import open_image
from cnnvis_cli.errors import UserError
from cnnvis_cli.pipeline import run


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose header claims `width` x `height` pixels (CRC fixed): a decompression bomb's size."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """A 40 x 20 JPEG whose EXIF says: rotate 90 degrees to view (orientation 6)."""
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def rgb(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


READABLE = {  # file name -> bytes; each must be converted to RGB and predicted
    "grey.png": png_bytes(rgb().convert("L")),
    "rgba.png": png_bytes(rgb().convert("RGBA")),
    "palette.png": png_bytes(rgb().convert("P")),
    "sixteen_bit.png": png_bytes(Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16))),
    "one_pixel.png": png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))),
    "rotated.jpg": exif_rotated_jpeg(),
    "duplicate_a.png": png_bytes(rgb(seed=5)),
    "duplicate_b.png": png_bytes(rgb(seed=5)),
}


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    rgb().convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


READABLE["cmyk.jpg"] = cmyk_jpeg()
UNREADABLE = {  # file name -> bytes; each must be skipped and recorded
    "zero_bytes.png": b"",
    "truncated.png": png_bytes(rgb())[:200],
    "truncated.jpg": READABLE["cmyk.jpg"][:300],
    "text.jpg": b"this is not an image, just text with a .jpg name\n",
    "bomb.png": claimed_size_png(100_000, 100_000),
}
CLASSES = ["big cat", "čaj ☕", "v1.2", "back\\slash", "-dash"]


NOT_UTF8 = b"caf\xe9.png"  # a Latin-1 name, as old Windows and Samba shares have them
ENTRIES = ("broken_link.png", "link_loop.png", "fifo.png")  # named like images, none a file to read


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for number, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        if number == 0:
            for file, content in {**READABLE, **UNREADABLE}.items():
                (root / name / file).write_bytes(content)
        else:
            (root / name / f"img {number}.png").write_bytes(png_bytes(rgb(seed=number)))
    first = root / CLASSES[0]
    with open(os.path.join(os.fsencode(first), NOT_UTF8), "wb") as file:
        file.write(png_bytes(rgb(seed=9)))
    (first / "broken_link.png").symlink_to(first / "no such file.png")
    (first / "link_loop.png").symlink_to(first / "link_loop.png")
    os.mkfifo(first / "fifo.png")  # opening it would wait for a writer for ever
    (root / "empty class").mkdir()
    return root


def test_every_bad_input_is_read_or_skipped_with_a_record(bad_folder: Path, tmp_path: Path) -> None:
    outside = set((tmp_path).iterdir())
    cfg = run_config("model=resnet18", "model.weights=null", "dataset=imagefolder", f"dataset.root={bad_folder}",
                     "dataset.num_workers=0", "model.input_size=32", "model.resize_size=32",
                     "selection.criteria=[low_confidence]", "selection.threshold=1.0", "render.panels=true")
    result = run(cfg, tmp_path / "run")
    readable = len(READABLE) + 1 + len(CLASSES) - 1
    assert result.summary["samples"] == readable and result.summary["unreadable"] == len(UNREADABLE) + len(ENTRIES)
    with (tmp_path / "run" / "errors.csv").open(newline="", encoding="utf-8") as file:
        errors = {row["sample_id"]: row["reason"] for row in csv.DictReader(file)}
    assert set(errors) == {f"big cat/{name}" for name in [*UNREADABLE, *ENTRIES]} and all(errors.values())
    assert "DecompressionBomb" in errors["big cat/bomb.png"]
    assert "a broken link" in errors["big cat/broken_link.png"] and "not a regular file" in errors["big cat/fifo.png"]
    with (tmp_path / "run" / "predictions.csv").open(newline="", encoding="utf-8") as file:
        predicted = {row["sample_id"] for row in csv.DictReader(file)}
    assert {f"big cat/{name}" for name in READABLE} <= predicted and "čaj ☕/img 1.png" in predicted
    assert "big cat/caf\\xe9.png" in predicted  # the byte that is not UTF-8, escaped: it names the file exactly
    # nothing outside the run directory, whatever the names hold
    assert set(tmp_path.iterdir()) == outside | {tmp_path / "run"}
    run_files = [path.relative_to(tmp_path / "run") for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert all(".." not in path.parts for path in run_files)
    assert len(list((tmp_path / "run" / "panels").iterdir())) == result.summary["selection"]["selected"]


def test_conversion_applies_exif_and_gives_8_bit_rgb(tmp_path: Path) -> None:
    for name, content in READABLE.items():
        (tmp_path / name).write_bytes(content)
        image = open_image(tmp_path / name)
        assert image.mode == "RGB", name
    assert open_image(tmp_path / "rotated.jpg").size == (20, 40)  # turned upright
    sixteen = np.asarray(open_image(tmp_path / "sixteen_bit.png"))
    assert sixteen.max() > 200 and sixteen.min() == 0  # scaled to 8 bits, not clipped to white


def test_strict_stops_at_the_first_unreadable_image(bad_folder: Path, tmp_path: Path) -> None:
    cfg = run_config("model=resnet18", "model.weights=null", "dataset=imagefolder", f"dataset.root={bad_folder}",
                     "dataset.num_workers=0", "model.input_size=32", "model.resize_size=32", "strict=true")
    with pytest.raises(UserError, match=r"unreadable image big cat/.*; strict=true stops here"):
        run(cfg, tmp_path / "run")


def test_an_empty_dataset_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images .* found under"):
        run(run_config("dataset=imagefolder", f"dataset.root={tmp_path / 'data'}"), tmp_path / "run")
