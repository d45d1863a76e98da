"""SmoothGrad: Smilkov et al., "SmoothGrad: removing noise by adding noise", arXiv:1706.03825, 2017.

    attribution = mean over n samples of A(x + N(0, sigma^2)),   sigma = noise x (max(x) - min(x))

around any input-gradient technique A (vanilla gradients in the paper). `technique.smooth.samples=n`
smooths every gradient technique of a run; the smoothed technique is named `NAME_smooth`. The noisy copies
of a batch go through the model `batch_size` inputs at a time.
"""

from __future__ import annotations

import torch

from cnnvis_cli.techniques.attribution import InputGradient, Saliency, SignedTechnique
from cnnvis_cli.techniques.base import (
    TechniqueContext,
    inputs_per_pass,
    passes_reported_to,
    report_passes,
    stacked_rows,
)


class SmoothGrad(SignedTechnique):
    summary = "SmoothGrad (Smilkov et al., 2017): any gradient technique averaged over noisy copies"
    cost = "samples x the wrapped technique"
    cheaper = "fewer technique.smooth.samples"

    def __init__(self, inner: InputGradient, *, samples: int, noise: float, seed: int = 0,
                 batch_size: int = 64) -> None:
        super().__init__(inner.model, amp=inner.amp)
        self.inner, self.samples, self.noise, self.seed, self.batch_size = inner, samples, noise, seed, batch_size
        self.name = f"{inner.name}_smooth"
        self.heat_from = inner.heat_from

    @classmethod
    def from_context(cls, context: TechniqueContext, inner: InputGradient | None = None) -> SmoothGrad:
        """SmoothGrad around `inner`, or around vanilla gradients as in the paper."""
        smooth = context.options.smooth
        return cls(inner or Saliency.from_context(context), samples=smooth.samples, noise=smooth.noise,
                   seed=context.seed, batch_size=inputs_per_pass(context))

    def check(self, example: torch.Tensor) -> None:
        self.inner.check(example)

    def heat(self, attribution: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
        return self.inner.heat(attribution, signed)

    def passes_per_image(self, example: torch.Tensor) -> int:
        return self.samples * self.inner.passes_per_image(example)

    def attribute(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        low = images.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        high = images.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        sigma = self.noise * (high - low)
        num_images = len(images)
        per_pass = max(1, self.batch_size // num_images)  # noisy copies of the batch per pass
        total = images.new_zeros((len(targets), *images.shape[1:]), dtype=torch.float32)
        for start in range(0, self.samples, per_pass):
            copies = min(per_pass, self.samples - start)
            noise = torch.randn((copies, *images.shape), generator=generator, device=images.device,
                                dtype=images.dtype)
            noisy = (images[None] + noise * sigma[None]).flatten(0, 1)
            with passes_reported_to(None):  # this loop reports the passes, not the wrapped technique
                attribution = self.inner.attribute(noisy, stacked_rows(image_rows, copies, num_images),
                                                   targets.repeat(copies))
            total += attribution.float().view(copies, len(targets), *attribution.shape[1:]).sum(dim=0)
            report_passes(start + copies, self.samples)
        return total / self.samples
