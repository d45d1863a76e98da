"""The optimisation loop: every objective of a batch is reached together, at one forward and one backward
pass per step, reproducibly, and the model is given back as it was."""

from __future__ import annotations

import torch

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.demo.scene import render_scene
from cnnvis_cli.layouts import NCHW, Layout
from cnnvis_cli.models import load_model
from cnnvis_cli.visualise.objectives import Activations, Objective, batch_values, diversity
from cnnvis_cli.visualise.render import Pixels, RenderSettings, render

LAYOUTS = {"features.3": Layout(NCHW), "features": Layout(NCHW)}


def test_each_objective_of_a_batch_is_driven_far_above_what_test_images_reach() -> None:
    model = load_model(ModelConfig(source="demo", name="demo"))
    layouts = {info.name: info.layout for info in model.layers}
    objectives = [Objective("channel", unit, "features.9", layouts["features.9"]) for unit in (0, 17, 40)] \
        + [Objective("class", unit) for unit in range(4)]
    pixels = Pixels(model.preprocess.mean, model.preprocess.std)
    rendering = render(model.module, objectives, size=96, pixels=pixels, settings=RenderSettings(steps=256),
                       layouts=layouts)
    assert rendering.images.shape == (7, 3, 96, 96)
    assert float(rendering.images.min()) >= 0 and float(rendering.images.max()) <= 1
    scenes = torch.stack([torch.from_numpy(render_scene("test", index).image).permute(2, 0, 1)
                          for index in range(64)]).float() / 255
    with Activations(model.module, layouts).hooked() as activations, torch.no_grad():
        real = batch_values(objectives, model.module(pixels.normalise(scenes)), activations.outputs)
    ceiling = torch.quantile(real, 0.99, dim=0)
    assert bool((rendering.values > 2.5 * ceiling).all()), (rendering.values, ceiling)
    assert torch.equal(model.module(pixels.normalise(rendering.images[3:])).argmax(dim=1), torch.arange(4))


def test_one_forward_pass_per_step_whatever_the_number_of_objectives(tiny_net) -> None:
    calls = []
    handle = tiny_net.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    try:
        objectives = [Objective("channel", unit, "features.3") for unit in range(12)]
        render(tiny_net, objectives, size=24, pixels=Pixels(), settings=RenderSettings(steps=5), layouts=LAYOUTS)
    finally:
        handle.remove()
    assert calls == [12] * 7  # the start, 5 steps, the end: each one pass of all 12 images


def test_the_same_seed_makes_the_same_images_and_the_model_is_left_as_it_was(tiny_net) -> None:
    tiny_net.train()
    settings = RenderSettings(steps=6)
    first = render(tiny_net, [Objective("class", 1)], size=24, pixels=Pixels(), settings=settings, seed=4)
    again = render(tiny_net, [Objective("class", 1)], size=24, pixels=Pixels(), settings=settings, seed=4)
    other = render(tiny_net, [Objective("class", 1)], size=24, pixels=Pixels(), settings=settings, seed=5)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    assert tiny_net.training and all(module.training for module in tiny_net.modules())
    assert all(not module._forward_hooks for module in tiny_net.modules())
    assert all(parameter.grad is None for parameter in tiny_net.parameters())


def test_diversity_makes_the_images_of_one_objective_differ_in_style() -> None:
    model = load_model(ModelConfig(source="demo", name="demo"))
    layouts = {info.name: info.layout for info in model.layers}
    pixels = Pixels(model.preprocess.mean, model.preprocess.std)
    objective = [Objective("channel", 15, "features", layouts["features"])]

    def similarity_and_values(weight: float) -> tuple[float, torch.Tensor]:
        settings = RenderSettings(steps=64, images_per_objective=3, diversity=weight)
        rendering = render(model.module, objective, size=96, pixels=pixels, settings=settings, layouts=layouts,
                           diversity_layer="features.9")
        with Activations(model.module, layouts).hooked() as activations, torch.no_grad():
            model.module(pixels.normalise(rendering.images))
            similarity = diversity(activations.outputs["features.9"], torch.zeros(3, dtype=torch.long))
        return float(similarity.mean()), rendering.values

    alike, values_alike = similarity_and_values(0.0)
    apart, values_apart = similarity_and_values(1.0)
    assert alike > 0.95 and apart < alike - 0.1, (alike, apart)
    assert float(values_apart.mean()) > 0.5 * float(values_alike.mean())  # still images of the channel
