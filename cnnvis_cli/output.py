"""Standard output carries only what a shell script reads: the run directory, JSON lines, listings.

Whatever else prints during a run (a user's model factory, a library announcing its weights, a DataLoader
worker) goes to standard error, and a reader that goes away early (`cnnvis list techniques | head -1`)
ends the output quietly instead of in a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def _descriptor(stream) -> int | None:
    """The file descriptor behind a stream, or None for one without (a test's captured output)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While inside, what Python code prints and what is written to file descriptor 1 (by C code or by child
    processes) goes to standard error."""
    sys.stdout.flush()
    real = sys.stdout
    out, err = _descriptor(sys.stdout), _descriptor(sys.stderr)
    saved = os.dup(out) if out is not None and err is not None else None
    if saved is not None:
        os.dup2(err, out)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        real.flush()  # what went to the real stream object meanwhile still goes to standard error
        sys.stdout = real
        if saved is not None:
            os.dup2(saved, out)
            os.close(saved)


def emit(lines: Iterable[str]) -> bool:
    """Write `lines` to standard output; False when its reader has gone, after which output is dropped."""
    try:
        for line in lines:
            sys.stdout.write(f"{line}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
        return False
    return True


def drop_stdout() -> None:
    """Send what is left for standard output (and the flush at exit) to /dev/null: its reader has gone."""
    descriptor = _descriptor(sys.stdout)
    if descriptor is not None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, descriptor)
        os.close(null)
