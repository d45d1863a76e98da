"""Work beside the model's passes: drawing, PNG encoding and file writes run on a few threads while the
main thread feeds the model (OpenCV, zlib and file writes release the GIL).

At most `pending` jobs wait at a time, so a slow disk holds the model back instead of filling memory with
finished pictures; the first job that fails stops the work, and its error is raised in the main thread.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any


def default_threads() -> int:
    """Threads for the work beside the model: one per core, two at least, four at most."""
    return min(4, max(2, os.cpu_count() or 1))


class BackgroundWork:
    """Runs jobs on `threads` threads (0: at once, in the calling thread), in a `with` block that waits for
    every job and raises the first failure."""

    def __init__(self, threads: int, pending: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="cnnvis-draw") if threads > 0 else None
        self._pending = pending or 4 * max(threads, 1)
        self._futures: deque[Future] = deque()

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Run `job(*args)` beside the caller; waits first while `pending` jobs wait already."""
        if self._pool is None:
            job(*args)
            return
        while self._futures and (len(self._futures) >= self._pending or self._futures[0].done()):
            self._futures.popleft().result()  # raises the job's error here, in the main thread
        self._futures.append(self._pool.submit(job, *args))

    def wait(self) -> None:
        """Wait for every job submitted so far; raises the first failure."""
        while self._futures:
            self._futures.popleft().result()

    def __enter__(self) -> BackgroundWork:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            for future in self._futures:
                future.cancel()  # after a failure or Ctrl-C: jobs not yet started are dropped
            if self._pool is not None:
                self._pool.shutdown(wait=True)
