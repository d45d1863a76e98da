"""What an optimised image should drive up: a class's logit, a channel's mean activation, or one neuron (the
channel at the centre of the grid); and the diversity term that makes several images of one objective differ.

Every row of a batch has its own objective, read from one forward pass of the whole batch: a batch of N
objectives costs one forward and one backward per step, whatever N is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.layouts import NCHW, Layout

KINDS = ("class", "channel", "neuron")


@dataclass(frozen=True)
class Objective:
    """One thing to maximise: `kind` (class, channel, neuron), its index, and the layer (channels, neurons)."""

    kind: str
    unit: int
    layer: str | None = None
    layout: Layout = Layout(NCHW)
    label: str = ""

    def name(self) -> str:
        """How files and captions name it: `class 2 (triangle)`, `features.6 channel 12`."""
        if self.kind == "class":
            return f"class {self.unit}" + (f" ({self.label})" if self.label else "")
        return f"{self.layer} {self.kind} {self.unit}"


class Activations:
    """Forward hooks that keep the output of each named layer during a pass, as N x C x H x W."""

    def __init__(self, model: nn.Module, layouts: dict[str, Layout]) -> None:
        self.model = model
        self.layouts = layouts
        self.outputs: dict[str, torch.Tensor] = {}

    @contextmanager
    def hooked(self) -> Iterator[Activations]:
        modules = dict(self.model.named_modules())
        handles = [modules[name].register_forward_hook(self._keeper(name)) for name in self.layouts]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.outputs.clear()

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = self.layouts[name].to_nchw(output)
        return keep


def _groups(objectives: Sequence[Objective]) -> dict[tuple[str, str | None], list[int]]:
    """The positions of the objectives of each (kind, layer)."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for position, objective in enumerate(objectives):
        groups.setdefault((objective.kind, objective.layer), []).append(position)
    return groups


def _read(kind: str, scores: torch.Tensor) -> torch.Tensor:
    """Class scores as they are; channels (... x H x W) by their mean, neurons by their centre cell."""
    if kind == "class":
        return scores
    if kind == "channel":
        return scores.mean(dim=(-2, -1))
    return scores[..., scores.shape[-2] // 2, scores.shape[-1] // 2]


def objective_values(objectives: Sequence[Objective], logits: torch.Tensor,
                     activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """Row i's objective value in a batch whose row i was optimised for `objectives[i]` (a vector of N)."""
    values = logits.new_zeros(len(objectives), dtype=torch.float32)
    for (kind, layer), positions in _groups(objectives).items():
        rows = torch.tensor(positions, device=logits.device)
        units = torch.tensor([objectives[p].unit for p in positions], device=logits.device)
        source = logits if kind == "class" else activations[layer]
        values[rows] = _read(kind, source[rows, units]).float()
    return values


def batch_values(objectives: Sequence[Objective], logits: torch.Tensor,
                 activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every objective's value on every image of a batch (images x objectives): how real images score."""
    values = logits.new_zeros((len(logits), len(objectives)), dtype=torch.float32)
    for (kind, layer), positions in _groups(objectives).items():
        units = torch.tensor([objectives[p].unit for p in positions], device=logits.device)
        source = logits if kind == "class" else activations[layer]
        values[:, positions] = _read(kind, source[:, units]).float()
    return values


def diversity(features: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """For each row, the mean cosine similarity of its Gram matrix with those of the other rows of its group
    (Olah et al. 2017, "Diversity"): a term to push down so that images of one objective differ in style.
    `features` is N x C x H x W, `groups` the objective of each row; rows alone in their group get 0."""
    flat = features.flatten(2)
    gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    similarity = gram @ gram.T
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)
    partners = same.sum(dim=1).clamp_min(1)
    return (similarity * same).sum(dim=1) / partners
