"""Test sets: where images come from, how they are decoded, and how they reach the model in batches.

A *source* gives random access to (image, label, sample id) triples; `SampleSet` applies the model's
geometry (resize, centre crop) and yields uint8 tensors, so batches stay small until they are normalised
on the device. An image that cannot be decoded is not fatal: it comes out of the loader as a `BadSample`
and the run records it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnvis_cli.config import IMAGE_EXTENSIONS, DatasetConfig
from cnnvis_cli.errors import UserError, first_line, unknown_name
from cnnvis_cli.models import Preprocess
from cnnvis_cli.names import class_key, matching_classes

IMAGENETTE_TO_IMAGENET = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
UNLABELLED = -1


@dataclass
class Sample:
    """One decoded test image with its label (UNLABELLED if unknown) and ground-truth extras."""

    image: Image.Image
    label: int
    sample_id: str
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be read, and why."""

    index: int
    sample_id: str
    reason: str


class Source:
    """Random access to the samples of a test set."""

    class_names: list[str] | None = None  # label names in the source's own index order
    extra_columns: tuple[str, ...] = ()
    label_offsets: Sequence[int] | None = None  # source label -> model class index, when fixed by the source

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def path(self, index: int) -> Path | None:
        """The sample's file, when it has one."""
        return None

    def highest_label(self) -> int | None:
        """The largest label index a sample can have (None when unlabelled)."""
        return len(self.class_names) - 1 if self.class_names else None


# what decoding a broken file raises: corrupt data, an unknown format, or a header that asks for too much memory
UNREADABLE = (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError)
MAX_ASPECT = 100  # longer side over shorter side of an image worth resizing


def printable(text: str) -> str:
    """`text` as any UTF-8 file can hold it: the bytes of a file name that are not UTF-8 (a name from an old
    Windows or Samba share, which Python carries as lone surrogates) become `\\xNN` escapes, which say
    exactly which bytes the name has."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_suffixes(extensions: Sequence[str]) -> tuple[str, ...]:
    """`dataset.extensions` as lower-case suffixes with their dot (`png` and `.PNG` are `.png`)."""
    return tuple(dict.fromkeys(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions))


def require_folder(root: str | Path) -> Path:
    """`dataset.root` as a path, which must be a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"dataset folder not found: {path} (set dataset.root=PATH)")
    return path


def require_list_file(list_file: str | Path) -> Path:
    """`dataset.list_file` as a path, which must be a file."""
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise UserError(f"dataset.list_file not found: {path}")
    return path


def open_image(path: Path) -> Image.Image:
    """Decode an image file as 8-bit RGB, with its EXIF orientation applied. Anything but a regular file (a
    broken link, a FIFO, which would block), and a picture over MAX_ASPECT times as long as wide, are
    refused before decoding."""
    if not path.is_file():
        kind = "a broken link" if path.is_symlink() and not path.exists() else "not a regular file"
        raise FileNotFoundError(f"{kind}: {printable(str(path))}")
    with Image.open(path) as image:
        width, height = image.size
        if max(width, height) > MAX_ASPECT * min(width, height):
            # resizing its shorter side to the model's input would make a picture of up to millions of
            # times its pixels (a damaged header often claims such sizes)
            raise ValueError(f"a picture of {width} x {height} px, more than {MAX_ASPECT} times as long as it is "
                             "wide, is no photograph to resize")
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            pixels = np.asarray(image, dtype=np.float32)
            scale = 257.0 if pixels.max(initial=0) > 255 else 1.0
            image = Image.fromarray(np.clip(pixels / scale, 0, 255).astype(np.uint8))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # what PIL asks for palettes with transparency
        return image.convert("RGB")


