"""Objectives read from one pass of a batch: each row its own class, channel or neuron; and the diversity
term of Olah et al. (2017)."""

from __future__ import annotations

import torch

from cnnvis_cli.layouts import NCHW, TOKENS, Layout
from cnnvis_cli.visualise.objectives import Activations, Objective, batch_values, diversity, objective_values


def test_each_row_reads_its_own_objective() -> None:
    logits = torch.randn(4, 5)
    layer = torch.randn(4, 6, 5, 7)
    objectives = [Objective("class", 3), Objective("channel", 2, "layer"), Objective("neuron", 5, "layer"),
                  Objective("class", 0)]
    values = objective_values(objectives, logits, {"layer": layer})
    expected = torch.stack([logits[0, 3], layer[1, 2].mean(), layer[2, 5, 2, 3], logits[3, 0]])
    assert torch.allclose(values, expected)
    table = batch_values(objectives, logits, {"layer": layer})
    assert table.shape == (4, 4)
    assert torch.allclose(table[:, 1], layer[:, 2].mean(dim=(1, 2)))
    assert torch.allclose(table[:, 2], layer[:, 5, 2, 3])
    assert torch.allclose(table[:, 0], logits[:, 3])


def test_token_layers_are_read_on_their_grid() -> None:
    model = torch.nn.Sequential(torch.nn.Identity())
    tokens = torch.randn(2, 1 + 9, 4)  # a class token and a 3 x 3 grid of 4 channels
    with Activations(model, {"0": Layout(TOKENS, 1)}).hooked() as activations:
        model(tokens)
        grid = activations.outputs["0"]
    assert grid.shape == (2, 4, 3, 3)
    assert torch.equal(grid[1, 2, 0, 1], tokens[1, 1 + 1, 2])
    assert not model[0]._forward_hooks  # the hook is gone


def test_diversity_is_the_similarity_of_gram_matrices_within_a_group() -> None:
    features = torch.randn(4, 3, 5, 5)
    features[1] = 2 * features[0]  # the same style as row 0, at another scale
    similarity = diversity(features, torch.tensor([0, 0, 1, 2]))
    assert torch.allclose(similarity[:2], torch.ones(2), atol=1e-5)
    assert torch.equal(similarity[2:], torch.zeros(2))  # alone in their group
    apart = torch.zeros(2, 2, 1, 1)
    apart[0, 0], apart[1, 1] = 1.0, 1.0  # Gram matrices with nothing in common
    assert torch.allclose(diversity(apart, torch.tensor([0, 0])), torch.zeros(2))


def test_an_objective_names_itself() -> None:
    assert Objective("class", 2, label="triangle").name() == "class 2 (triangle)"
    assert Objective("channel", 12, "features.6", Layout(NCHW)).name() == "features.6 channel 12"
