"""The model's own representation of each sample: the input of its classifier head (the penultimate
features), taken in the inference pass and kept as float16 beside the predictions (`predictions.npz`), for
the slices of the test set (`slices.py`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def classifier_head(module: nn.Module, input_size: int) -> str | None:
    """The name of the last linear layer a dry pass calls, when its output is the model's class scores; None
    when the model ends in something else (then the scores themselves stand for the features)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    last: list[tuple[str, object]] = []
    handles = [child.register_forward_hook(lambda _m, _i, output, name=name: last.append((name, output)))
               for name, child in module.named_modules() if isinstance(child, nn.Linear)]
    try:
        with torch.inference_mode():
            logits = module(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return last[-1][0] if last and last[-1][1] is logits else None


class FeatureTap:
    """While open, keeps the input of the model's head (or its output, the class scores, without one) of every
    forward pass; `take()` hands over what the last pass kept, as an N x D float16 array."""

    def __init__(self, model: nn.Module, head: str | None) -> None:
        self.model, self.head = model, head
        self.kept: torch.Tensor | None = None
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> FeatureTap:
        if self.head is None:
            self.handle = self.model.register_forward_hook(self._keep_output)
        else:
            self.handle = self.model.get_submodule(self.head).register_forward_pre_hook(self._keep_input)
        return self

    def __exit__(self, *_: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _keep_input(self, _module: nn.Module, inputs: tuple) -> None:
        self.kept = inputs[0].detach().flatten(1)

    def _keep_output(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self.kept = output.detach().flatten(1)

    def take(self) -> np.ndarray:
        if self.kept is None:
            raise RuntimeError("the model's head did not run in the forward pass")
        features, self.kept = self.kept, None
        return features.float().cpu().numpy().astype(np.float16)