class ImageFolderSource(Source):
    """`root/CLASS/IMAGE` (labelled, classes in sorted order) or a flat folder of images (unlabelled)."""

    def __init__(self, root: Path, extensions: Sequence[str]) -> None:
        require_folder(root)
        suffixes = image_suffixes(extensions)

        def images_in(folder: Path) -> list[Path]:
            """Every entry named like an image but a folder: a broken link or a FIFO is a sample that
            cannot be read, recorded as such, not one that silently is not there."""
            return sorted(
                path for path in folder.rglob("*")
                if path.suffix.lower() in suffixes and not path.is_dir() and not _hidden(path, folder)
            )

        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.root = root
        self.samples: list[tuple[Path, int]] = []
        if class_dirs:
            self.class_names = [folder.name for folder in class_dirs]
            for label, folder in enumerate(class_dirs):
                self.samples += [(path, label) for path in images_in(folder)]
        else:
            self.samples = [(path, UNLABELLED) for path in images_in(root)]
        if not self.samples:
            raise UserError(f"no images ({', '.join(sorted(suffixes))}) found under {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return printable(self.samples[index][0].relative_to(self.root).as_posix())

    def path(self, index: int) -> Path:
        return self.samples[index][0].resolve()

    def load(self, index: int) -> Sample:
        path, label = self.samples[index]
        return Sample(open_image(path), label, self.sample_id(index))


def _hidden(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts)


class FileListSource(Source):
    """Images listed in a CSV file, or on standard input (`-`): one `path` or `path,label` record per line,
    quoted as CSV quotes (a path that holds a comma: `"a,b.png",oak`), with an optional header (`path` or
    `path,label`) and `#` comment lines; relative paths are under the list's folder. A label is a class name
    or a class index (of `dataset.class_names` when given, else of the model); one list does not mix them."""

    def __init__(self, list_file: str, class_names: Sequence[str] | None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        if list_file == "-":
            stream = getattr(sys.stdin, "buffer", None)
            text = stream.read().decode("utf-8", "surrogateescape") if stream else sys.stdin.read()
            base = Path.cwd()
        else:
            path = require_list_file(list_file)
            text, base = path.read_bytes().decode("utf-8", "surrogateescape"), path.parent
        records = _list_records(text, list_file, image_suffixes(extensions))
        if not records:
            raise UserError(f"dataset.list_file {list_file} lists no images")
        numbers = [label for _, label in records if label.lstrip("-").isdigit()]
        names = [label for _, label in records if label and not label.lstrip("-").isdigit()]
        if numbers and names:
            raise UserError(f"dataset.list_file {list_file} mixes class names ({names[0]}) and class indices "
                            f"({numbers[0]}); label every line the same way")
        self.class_names = list(class_names) if class_names else (sorted(set(names)) if names else None)
        self.samples = [(_resolve(base, path_text), self._label(label)) for path_text, label in records]

    def highest_label(self) -> int | None:
        return max((label for _, label in self.samples), default=None)

    def _label(self, label: str) -> int:
        if not label:
            return UNLABELLED
        if label.lstrip("-").isdigit():
            if int(label) < 0:
                raise UserError(f"label {label} in the list file is negative; use a class index or name")
            return int(label)
        matches = matching_classes(label, self.class_names or [])
        if len(matches) != 1:
            raise unknown_name("label", label, self.class_names or [], "set dataset.class_names")
        return matches[0]

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return printable(str(self.samples[index][0]))

    def path(self, index: int) -> Path:
        return self.samples[index][0].resolve()

    def load(self, index: int) -> Sample:
        path, label = self.samples[index]
        return Sample(open_image(path), label, self.sample_id(index))


class BoxedSource(Source):
    """Another source's samples, each with the object box that a CSV file gives it (`object_box`, "x0 y0 x1
    y1" in pixels of the original image; empty for images the file does not list)."""

    def __init__(self, inner: Source, boxes: dict[Path, str]) -> None:
        self.inner, self.boxes = inner, boxes
        self.class_names, self.label_offsets = inner.class_names, inner.label_offsets
        self.extra_columns = (*inner.extra_columns, "object_box")

    def __len__(self) -> int:
        return len(self.inner)

    def sample_id(self, index: int) -> str:
        return self.inner.sample_id(index)

    def path(self, index: int) -> Path | None:
        return self.inner.path(index)

    def highest_label(self) -> int | None:
        return self.inner.highest_label()

    def load(self, index: int) -> Sample:
        sample = self.inner.load(index)
        path = self.inner.path(index)
        sample.extras = {**sample.extras, "object_box": self.boxes.get(path, "") if path else ""}
        return sample


def read_boxes(boxes_file: str | Path, base: Path) -> dict[Path, str]:
    """Object boxes from a CSV file with the header `path,x0,y0,x1,y1` (pixels of the original image, x1 and
    y1 exclusive; relative paths under `base`), by resolved path."""
    path = Path(boxes_file).expanduser()
    if not path.is_file():
        raise UserError(f"dataset.boxes file not found: {path}")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or not {"path", "x0", "y0", "x1", "y1"} <= set(reader.fieldnames):
            raise UserError(f"dataset.boxes {path} needs the header path,x0,y0,x1,y1")
        boxes = {}
        for line, row in enumerate(reader, start=2):
            try:
                x0, y0, x1, y1 = (float(row[key]) for key in ("x0", "y0", "x1", "y1"))
            except (TypeError, ValueError):
                raise UserError(f"dataset.boxes {path}, line {line}: x0, y0, x1, y1 must be numbers") from None
            if x1 <= x0 or y1 <= y0:
                raise UserError(f"dataset.boxes {path}, line {line}: the box is empty (x1 <= x0 or y1 <= y0)")
            boxes[_resolve(base, row["path"]).resolve()] = f"{x0:g} {y0:g} {x1:g} {y1:g}"
    return boxes


def _list_records(text: str, list_file: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (path, label) records of a file list's text ("" where a line has no label)."""
    reader = csv.reader(io.StringIO(text))
    records: list[tuple[str, str]] = []
    for row in reader:
        fields = [field.strip() for field in row]
        if not fields or not fields[0] or fields[0].startswith("#"):
            continue
        if not records and [field.lower() for field in fields] in (["path"], ["path", "label"]):
            continue  # the header
        where = f"dataset.list_file {list_file}, line {reader.line_num}"
        if len(fields) > 2:
            raise UserError(f"{where}: {len(fields)} fields where a line holds path or path,label; quote a path "
                            'that holds a comma: "a,b.png",label')
        label = fields[1] if len(fields) > 1 else ""
        if label.lower().endswith(extensions):
            raise UserError(f"{where}: the label '{label}' looks like the end of a path that holds a comma; quote "
                            f'the path: "{fields[0]},{label}"')
        records.append((fields[0], label))
    return records


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


class TorchvisionSource(Source):
    """One of torchvision's datasets (CIFAR-10, Fashion-MNIST, Imagenette), downloaded on request."""

    def __init__(self, cfg: DatasetConfig) -> None:
        from torchvision import datasets

        root = Path(cfg.root or "~/.cache/cnnvis/datasets").expanduser()
        train = cfg.split == "train"
        try:
            if cfg.name == "cifar10":
                self.dataset = datasets.CIFAR10(str(root), train=train, download=cfg.download)
            elif cfg.name == "fashion_mnist":
                self.dataset = datasets.FashionMNIST(str(root), train=train, download=cfg.download)
            else:
                split = "train" if train else "val"
                self.dataset = datasets.Imagenette(str(root), split=split, size=cfg.size, download=cfg.download)
                self.label_offsets = IMAGENETTE_TO_IMAGENET
        except OSError as error:  # a failed download: no network, a proxy, a full disk
            raise UserError(f"could not download {cfg.name} into {root}: {first_line(str(error))}") from error
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
            raise UserError(
                f"{cfg.name} not found under {root}; add dataset.download=true to fetch it, "
                "or set dataset.root to where it is"
            ) from error
        classes = self.dataset.classes
        self.class_names = [name[0] if isinstance(name, tuple) else str(name) for name in classes]
        self.name = cfg.name

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, index: int) -> str:
        return f"{self.name}/{index}"

    def load(self, index: int) -> Sample:
        image, label = self.dataset[index]
        return Sample(image.convert("RGB"), int(label), self.sample_id(index))


class DemoSource(Source):
    """The embedded demo: shapes on textured backgrounds, each with a spurious cue mark."""

    extra_columns = ("object_box", "cue_box", "cue_class")

    def __init__(self, split: str, seed: int) -> None:
        from cnnvis_cli.demo import scene

        if split not in scene.SPLIT_SIZES:
            raise unknown_name("demo split", split, scene.SPLIT_SIZES)
        self.scene = scene
        self.split, self.seed = split, seed
        self.class_names = list(scene.CLASS_NAMES)

    def __len__(self) -> int:
        return self.scene.SPLIT_SIZES[self.split]

    def sample_id(self, index: int) -> str:
        return f"demo-{self.split}/{index:05d}"

    def load(self, index: int) -> Sample:
        drawn = self.scene.render_scene(self.split, index, self.seed)
        extras = {
            "object_box": " ".join(map(str, drawn.object_box)),
            "cue_box": " ".join(map(str, drawn.cue_box)),
            "cue_class": self.class_names[drawn.cue_class],
        }
        return Sample(Image.fromarray(drawn.image), drawn.label, self.sample_id(index), extras)


DATASETS: dict[str, str] = {
    "demo": "the embedded demo: shapes with a spurious cue (offline)",
    "imagefolder": "root/CLASS/IMAGE folders, or a flat folder of unlabelled images",
    "files": "image paths, one per line (path or path,label), from a file or standard input",
    "cifar10": "torchvision CIFAR-10 (dataset.download=true fetches it)",
    "fashion_mnist": "torchvision Fashion-MNIST (dataset.download=true fetches it)",
    "imagenette": "torchvision Imagenette, labels mapped to ImageNet-1k indices",
}


def open_source(cfg: DatasetConfig) -> Source:
    """The source that `cfg` names, with the object boxes of `dataset.boxes` when given."""
    source = _open_source(cfg)
    if not cfg.boxes:
        return source
    if len(source) and source.path(0) is None:
        raise UserError(f"dataset.boxes needs image files; dataset={cfg.name} has none (use imagefolder or files)")
    base = Path(cfg.root).expanduser() if cfg.root else Path(cfg.boxes).expanduser().parent
    return BoxedSource(source, read_boxes(cfg.boxes, base))


def _open_source(cfg: DatasetConfig) -> Source:
    if cfg.name == "demo":
        return DemoSource(cfg.split, cfg.seed)
    if cfg.name == "imagefolder":
        if not cfg.root:
            raise UserError("dataset=imagefolder needs dataset.root=PATH")
        return ImageFolderSource(Path(cfg.root).expanduser(), cfg.extensions)
    if cfg.name == "files":
        if not cfg.list_file:
            raise UserError("dataset=files needs dataset.list_file=PATH (or - for standard input)")
        return FileListSource(cfg.list_file, cfg.class_names, cfg.extensions)
    if cfg.name in ("cifar10", "fashion_mnist", "imagenette"):
        return TorchvisionSource(cfg)
    raise unknown_name("dataset", cfg.name, DATASETS, "cnnvis list datasets")


def label_mapping(source: Source, model_class_names: list[str] | None, num_classes: int) -> list[int] | None:
    """Map the source's label indices onto the model's class indices; None when they already agree.

    A fixed mapping from the source wins for a 1000-class model (Imagenette -> ImageNet). Else, when the
    model knows its class names, labels are matched by name (case ignored, `_` and `-` read as spaces);
    a dataset with as many classes as the model and none of its names keeps its order. Classes the model
    does not have map to UNLABELLED: their samples are still predicted and can be selected by confidence,
    but never count as right or wrong.
    """
    if source.label_offsets is not None and num_classes == 1000:
        return list(source.label_offsets)
    names = source.class_names
    if names is None or model_class_names is None or names == model_class_names:
        return None
    lookup = {class_key(name): index for index, name in enumerate(model_class_names)}
    if num_classes == 1000 and all(_WNID.fullmatch(name) for name in names):
        lookup = {wnid: index for index, wnid in enumerate(imagenet_wnids())}  # ImageNet's own folder names
    mapped = [lookup.get(class_key(name), UNLABELLED) for name in names]
    if all(index == UNLABELLED for index in mapped) and len(names) == num_classes:
        return None  # same number of classes, none of the names: the dataset's order is the model's order
    return mapped


def unmatched_classes(source: Source, label_map: list[int] | None) -> list[str]:
    """The source's classes that `label_map` leaves without a model class."""
    if label_map is None or source.class_names is None:
        return []
    return [name for name, index in zip(source.class_names, label_map, strict=False) if index == UNLABELLED]


_WNID = re.compile(r"n\d{8}")


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids (`n01440764`...) in class-index order, as its folders are named."""
    return (resources.files("cnnvis_cli") / "imagenet_wnids.txt").read_text().split()


def model_geometry(preprocess: Preprocess) -> transforms.Compose:
    """A PIL image to the uint8 3 x H x W tensor the model sees, as the weights' own transforms() do it."""
    return transforms.Compose([
        transforms.Resize(preprocess.resize_size, transforms.InterpolationMode(preprocess.interpolation),
                          antialias=True),
        transforms.CenterCrop(preprocess.input_size),
        transforms.PILToTensor(),
    ])


class SampleSet(Dataset):
    """A source seen through the model's geometry: items are (uint8 3xHxW tensor, label, index)."""

    def __init__(self, source: Source, preprocess: Preprocess, indices: Sequence[int],
                 label_map: Sequence[int] | None = None) -> None:
        self.source = source
        self.indices = list(indices)
        self.label_map = label_map
        self.geometry = model_geometry(preprocess)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int, dict[str, str]] | BadSample:
        index = self.indices[position]
        try:
            sample = self.source.load(index)
            image = self.geometry(sample.image)
        except UNREADABLE as error:
            reason = printable(f"{type(error).__name__}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}")
            return BadSample(index, self.source.sample_id(index), reason)
        label = sample.label
        if label != UNLABELLED and self.label_map is not None:
            label = self.label_map[label]
        return image, label, index, {**sample.extras, "original_size": f"{sample.image.width} {sample.image.height}"}


@dataclass
class Batch:
    """Decoded images of one loader step, and the samples of that step that could not be read."""

    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, UNLABELLED where unknown
    indices: list[int]
    extras: list[dict[str, str]]
    bad: list[BadSample]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader with pin_memory=True, so copies to CUDA can overlap with work."""
        self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self


def collate(items: list) -> Batch:
    good = [item for item in items if not isinstance(item, BadSample)]
    bad = [item for item in items if isinstance(item, BadSample)]
    if not good:
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), [], [], bad)
    return Batch(
        torch.stack([item[0] for item in good]),
        torch.tensor([item[1] for item in good], dtype=torch.long),
        [item[2] for item in good],
        [item[3] for item in good],
        bad,
    )


def subset_indices(size: int, limit: int | None, seed: int) -> list[int]:
    """All indices, or a seeded random subset of `limit` of them, in ascending order."""
    if limit is None or limit >= size:
        return list(range(size))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:limit].tolist())


def loader_workers(configured: int | None) -> int:
    """`dataset.num_workers`, else one worker per CPU core beyond the two that the model's forward pass keeps
    busy, at most 4. On 2 cores workers only take cores from the forward pass: resnet18 over JPEGs ran at
    1.01x the bare forward's speed with no worker, 0.81x with one and 0.78x with two."""
    if configured is not None:
        return configured
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def make_loader(samples: SampleSet, batch_size: int, num_workers: int | None, pin_memory: bool) -> DataLoader:
    """Batches in order; unreadable samples travel in `Batch.bad` instead of stopping the loader."""
    return DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=loader_workers(num_workers),
                      pin_memory=pin_memory, collate_fn=collate)
