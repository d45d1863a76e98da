"""The optimisation loop of feature visualisation: a batch of images, one per objective (or several, with
the diversity term), improved together by Adam on the objectives read through random transformations
(Olah et al., Distill 2017). Each step is one forward and one backward pass of the whole batch."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnvis_cli.config import VisualiseConfig
from cnnvis_cli.layouts import Layout
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.techniques.base import eval_mode
from cnnvis_cli.visualise.objectives import Activations, Objective, diversity, objective_values
from cnnvis_cli.visualise.parameterisation import ImageBatch
from cnnvis_cli.visualise.relu import redirected_relus
from cnnvis_cli.visualise.transforms import Transforms

REDIRECTED_SHARE = 0.25  # of the steps, the first, with redirected ReLU gradients (relu.py)


@dataclass(frozen=True)
class RenderSettings:
    """How images are optimised (lucent's defaults: Adam at 0.05, transformation robustness; 256 steps)."""

    steps: int = 256
    lr: float = 0.05
    fourier: bool = True
    decorrelate: bool = True
    transforms: Transforms = field(default_factory=Transforms)
    images_per_objective: int = 1
    diversity: float = 1.0  # weight of the diversity term, relative to the magnitude of its objective


@dataclass(frozen=True)
class Pixels:
    """The model's input space: images in [0, 1] become (image - mean) / std."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std


@dataclass(frozen=True)
class Rendering:
    """The optimised images (N x 3 x H x W in [0, 1], on the CPU), the objective of each row, and each row's
    objective value on its image untransformed, before (the random start) and after the optimisation."""

    images: torch.Tensor
    objectives: list[Objective]
    start: torch.Tensor
    values: torch.Tensor


def render(model: nn.Module, objectives: Sequence[Objective], *, size: int, pixels: Pixels,
           settings: RenderSettings = RenderSettings(), seed: int = 0,
           layouts: dict[str, Layout] | None = None, diversity_layer: str | None = None,
           progress: bool = False) -> Rendering:
    """Optimise one image per objective (`settings.images_per_objective` each) to maximise it.

    `layouts` gives the layout of every layer an objective reads (and of `diversity_layer`, whose Gram
    matrices the diversity term compares). The model is left as it was given: mode, hooks, gradients."""
    device = next(model.parameters()).device
    copies = settings.images_per_objective
    rows = [objective for objective in objectives for _ in range(copies)]
    groups = torch.arange(len(objectives), device=device).repeat_interleave(copies)
    generator = torch.Generator().manual_seed(seed)
    image = ImageBatch(len(rows), size, size, fourier=settings.fourier, decorrelate=settings.decorrelate,
                       generator=generator).to(device)
    optimiser = torch.optim.Adam(image.parameters(), lr=settings.lr)
    compare = diversity_layer if copies > 1 and settings.diversity else None
    hooked = dict(layouts or {})
    activations = Activations(model, {name: hooked[name] for name in _layers(rows, compare)})
    with eval_mode(model), activations.hooked(), progress_bar(progress) as bar:
        start = _values(model, rows, image(), pixels, activations)
        task = bar.add_task("visualise", total=settings.steps, unit="steps")
        for step in range(settings.steps):
            shown = settings.transforms(image(), generator)
            with redirected_relus(model) if step < settings.steps * REDIRECTED_SHARE else nullcontext():
                values = objective_values(rows, model(pixels.normalise(shown)), activations.outputs)
            loss = -values.sum()
            if compare is not None:  # weighed by its objective's size, so that units of any scale move apart
                size_of = torch.zeros(len(objectives), device=device).index_add_(0, groups, values.detach().abs())
                similarity = diversity(activations.outputs[compare].float(), groups)
                loss = loss + settings.diversity * (size_of[groups] / copies * similarity).sum()
            optimiser.zero_grad(set_to_none=True)
            (image.values.grad,) = torch.autograd.grad(loss, [image.values])
            optimiser.step()
            bar.advance(task)
        final = image().detach()
        values = _values(model, rows, final, pixels, activations)
    return Rendering(final.cpu(), rows, start.cpu(), values.cpu())


def render_settings(options: VisualiseConfig) -> RenderSettings:
    """The optimisation `visualise.*` asks for."""
    return RenderSettings(steps=options.steps or RenderSettings.steps, lr=options.lr, fourier=options.fourier,
                          decorrelate=options.decorrelate,
                          transforms=Transforms(options.jitter, (options.scale[0], options.scale[1]), options.rotate),
                          images_per_objective=options.images_per_unit, diversity=options.diversity)


def _layers(objectives: Sequence[Objective], extra: str | None) -> list[str]:
    names = {objective.layer for objective in objectives if objective.layer is not None}
    return sorted(names | ({extra} if extra else set()))


@torch.no_grad()
def _values(model: nn.Module, rows: Sequence[Objective], images: torch.Tensor, pixels: Pixels,
            activations: Activations) -> torch.Tensor:
    logits = model(pixels.normalise(images))
    return objective_values(rows, logits, activations.outputs)
