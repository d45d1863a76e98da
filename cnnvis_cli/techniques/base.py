"""What every explanation technique shares: its contract, its context, and the helpers that keep the model
as it was found.

A technique sees a batch of B normalised images and R rows, each row an (image, target class) pair, and
returns an `Explanation`: R maps, float32, R x H x W at the input size, in [0, 1], on the images' device,
never NaN (a constant map becomes zeros). Signed methods (gradients, integrated gradients, LRP, occlusion)
also return their signed map, summed over the colour channels, for `save_maps` and for overlays that show
the sign.

Whatever happens inside a technique, the caller gets the model back as it gave it: every module's
train/eval mode restored, no hook left behind, no parameter's `requires_grad` or `.grad` touched (gradients
are taken with `torch.autograd.grad` with respect to activations or inputs only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.device import autocast

NORMALISATION = (
    "CAMs: per map and layer ReLU, bilinear upsampling (align_corners=False) to the input size, then "
    "(map - min) / (max - min), several layers averaged and normalised again; signed attributions: the "
    "signed map is the sum over colour channels, the [0, 1] map its positive part (attributions) or its "
    "magnitude (gradients), min-max normalised; a constant map becomes zeros"
)


@dataclass(frozen=True)
class Explanation:
    """R maps in [0, 1] (R x H x W), and for signed methods the raw signed maps (R x H x W)."""

    maps: torch.Tensor
    signed: torch.Tensor | None = None


@dataclass(frozen=True)
class TechniqueContext:
    """What a run tells its techniques: the model, its layers and pixel space, the options and the seed."""

    model: nn.Module
    layers: list[str]
    options: TechniqueConfig = field(default_factory=TechniqueConfig)
    amp: bool = False
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the model's normalisation: input = (pixel - mean) / std
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    seed: int = 0


def inputs_per_pass(context: TechniqueContext) -> int:
    """How many inputs a many-pass technique sends through the model at once: `technique.batch_size`, else
    64 on a GPU and 8 on a CPU, where small batches run faster per input on an idle machine (2 cores:
    resnet18 1.24x and efficientnet_b0 2.08x slower per input at 64 than at 8; benchmarks/RESULTS.md, which
    also shows 32 running 1.8x faster than 8 while another process shares the cores)."""
    if context.options.batch_size:
        return context.options.batch_size
    parameter = next(context.model.parameters(), None)
    return 64 if parameter is not None and parameter.device.type == "cuda" else 8


class Technique(ABC):
    """An explanation technique: `explain` checks the rows, puts the model in eval mode, and restores it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    cost: ClassVar[str]  # passes per (image, target), for the README and `cnnvis list techniques`
    families: ClassVar[str] = "any classifier"  # which models it explains; others are refused by `check`
    signed: ClassVar[bool] = False  # whether explanations carry a signed map
    needs_gradients: ClassVar[bool] = True  # False for forward-only techniques
    # Mixed precision (`amp=true`, bfloat16 or float16 on CUDA) only for forward-only techniques whose scores
    # are probabilities or activations. Gradients stay in float32, and so do the techniques that take
    # differences of nearly equal logits: on a random resnet18 in bfloat16, occlusion's maps correlated at
    # -0.01 to 0.92 with float32 and Ablation-CAM's at 0.87, against 1.0000 for Score-CAM, Eigen-CAM and RISE.
    amp_safe: ClassVar[bool] = False
    cheaper: ClassVar[str] = ""  # the option that makes a many-pass technique cheaper, for the cost estimate
    uses_layers: ClassVar[bool] = False  # whether it looks at the target layer(s): the CAMs

    def __init__(self, model: nn.Module, *, amp: bool = False) -> None:
        self.model = model
        self.amp = amp

    @classmethod
    @abstractmethod
    def from_context(cls, context: TechniqueContext) -> Technique:
        """An instance with the run's options."""

    def explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        """The maps of each (images[image_rows[r]], targets[r]) pair."""
        check_rows(images, image_rows, targets)
        if len(targets) == 0:
            empty = images.new_zeros((0, *images.shape[-2:]), dtype=torch.float32)
            return Explanation(empty, empty if self.signed else None)
        with eval_mode(self.model):
            return self._explain(images, image_rows, targets)

    @abstractmethod
    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        """The explanation, with the rows checked and the model in eval mode."""

    def check(self, example: torch.Tensor) -> None:
        """Raise a UserError if the technique cannot explain this model; `example` is one normalised input.
        Called once before a run's heavy work. Most techniques explain any model, so this accepts it."""
        return None

    def passes_per_image(self, example: torch.Tensor) -> int:
        """How many forward passes (a backward pass counting as two) explaining one image costs, for the
        estimate a run gives before a long explanation; `example` is one normalised input."""
        return 3 if self.needs_gradients else 1

    @property
    def mixed_precision(self) -> bool:
        """Whether `amp=true` applies to this technique: only where low precision is safe (`amp_safe`)."""
        return self.amp and self.amp_safe

    def autocast(self, images: torch.Tensor):
        """Mixed precision for this technique's forward passes, when it applies (CUDA only)."""
        return autocast(images.device, self.mixed_precision)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode, and give each back the mode it had, whatever happens."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def forward_hooks(modules: Sequence[nn.Module], hook) -> Iterator[None]:
    """`hook` registered as a forward hook on each module, and removed again whatever happens."""
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_rows(images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> None:
    """Every row names an existing image and has exactly one target (no silent zip truncation)."""
    if image_rows.shape != targets.shape or image_rows.ndim != 1:
        raise ValueError(f"image_rows {tuple(image_rows.shape)} and targets {tuple(targets.shape)} must be "
                         "1-D and of equal length")
    if len(image_rows) and (int(image_rows.min()) < 0 or int(image_rows.max()) >= len(images)):
        raise ValueError("image_rows refers to an image outside the batch")


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of an R x H x W tensor to [0, 1]; constant maps become zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return scaled.view_as(maps)


def slot_of_rows(image_rows: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows share its image (0 for an image's first target, 1 for its second...)."""
    order = torch.argsort(image_rows, stable=True)
    sorted_rows = image_rows[order]
    first = torch.searchsorted(sorted_rows, sorted_rows, right=False)
    slots = torch.empty_like(image_rows)
    slots[order] = torch.arange(len(image_rows), device=image_rows.device) - first
    return slots


def row_gradients(scores: torch.Tensor, tensors: Sequence[torch.Tensor], image_rows: torch.Tensor,
                  targets: torch.Tensor) -> list[torch.Tensor]:
    """For each tensor (B x ...), the gradient of each row's target score with respect to its image's slice:
    R x ... per tensor, float32.

    Images are independent in eval mode, so one backward pass serves the first target of every image, a
    second pass their second targets, and so on: the forward pass is shared by all targets of an image.
    """
    results = [tensor.new_zeros((len(targets), *tensor.shape[1:]), dtype=torch.float32) for tensor in tensors]
    slots = slot_of_rows(image_rows)
    last = int(slots.max())
    for slot in range(last + 1):
        rows = torch.nonzero(slots == slot)[:, 0]
        score = scores[image_rows[rows], targets[rows]].float().sum()
        grads = torch.autograd.grad(score, list(tensors), retain_graph=slot < last, allow_unused=True)
        for result, grad in zip(results, grads, strict=True):
            if grad is not None:  # None: the score does not depend on the tensor, so its gradient is zero
                result[rows] = grad[image_rows[rows]].float()
    return results


def stacked_rows(image_rows: torch.Tensor, copies: int, num_images: int) -> torch.Tensor:
    """The rows of `copies` versions of a batch stacked one after another (version c's images at
    c * num_images ...), version by version: copies x R rows, flattened."""
    offsets = torch.arange(copies, device=image_rows.device)[:, None] * num_images
    return (image_rows[None] + offsets).flatten()


_pass_listener: ContextVar[Callable[[int, int], None] | None] = ContextVar("pass_listener", default=None)


@contextmanager
def passes_reported_to(listener: Callable[[int, int], None] | None) -> Iterator[None]:
    """While inside, many-pass techniques call `listener(done, total)` as their passes go, so a progress bar
    moves within a long explanation; None silences them (a technique run inside another)."""
    token = _pass_listener.set(listener)
    try:
        yield
    finally:
        _pass_listener.reset(token)


def report_passes(done: int, total: int) -> None:
    """Tell the listener, if there is one, that `done` of a technique's `total` passes are finished."""
    listener = _pass_listener.get()
    if listener is not None:
        listener(done, total)


def score_pairs(num_images: int, num_items: int, classes: torch.Tensor, batch_size: int, score,
                wanted: torch.Tensor | None = None) -> torch.Tensor:
    """B x items x len(classes) scores of every (image, item) pair (or only those `wanted`, a B x items mask;
    the others stay 0), `batch_size` pairs per call of `score(image_index, item_index)`, which returns those
    pairs' M x all-classes scores."""
    device = classes.device
    scores = torch.zeros((num_images, num_items, len(classes)), device=device)
    if wanted is None:
        wanted = torch.ones((num_images, num_items), dtype=torch.bool, device=device)
    pair_image, pair_item = torch.nonzero(wanted, as_tuple=True)  # image by image, item by item
    for start in range(0, len(pair_image), batch_size):
        image_index, item_index = pair_image[start:start + batch_size], pair_item[start:start + batch_size]
        scores[image_index, item_index] = score(image_index, item_index).float()[:, classes]
        report_passes(start + len(image_index), len(pair_image))
    return scores
