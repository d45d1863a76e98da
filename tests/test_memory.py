from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis_cli.data import Batch
from cnnvis_cli.explain import explain_in_parts
from cnnvis_cli.inference import predict
from cnnvis_cli.memory import OUT_OF_MEMORY, Halving
from cnnvis_cli.models import Preprocess
from cnnvis_cli.techniques.gradient import GradCAM


class Tight(nn.Module):
    """A model whose forward pass runs out of (simulated) GPU memory above `most` images at once."""

    def __init__(self, inner: nn.Module, most: int) -> None:
        super().__init__()
        self.inner, self.most, self.sizes = inner, most, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.most:
            raise OUT_OF_MEMORY("CUDA out of memory (simulated)")
        return self.inner(x)


def test_halving_splits_until_the_work_fits_and_keeps_the_limit(caplog) -> None:
    halving, sizes = Halving("inference"), []

    def work(part: slice) -> int:
        sizes.append(part.stop - part.start)
        if part.stop - part.start > 3:
            raise OUT_OF_MEMORY("simulated")
        return part.stop - part.start

    with caplog.at_level(logging.WARNING, logger="cnnvis"):
        assert halving.run(12, work) == [3, 3, 3, 3]
        assert halving.run(5, work) == [3, 2]  # the limit holds for later batches
    assert sizes[:3] == [12, 6, 3] and halving.limit == 3
    assert "inference: out of GPU memory with 12 images at once; going on with 6" in caplog.text


def test_one_item_that_does_not_fit_is_an_error() -> None:
    def work(part: slice) -> None:
        raise OUT_OF_MEMORY("simulated")

    with pytest.raises(OUT_OF_MEMORY):
        Halving("inference").run(4, work)


class RecordingCsv:
    def __init__(self) -> None:
        self.rows = []

    def write(self, rows) -> None:
        self.rows += list(rows)


def test_inference_halves_its_batch_and_predicts_every_image(tiny_net, caplog) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    batch = Batch(images=images, labels=torch.arange(10) % 5, indices=list(range(10)), extras=[{}] * 10, bad=[])
    preprocess = Preprocess(12, 12, (0.5,) * 3, (0.5,) * 3)
    names = [f"c{i}" for i in range(5)]
    whole = predict(tiny_net, [batch], preprocess, torch.device("cpu"), class_names=names, topk=2, csv=RecordingCsv(),
                    show_progress=False)
    tight = Tight(tiny_net, most=3)
    with caplog.at_level(logging.WARNING, logger="cnnvis"):
        halved = predict(tight, [batch], preprocess, torch.device("cpu"), class_names=names, topk=2,
                         csv=RecordingCsv(), show_progress=False)
    assert tight.sizes[:3] == [10, 5, 2] and "out of GPU memory" in caplog.text
    np.testing.assert_allclose(halved.confidence, whole.confidence, rtol=1e-5)
    assert (halved.predicted == whole.predicted).all()


def test_explanation_halves_its_batch_and_keeps_every_row(tiny_net) -> None:
    torch.manual_seed(1)
    images = torch.randn(5, 3, 12, 12)
    rows, targets = torch.tensor([0, 0, 1, 2, 3, 3, 4]), torch.tensor([1, 2, 0, 4, 3, 1, 2])
    whole = GradCAM(tiny_net, ["features"]).explain(images, rows, targets).maps
    tight = Tight(tiny_net, most=2)
    halved = explain_in_parts(GradCAM(tight, ["inner.features"]), images, rows, targets, Halving("gradcam"))
    torch.testing.assert_close(halved.maps, whole)
    assert max(tight.sizes[-3:]) <= 2
