from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnvis_cli.techniques import TECHNIQUES as REGISTRY
from cnnvis_cli.techniques.base import normalise_maps, slot_of_rows
from cnnvis_cli.techniques.gradient import GradCAM

TECHNIQUES = list(REGISTRY.values())


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_output_contract(tiny_net, technique) -> None:
    maps = technique(tiny_net, ["features"]).explain(torch.randn(2, 3, 12, 12), torch.tensor([0, 1, 1]),
                                                     torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 12, 12) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_hooks_are_removed_and_mode_restored_even_after_an_exception(tiny_net, technique) -> None:
    tiny_net.train()
    bn = tiny_net.features[4]
    running_mean = bn.running_mean.clone()
    technique(tiny_net, ["features"]).explain(torch.randn(2, 3, 12, 12), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert hook_count(tiny_net) == 0
    assert all(m.training for m in tiny_net.modules())
    torch.testing.assert_close(bn.running_mean, running_mean)  # explained in eval mode: statistics untouched

    def explode(*_):
        raise RuntimeError("boom")

    tiny_net.classifier.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        technique(tiny_net, ["features"]).explain(torch.randn(1, 3, 12, 12), torch.tensor([0]), torch.tensor([0]))
    tiny_net.classifier._forward_hooks.clear()
    assert hook_count(tiny_net) == 0
    assert all(m.training for m in tiny_net.modules())


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_rows_and_targets_must_pair_up(tiny_net, technique) -> None:
    with pytest.raises(ValueError, match="equal length"):
        technique(tiny_net, ["features"]).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="outside the batch"):
        technique(tiny_net, ["features"]).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]), torch.tensor([0, 0]))


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_model_that_ignores_its_input_gives_zero_maps_not_nan(tiny_net, technique) -> None:
    with torch.no_grad():
        for parameter in tiny_net.features.parameters():
            parameter.zero_()
    maps = technique(tiny_net, ["features"]).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]),
                                                     torch.tensor([0, 1]))
    assert torch.equal(maps, torch.zeros(2, 8, 8))


def test_normalise_maps() -> None:
    maps = torch.stack([torch.tensor([[1.0, 3.0], [5.0, 3.0]]), torch.full((2, 2), 7.0), torch.zeros(2, 2)])
    expected = torch.stack([torch.tensor([[0.0, 0.5], [1.0, 0.5]]), torch.zeros(2, 2), torch.zeros(2, 2)])
    torch.testing.assert_close(normalise_maps(maps), expected)


def test_slot_of_rows_counts_earlier_rows_of_the_same_image() -> None:
    assert slot_of_rows(torch.tensor([2, 0, 2, 1, 0, 2])).tolist() == [0, 0, 1, 0, 1, 2]


def test_unknown_layer_is_refused(tiny_net) -> None:
    with pytest.raises(ValueError, match="no such layer in the model: nope"):
        GradCAM(tiny_net, ["nope"]).explain(torch.randn(1, 3, 8, 8), torch.tensor([0]), torch.tensor([0]))

