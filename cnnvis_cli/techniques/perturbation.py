"""CAMs weighted by perturbing the network: each channel's weight comes from forward passes in which that
channel is shown alone (Score-CAM) or removed (Ablation-CAM).

- Score-CAM (Wang et al., CVPR Workshops 2020):  weight_k = softmax(f(X * normalised upsampled A_k))_c
                                                 - softmax(f(X * 0))_c
- Ablation-CAM (Desai and Ramaswamy, WACV 2020): weight_k = (y_c - y_c with A_k = 0) / y_c

Both score every (image, channel) pair with one forward pass, streamed through the model `batch_size`
pairs at a time so memory stays bounded whatever the channel count; each pass serves every target of its
image. `max_channels=K` scores only the K channels with the largest mean activation (the "Faster
Score-CAM" idea, applied to both); the other channels get weight 0. Channels that are zero everywhere
(common after a ReLU) are never sent through the model: their weight is 0 by either definition.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cnnvis_cli.layouts import NCHW, Layout
from cnnvis_cli.techniques.base import TechniqueContext, forward_hooks, inputs_per_pass, normalise_maps, score_pairs
from cnnvis_cli.techniques.cam import ChannelWeightedCAM, LayerCapture


@contextmanager
def output_replaced(module: nn.Module, output: torch.Tensor) -> Iterator[None]:
    """Within the block, `module` returns `output` instead of computing anything (its hooks still run), so
    Ablation-CAM's passes skip the target layer itself and reuse its activations, as pytorch-grad-cam does."""
    own = vars(module).get("forward")  # an instance attribute that already replaces `forward`, if any
    module.forward = lambda *_args, **_kwargs: output
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


