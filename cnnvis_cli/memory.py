"""Running out of GPU memory: halve the batch and go on.

`Halving` splits each batch into chunks no larger than its current limit; when a chunk raises CUDA's
out-of-memory error, it halves the limit (down to one item), logs it once per halving, frees the cache and
tries again. The limit then holds for the rest of the stage, so one tight batch does not make every later
batch fail first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
T = TypeVar("T")
log = logging.getLogger("cnnvis")


class Halving:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.limit: int | None = None  # None: whole batches

    def run(self, total: int, work: Callable[[slice], T]) -> list[T]:
        """`work` over consecutive slices of range(total), each no larger than the current limit."""
        results, start = [], 0
        while start < total:
            size = min(self.limit or total, total - start)
            try:
                results.append(work(slice(start, start + size)))
            except OUT_OF_MEMORY:
                if size == 1:
                    raise
                self.limit = size // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("%s: out of GPU memory with %d images at once; going on with %d", self.stage, size,
                            self.limit)
                continue
            start += size
        return results
