"""Which device a run uses, and mixed precision on it."""

from __future__ import annotations

import torch

from cnnvis_cli.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, then Apple's MPS, else the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


def device_of_rank(device: torch.device, local_rank: int) -> torch.device:
    """The GPU of process `local_rank` on its machine when a run spans many processes (`cuda` alone names
    none); any other device as it is."""
    if device.type == "cuda" and device.index is None and local_rank:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def amp_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision's dtype: bfloat16 where the GPU supports it (its range is float32's, so no overflow),
    else float16."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision autocast on CUDA when `enabled`; a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=enabled and device.type == "cuda")
