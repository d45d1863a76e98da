"""How long the explanation stage will take, said before it starts, with the option that makes it cheaper.

A many-pass technique (Score-CAM, occlusion, RISE, integrated gradients, ...) costs hundreds of forward
passes per image: on a CPU with a large model that is minutes for a handful of images. The estimate times
one forward pass of the batch those techniques send and multiplies by the passes each needs.
"""

from __future__ import annotations

import logging
import time

import torch

from cnnvis_cli.techniques import Technique

log = logging.getLogger("cnnvis")
MANY_PASSES = 8  # techniques that cost more forward passes per image than this are estimated
WARN_AFTER_SECONDS = 60.0


@torch.no_grad()
def seconds_per_input(model: torch.nn.Module, example: torch.Tensor, batch_size: int) -> float:
    """Seconds one input takes in a forward pass of `batch_size` copies of `example` (the second of two
    passes: the first also pays for setting the batch shape up)."""
    batch = example.expand(batch_size, *example.shape[1:]).contiguous()
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        model(batch)
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        seconds = time.perf_counter() - start
    return seconds / batch_size


def explanation_estimates(techniques: list[Technique], example: torch.Tensor, images: int,
                          batch_size: int) -> dict[str, tuple[int, float]]:
    """Per technique, forward passes per image and estimated seconds for `images` images; empty when no
    technique needs many passes (the explanation then costs about what inference did)."""
    if not images:
        return {}
    passes = {technique.name: technique.passes_per_image(example) for technique in techniques}
    if max(passes.values(), default=0) <= MANY_PASSES:
        return {}
    per_input = seconds_per_input(techniques[0].model, example, batch_size)
    return {name: (count, images * count * per_input) for name, count in passes.items()}


def duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def say_estimates(techniques: list[Technique], estimates: dict[str, tuple[int, float]], images: int,
                  device: torch.device) -> None:
    """Log the explanation's estimated time, and warn of each technique that alone takes long."""
    if not estimates:
        return
    total = sum(seconds for _, seconds in estimates.values())
    log.info("explaining %d images: about %s on %s", images, duration(total), device)
    for technique in techniques:
        passes, seconds = estimates[technique.name]
        if seconds > WARN_AFTER_SECONDS:
            cheaper = f"{technique.cheaper}, or " if technique.cheaper else ""
            log.warning("%s takes about %s here (%d images x %d forward passes each on %s); %s"
                        "fewer samples (selection.max_samples) make it cheaper", technique.name, duration(seconds),
                        images, passes, device, cheaper)
