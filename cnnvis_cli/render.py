"""Heatmap overlays: colour the maps and blend them over the images, on the device, a batch at a time."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def colormap_lut(name: str, device: torch.device) -> torch.Tensor:
    """OpenCV's colormap `name` as a 256 x 3 uint8 RGB lookup table on `device`."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    bgr = cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name.upper()}"))[:, 0, :]
    return torch.from_numpy(np.ascontiguousarray(bgr[:, ::-1])).to(device)


def overlay(images: torch.Tensor, maps: torch.Tensor, lut: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blend R colour-mapped heatmaps over R uint8 images (R x 3 x H x W): R x H x W x 3 uint8 RGB."""
    levels = (maps.clamp(0, 1) * 255).round().long()
    heat = lut[levels].float()  # R x H x W x 3
    base = images.permute(0, 2, 3, 1).float()
    return (alpha * heat + (1 - alpha) * base).round().clamp(0, 255).to(torch.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An H x W x 3 RGB uint8 array as PNG bytes."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()