class PerturbationCAM(ChannelWeightedCAM):
    """Channel weights from one perturbed forward pass per (image, channel) pair."""

    needs_gradients = False
    cost = "1 + K forwards (K channels scored, technique.max_channels)"
    cheaper = "technique.max_channels=64 (score only the 64 most active channels)"

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False, batch_size: int = 64,
                 max_channels: int | None = None) -> None:
        super().__init__(model, layers, amp=amp)
        self.batch_size = batch_size
        self.max_channels = max_channels

    @classmethod
    def from_context(cls, context: TechniqueContext) -> PerturbationCAM:
        options = context.options
        return cls(context.model, context.layers, amp=context.amp, batch_size=inputs_per_pass(context),
                   max_channels=options.max_channels, **cls.own_options(context))

    @torch.no_grad()
    def passes_per_image(self, example: torch.Tensor) -> int:
        with LayerCapture(self.model, self.layers, differentiable=False) as capture:
            self.model(example)
        channels = [capture.activations[layer].shape[1] for layer in self.layers]
        return 1 + sum(min(self.max_channels or count, count) for count in channels)

    @classmethod
    def own_options(cls, context: TechniqueContext) -> dict[str, object]:
        """Keyword arguments that only this technique takes."""
        return {}

    @torch.no_grad()
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        num_images, num_channels = activation.shape[:2]
        scored = min(self.max_channels or num_channels, num_channels)
        channels = activation.mean(dim=(2, 3)).topk(scored, dim=1).indices  # B x scored
        classes, class_of_row = torch.unique(targets, return_inverse=True)

        def score(image_index: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
            with self.autocast(images):
                return self.perturbed_scores(activation, images, image_index, channels[image_index, slot], layer)

        # a channel that is zero everywhere weighs 0 for both methods (no region to show; nothing to remove),
        # so it is not sent through the model
        active = activation.flatten(2).abs().amax(dim=2).gather(1, channels) > 0  # B x scored
        scores = score_pairs(num_images, scored, classes, self.batch_size, score, wanted=active)
        row_weights = self.weights_from_scores(scores[image_rows, :, class_of_row], images, image_rows, targets)
        row_weights = torch.where(active[image_rows], row_weights, 0.0)
        weights = activation.new_zeros((len(targets), num_channels))
        return weights.scatter_(1, channels[image_rows], row_weights)

    @abstractmethod
    def perturbed_scores(self, activation: torch.Tensor, images: torch.Tensor, image_index: torch.Tensor,
                         channel_index: torch.Tensor, layer: str) -> torch.Tensor:
        """M x classes scores of the M (image, channel) pairs, each image perturbed by its channel."""

    def weights_from_scores(self, scores: torch.Tensor, images: torch.Tensor, image_rows: torch.Tensor,
                            targets: torch.Tensor) -> torch.Tensor:
        """R x scored weights from each row's perturbed target scores (the scores themselves by default)."""
        return scores


class ScoreCAM(PerturbationCAM):
    """Score-CAM: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020.

        H_k      = min-max normalised A_k, upsampled to the input size
        weight_k = softmax(f(X * H_k))_c - softmax(f(X * 0))_c

    The weight is the paper's "increase of confidence": the target's probability when only H_k's region is
    shown, over its probability when nothing is (the dataset's mean colour, since inputs are normalised).
    `subtract_baseline=False` keeps the probability itself, as the authors' code and pytorch-grad-cam do; on
    a model with few classes that probability never falls far below 1 / classes, so every channel, however
    uninformative, then adds its region to the map. As in the authors' code, a constant channel (no region
    to show) gets weight 0.
    """

    name = "scorecam"
    summary = "Score-CAM (Wang et al., 2020): channels weighted by how much the image they mask raises the score"
    amp_safe = True  # scores are probabilities

    def __init__(self, model: nn.Module, layers: Sequence[str], *, amp: bool = False, batch_size: int = 64,
                 max_channels: int | None = None, subtract_baseline: bool = True) -> None:
        super().__init__(model, layers, amp=amp, batch_size=batch_size, max_channels=max_channels)
        self.subtract_baseline = subtract_baseline
        self.baseline_scores: torch.Tensor | float = 0.0  # 1 x classes while a batch is explained

    @torch.no_grad()
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        if self.subtract_baseline:  # X * 0 is the same input for every image: one pass serves them all
            with self.autocast(images):
                self.baseline_scores = self.model(images.new_zeros((1, *images.shape[1:]))).float().softmax(dim=1)
        try:
            return super().channel_weights(activation, gradient, images, image_rows, targets, layer)
        finally:
            self.baseline_scores = 0.0

    @classmethod
    def own_options(cls, context: TechniqueContext) -> dict[str, object]:
        return {"subtract_baseline": context.options.scorecam.subtract_baseline}

    def perturbed_scores(self, activation: torch.Tensor, images: torch.Tensor, image_index: torch.Tensor,
                         channel_index: torch.Tensor, layer: str) -> torch.Tensor:
        channel_maps = activation[image_index, channel_index]
        masks = normalise_maps(F.interpolate(channel_maps[:, None], size=images.shape[-2:], mode="bilinear",
                                             align_corners=False)[:, 0])
        probabilities = self.model(images[image_index] * masks[:, None]).float().softmax(dim=1)
        has_region = masks.flatten(1).amax(dim=1, keepdim=True) > 0  # constant channels score 0
        return (probabilities - self.baseline_scores) * has_region


class AblationCAM(PerturbationCAM):
    """Ablation-CAM: Desai and Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network
    via Gradient-free Localization", WACV 2020.

        weight_k = (y_c - y_c^k) / y_c     (y_c the target's logit, y_c^k the same with A_k set to 0)

    A weight is 0 where y_c is 0.
    """

    name = "ablationcam"
    summary = "Ablation-CAM (Desai and Ramaswamy, 2020): channels weighted by the score lost without them"

    def perturbed_scores(self, activation: torch.Tensor, images: torch.Tensor, image_index: torch.Tensor,
                         channel_index: torch.Tensor, layer: str) -> torch.Tensor:
        ablated = activation[image_index]
        ablated[torch.arange(len(channel_index), device=images.device), channel_index] = 0
        module = dict(self.model.named_modules())[layer]
        layout = self.layouts.get(layer, Layout(NCHW))  # as this batch's forward pass found it
        if layout.kind == NCHW:
            with output_replaced(module, ablated):
                return self.model(images[image_index])
        # NHWC maps and tokens: the layer runs, and its grid is swapped for the ablated one (prefix tokens kept)
        with forward_hooks([module], lambda _module, _inputs, output: layout.from_nchw(ablated.to(output.dtype),
                                                                                         output)):
            return self.model(images[image_index])

    def weights_from_scores(self, scores: torch.Tensor, images: torch.Tensor, image_rows: torch.Tensor,
                            targets: torch.Tensor) -> torch.Tensor:
        with self.autocast(images):
            original = self.model(images).float()[image_rows, targets][:, None]  # R x 1
        return torch.where(original != 0, (original - scores) / torch.where(original != 0, original, 1.0), 0.0)
