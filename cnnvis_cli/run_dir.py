"""The run directory: safe file names, atomic writes, and CSV files streamed as rows arrive.

Everything a run writes goes through `RunDir`, which refuses any path that would leave the directory.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnvis_cli.errors import UserError

_UNSAFE = re.compile(r"[^\w.-]+")


def safe_name(text: str, max_length: int = 60) -> str:
    """A file-name fragment from any text: word characters, dots and dashes only, no leading dot."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return cleaned[:max_length]


def panel_path(index: int, sample_id: str) -> str:
    """Where a run writes a sample's panel, relative to the run directory: `panels/000042-img_0007.png`."""
    return f"panels/{index:06d}-{safe_name(Path(sample_id).stem, 40)}.png"


HOLDER_FILE = ".running"  # the process id of the run writing the directory, while it runs
HYDRAS_OWN = {".hydra", "cnnvis.log", HOLDER_FILE}  # what Hydra writes into a run directory before the run


def discard_unused(root: Path, below: Path) -> None:
    """Remove a run directory that holds nothing but what Hydra put there (a run stopped by a mistake before
    any work of its own), and the folders above it that this leaves empty, up to `below` (exclusive): a
    mistake leaves no `outputs/DATE/TIME` behind. A directory with anything else in it is left as it is."""
    root, below = root.resolve(), below.resolve()
    if root == below or below.is_relative_to(root) or not root.is_dir() \
            or any(entry.name not in HYDRAS_OWN for entry in root.iterdir()):
        return
    shutil.rmtree(root, ignore_errors=True)
    for parent in root.parents:
        if parent == below or not parent.is_relative_to(below) or any(parent.iterdir()):
            break
        parent.rmdir()



class RunDir:
    """A run's output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        """`root/parts...`, with its parent folder created; refuses anything outside the run directory."""
        path = self.root.joinpath(*parts).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"refusing to write outside the run directory: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, relative: str, data: bytes) -> Path:
        path = self.path(relative)
        _atomic_write(path, data)
        return path

    def write_json(self, relative: str, value: Any) -> Path:
        return self.write_bytes(relative, (json.dumps(value, indent=2, default=str) + "\n").encode())

    def csv_stream(self, relative: str, header: Sequence[str]) -> CsvStream:
        return CsvStream(self.path(relative), header)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the directory for this process while a run writes it: a second run into it (say, a resume
        started while the first still runs) stops with a UserError instead of racing it file by file. A
        holder file left by a killed run is taken over."""
        holder = self.root / HOLDER_FILE
        while True:
            try:
                descriptor = os.open(holder, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                refuse_if_held(self.root)
                holder.unlink(missing_ok=True)
        with os.fdopen(descriptor, "w") as file:
            file.write(str(os.getpid()))
        try:
            yield
        finally:
            holder.unlink(missing_ok=True)


def refuse_if_held(folder: Path) -> None:
    """A UserError when another live process holds `folder` (`RunDir.held`)."""
    holder = folder / HOLDER_FILE
    pid = _pid_in(holder)
    if pid is not None and alive(pid):
        raise UserError(f"{folder} is being written by another cnnvis run (process {pid}); wait for it to end or "
                        f"stop it, then run again (if no such run exists, delete {holder})")


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` exists (on Windows, where no signal can merely ask, assumed not)."""
    if sys.platform == "win32" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    # made with mode 0666 less the umask, as open() makes files (mkstemp's would be 0600: unreadable to a web
    # server or a colleague while report.html is not)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def flag_cell(value: bool | None) -> str:
    """A yes/no/unknown value as a CSV cell: "1", "0", or "" when unknown (an unlabelled sample)."""
    return "" if value is None else str(int(value))


def flag_from_cell(text: str) -> bool | None:
    """The value that `flag_cell` wrote."""
    return None if text == "" else text == "1"


def read_stream(path: Path, header: Sequence[str]) -> list[list[str]]:
    """The rows a `CsvStream` wrote to `path` (or, if its run was interrupted, to `path`.partial), without
    the header; none when neither file is there or the file has other columns. A last line that a kill cut
    short (no line end) is left out."""
    for candidate in (path, path.with_name(path.name + ".partial")):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            lines = list(csv.reader(io.StringIO(text[:text.rfind("\n") + 1])))
            if not lines or lines[0] != list(header):
                return []
            return [line for line in lines[1:] if len(line) == len(header)]
    return []


class CsvStream:
    """A CSV file written batch by batch into `NAME.partial`, renamed to `NAME` when closed cleanly."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.file = self.partial.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(header)
        self.rows = 0

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writer.writerow(row)
            self.rows += 1
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        os.replace(self.partial, self.path)

    def __enter__(self) -> CsvStream:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.file.close()  # keep the partial file: it holds every row finished before the failure
