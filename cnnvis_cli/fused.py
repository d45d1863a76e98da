"""One forward pass for both stages: when every sample will be explained and every technique is a CAM made
from one forward pass of the unaltered image (Grad-CAM and its kin, Eigen-CAM), the inference stage's pass
keeps the target layers' outputs and takes the targets' gradients there, so the explanation stage does not
run the model again: it only upsamples and draws.

What is kept is each (sample, target class) map at the layer's size (7 x 7 on a resnet at 224 px: 196
bytes), on the CPU, and in the run directory's `cams.npz`, so a resumed run draws the same maps.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np
import torch

from cnnvis_cli.config import SelectionConfig
from cnnvis_cli.data import UNLABELLED
from cnnvis_cli.inference import ranked
from cnnvis_cli.targets import deepest_top, targets_for
from cnnvis_cli.techniques import Technique
from cnnvis_cli.techniques.base import eval_mode
from cnnvis_cli.techniques.cam import CamTechnique, forward_and_gradients
from cnnvis_cli.techniques.eigen import EigenCAM
from cnnvis_cli.techniques.gradient import GradientCAM

KEPT_FILE = "cams.npz"
Key = tuple[int, int]  # (sample index, target class)


def takes_every_sample(selection: SelectionConfig, count: int) -> bool:
    """Whether the selection explains every sample whatever the model predicts."""
    takes_all = "all" in selection.criteria and (selection.mode == "any" or selection.criteria == ["all"])
    return takes_all and selection.per_class_max is None and (selection.max_samples is None
                                                              or selection.max_samples >= count)


def shares_forward(techniques: Sequence[Technique]) -> bool:
    """Whether every technique is a CAM of one forward pass of the unaltered image, on the same layers."""
    return bool(techniques) and all(isinstance(t, GradientCAM | EigenCAM) and not t.mixed_precision
                                    for t in techniques) and len({tuple(t.layers) for t in techniques}) == 1


KEPT_BUDGET = 2**30  # bytes of layer-sized maps the inference stage may keep; beyond, two passes it is


def worth_sharing(selection: SelectionConfig, count: int, techniques: Sequence[Technique],
                  parsed_targets: list[str | int], layer_cells: int, amp_on_gpu: bool) -> bool:
    """Whether the inference pass should also compute the maps: every sample is explained, every technique
    is a one-pass CAM on the same layers, the passes are float32 (the CAMs' precision), and the kept maps of
    `count` samples (`layer_cells` values each, per technique and target) stay within KEPT_BUDGET."""
    targets_per_sample = sum(deepest_top([spec]) or 1 for spec in parsed_targets)
    kept = count * targets_per_sample * len(techniques) * layer_cells * 4
    return takes_every_sample(selection, count) and shares_forward(techniques) and not amp_on_gpu \
        and kept <= KEPT_BUDGET and "contrast" not in parsed_targets  # a contrast scores another output


class SharedForward:
    """The inference stage's forward pass, with each technique's layer-sized maps kept for every target
    `targets` asks (`parsed_targets`, as the explanation stage will ask them)."""

    def __init__(self, techniques: Sequence[CamTechnique], parsed_targets: list[str | int], keep_k: int) -> None:
        self.techniques = list(techniques)
        self.parsed_targets = parsed_targets
        self.keep_k = keep_k
        self.kept: dict[str, dict[Key, list[np.ndarray]]] = {t.name: {} for t in techniques}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """The logits of normalised `images`; keeps the maps of their targets on the way."""
        first = self.techniques[0]
        chosen: list[Key] = []
        picked: list[tuple[torch.Tensor, torch.Tensor]] = []  # the rows `choose` returned: image rows, targets

        def choose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # the targets as the explanation stage picks them from the stored predictions (the same top k)
            order = ranked(logits.float(), self.keep_k)[1].indices.cpu().tolist()
            rows = []
            for position, (index, label) in enumerate(zip(indices, labels.tolist(), strict=True)):
                for target in targets_for(self.parsed_targets, order[position][0],
                                          None if label == UNLABELLED else label, order[position][:self.keep_k]):
                    rows.append(position)
                    chosen.append((index, target.class_index))
            picked.append((torch.tensor(rows, dtype=torch.long, device=logits.device),
                           torch.tensor([target for _, target in chosen], dtype=torch.long, device=logits.device)))
            return picked[0]

        with eval_mode(first.model):
            logits, tensors, gradients = forward_and_gradients(
                first.model, first.layers, images, any(t.needs_gradients for t in self.techniques), choose)
            image_rows, targets = picked[0]
            for technique in self.techniques:
                layer_maps = [cam.cpu().numpy() for cam in technique.layer_maps(tensors, gradients, images,
                                                                                 image_rows, targets)]
                for row, key in enumerate(chosen):
                    self.kept[technique.name][key] = [cam[row] for cam in layer_maps]
        return logits.detach()


def kept_maps(kept: dict[Key, list[np.ndarray]] | None, technique: CamTechnique, keys: list[Key],
              size: Sequence[int], device: torch.device) -> torch.Tensor | None:
    """The maps of `keys` at `size` from what the inference stage kept, or None when any is missing."""
    if kept is None or not all(key in kept for key in keys):
        return None
    layers = len(kept[keys[0]]) if keys else 0
    stacked = [torch.from_numpy(np.stack([kept[key][layer] for key in keys])).to(device) for layer in range(layers)]
    return technique.finish(stacked, size)


def kept_bytes(kept: dict[str, dict[Key, list[np.ndarray]]]) -> bytes:
    """What SharedForward kept, as .npz bytes (`cams.npz`)."""
    arrays = {}
    for technique, maps in kept.items():
        keys = list(maps)
        arrays[f"{technique}/keys"] = np.array(keys, dtype=np.int64).reshape(-1, 2)
        layers = len(maps[keys[0]]) if keys else 0
        for layer in range(layers):
            arrays[f"{technique}/layer{layer}"] = np.stack([maps[key][layer] for key in keys])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def kept_from_bytes(data: bytes) -> dict[str, dict[Key, list[np.ndarray]]] | None:
    """What `kept_bytes` stored, or None when it cannot be read (the maps are then computed again)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    kept: dict[str, dict[Key, list[np.ndarray]]] = {}
    for name in arrays:
        technique, _, part = name.rpartition("/")
        if part != "keys":
            continue
        layers = [arrays[f"{technique}/layer{number}"] for number in range(sum(
            other.startswith(f"{technique}/layer") for other in arrays))]
        if any(len(layer) != len(arrays[name]) for layer in layers):
            return None
        kept[technique] = {(int(index), int(target)): [layer[row] for layer in layers]
                           for row, (index, target) in enumerate(arrays[name])}
    return kept
