"""Heatmap overlays: colour the maps and blend them over the images, on the device, a batch at a time.

Maps in [0, 1] go through the run's colormap, blended in proportion to sqrt(value) (`alpha` at the map's
peak), so the image shows through, untinted, where the model did not look. Signed maps go through a
diverging blue-white-red map centred on zero and scaled per map by the 99th percentile of |value| (so a
few extreme pixels do not wash out the rest); each pixel's colour is blended in proportion to
sqrt(|value|), so the image shows through where the attribution is near zero, red marks evidence for the
target and blue evidence against it.
"""

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
    """Blend R colour-mapped heatmaps over R uint8 images (R x 3 x H x W): R x H x W x 3 uint8 RGB. Each
    pixel's colour weighs alpha x sqrt(value): `alpha` where the map peaks, nothing where it is 0."""
    values = maps.clamp(0, 1)
    heat = lut[(values * 255).round().long()].float()  # R x H x W x 3
    weight = alpha * values.sqrt()[..., None]  # the square root lifts moderate values into view
    base = images.permute(0, 2, 3, 1).float()
    return (weight * heat + (1 - weight) * base).round().clamp(0, 255).to(torch.uint8)


SIGNED_PERCENTILE = 0.99
# blue (negative) - white (zero) - red (positive), the end points of Moreland's "cool to warm" map
_NEGATIVE, _ZERO, _POSITIVE = (59, 76, 192), (221, 221, 221), (180, 4, 38)


def diverging_lut(device: torch.device) -> torch.Tensor:
    """256 x 3 uint8 RGB: index 0 is the most negative value, 128 zero, 255 the most positive."""
    steps = np.linspace(-1.0, 1.0, 256)[:, None]
    zero, negative, positive = (np.array(colour, dtype=np.float64) for colour in (_ZERO, _NEGATIVE, _POSITIVE))
    colours = np.where(steps < 0, zero + (negative - zero) * -steps, zero + (positive - zero) * steps)
    return torch.from_numpy(colours.round().astype(np.uint8)).to(device)


def signed_overlay(images: torch.Tensor, signed: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Blend R signed maps over R uint8 images (R x 3 x H x W), colour showing the sign: R x H x W x 3 uint8."""
    magnitude = signed.abs().flatten(1)
    scale = torch.quantile(magnitude, SIGNED_PERCENTILE, dim=1)
    scale = torch.where(scale > 0, scale, magnitude.amax(dim=1)).clamp_min(torch.finfo(signed.dtype).tiny)
    values = (signed / scale[:, None, None]).clamp(-1, 1)
    heat = lut[((values + 1) * 127.5).round().long()].float()
    weight = values.abs().sqrt()[..., None]  # the square root lifts moderate values into view
    base = images.permute(0, 2, 3, 1).float()
    return (weight * heat + (1 - weight) * base).round().clamp(0, 255).to(torch.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An H x W x 3 RGB uint8 array as PNG bytes."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()
