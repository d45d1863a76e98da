"""The prediction cache: a run whose model, weights, test set and preprocessing match an earlier run's reuses
that run's predictions instead of running the inference stage again.

This is what makes a sweep over techniques or selections (`cnnvis run -m technique=gradcam,scorecam`) pay
for inference once. An entry is a folder named by the SHA-256 of its key, holding `predictions.npz`,
`predictions.csv` and `key.json` (the key in words); entries are written whole or not at all.

The key holds everything the predictions depend on: the model's config and the size and modification
time of its checkpoint, the preprocessing, the dataset's config and the size and modification time of
every file read, the samples chosen, the class names and label mapping, the top-k kept, the device type,
mixed precision, and the versions of cnnvis, torch and torchvision. Changing any of them gives a new key.

Runs at the same time (a sweep's parallel jobs) share the cache safely: an entry appears whole by one
rename, so no reader sees half of one; and a run about to compute an entry that another run on the same
machine is computing waits for it instead (a lock file beside the entry names the computing process, and a
dead one's lock is taken over). On different machines both compute, and the first rename wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

from cnnvis_cli import __version__
from cnnvis_cli.config import RunConfig
from cnnvis_cli.data import Source
from cnnvis_cli.models import Preprocess
from cnnvis_cli.run_dir import alive

log = logging.getLogger("cnnvis")

FILES = ("predictions.npz", "predictions.csv")


def file_stamp(path: Path) -> list[Any]:
    """What tells a changed file from the one cached: its resolved path, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def files_digest(paths: list[Path | None]) -> str:
    """One SHA-256 over the stamps of many files (None where a sample has no file)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(json.dumps(None if path is None else file_stamp(path)).encode())
    return digest.hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class PredictionCache:
    """Entries under `root`, one folder per key digest."""

    root: Path

    def entry(self, key: dict[str, Any]) -> Path:
        return self.root / "predictions" / key_digest(key)[:32]

    def load(self, key: dict[str, Any]) -> dict[str, bytes] | None:
        """The cached files of `key` by name, or None when there is no whole entry."""
        folder = self.entry(key)
        try:
            return {name: (folder / name).read_bytes() for name in FILES}
        except OSError:
            return None

    def discard(self, key: dict[str, Any]) -> None:
        """Remove an entry that cannot be read, so that the next store replaces it."""
        shutil.rmtree(self.entry(key), ignore_errors=True)

    def store(self, key: dict[str, Any], files: dict[str, bytes]) -> Path | None:
        """Write an entry; a cache that cannot be written is logged and skipped, never fatal."""
        folder = self.entry(key)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
            for name in FILES:
                (staging / name).write_bytes(files[name])
            (staging / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str) + "\n")
            try:
                os.replace(staging, folder)
            except OSError:  # another run stored the same entry first
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as error:
            log.warning("could not write the prediction cache at %s (%s); set cache=null to turn it off",
                        folder, error)
            return None
        return folder

    def claim(self, key: dict[str, Any], poll: float = 1.0) -> tuple[CacheClaim | None, dict[str, bytes] | None]:
        """Before computing the predictions of `key`: a claim on them, or, when another process on this
        machine is computing them already (a sweep's parallel jobs), its entry once written (waiting for it).
        A claim whose holder died is taken over; one held on another machine is not waited for."""
        lock = self.entry(key).with_name(self.entry(key).name + ".lock")
        said, empty_since = False, None
        while True:
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, _, pid = lock.read_text().partition(" ")
                except FileNotFoundError:
                    continue  # released as we looked
                if not host:  # claimed this instant, its holder not yet written (or killed right then)
                    empty_since = empty_since or time.monotonic()
                    if time.monotonic() - empty_since > 10:
                        lock.unlink(missing_ok=True)
                    else:
                        time.sleep(poll)
                    continue
                if host != socket.gethostname():
                    return None, None  # its holder cannot be watched from here: compute beside it
                if not pid.strip().isdigit() or not alive(int(pid)):
                    lock.unlink(missing_ok=True)  # its holder stopped without writing the entry
                    continue
                found = self.load(key)
                if found is not None:
                    return None, found
                if not said:
                    log.info("waiting for process %s, which is computing the same predictions (%s)", pid.strip(),
                             self.entry(key))
                    said = True
                time.sleep(poll)
                continue
            except OSError:
                return None, None  # a cache that cannot be written: no claim, as no entry
            with os.fdopen(descriptor, "w") as file:
                file.write(f"{socket.gethostname()} {os.getpid()}")
            found = self.load(key)  # written between our look and our claim
            if found is not None:
                lock.unlink(missing_ok=True)
                return None, found
            return CacheClaim(lock), None


@dataclass(frozen=True)
class CacheClaim:
    """A process's claim on computing one entry; released once the entry is stored (or the run fails)."""

    lock: Path

    def release(self) -> None:
        self.lock.unlink(missing_ok=True)


def prediction_key(cfg: RunConfig, preprocess: Preprocess, source: Source, indices: Sequence[int],
                   class_names: list[str], label_map: list[int] | None, keep_k: int, tracked: tuple[int, ...],
                   device: torch.device) -> dict[str, Any] | None:
    """The key of a run's predictions, or None when they cannot be keyed (a file list read from standard
    input, whose labels are not in any file)."""
    if cfg.dataset.name == "files" and cfg.dataset.list_file == "-":
        return None
    model = asdict(cfg.model)
    del model["target_layer"]  # where heatmaps look, not what the model predicts
    dataset = asdict(cfg.dataset)
    for setting in ("batch_size", "num_workers"):  # how fast, not what
        del dataset[setting]
    checkpoint = cfg.model.checkpoint
    list_file = cfg.dataset.list_file if cfg.dataset.name == "files" else None
    return {
        "model": model,
        "checkpoint": file_stamp(Path(checkpoint).expanduser()) if checkpoint else None,
        "demo_weights": file_stamp(_demo_weights()) if cfg.model.source == "demo" else None,
        "preprocess": asdict(preprocess),
        "dataset": dataset,
        "list_file": file_stamp(Path(list_file).expanduser()) if list_file else None,
        "boxes": file_stamp(Path(cfg.dataset.boxes).expanduser()) if cfg.dataset.boxes else None,
        "files": files_digest([source.path(index) for index in indices]),
        "samples": hashlib.sha256(json.dumps(list(map(int, indices))).encode()).hexdigest(),
        "class_names": class_names,
        "label_map": label_map,
        "topk": cfg.topk,
        "keep_k": keep_k,
        "tracked": list(tracked),
        "device": device.type,
        "amp": cfg.amp and device.type == "cuda",
        "embeddings": "slices" in cfg.analysis,  # the penultimate features kept beside the predictions
        "exemplars": cfg.model.target_layer if "channels" in cfg.analysis else False,  # and the channels' samples
        "versions": {"cnnvis": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def _demo_weights() -> Path:
    from cnnvis_cli.demo import network

    return Path(network.__file__).with_name(network.WEIGHTS_FILE)
