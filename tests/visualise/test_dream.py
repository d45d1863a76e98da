"""Deep dream: the layer's objective rises many times over, through the octaves, and the image stays an
image (in range, the same size) with the model left as it was."""

from __future__ import annotations

import torch

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.demo.scene import render_scene
from cnnvis_cli.models import load_model
from cnnvis_cli.visualise.dream import DreamSettings, dream
from cnnvis_cli.visualise.render import Pixels


def test_a_dream_drives_the_layer_and_keeps_the_picture() -> None:
    model = load_model(ModelConfig(source="demo", name="demo"))
    info = next(info for info in model.layers if info.name == "features.9")
    scene = torch.from_numpy(render_scene("test", 0).image).permute(2, 0, 1).float() / 255
    images = torch.stack([scene, scene])
    pixels = Pixels(model.preprocess.mean, model.preprocess.std)
    settings = DreamSettings(octaves=3, steps=5)
    whole, before, after = dream(model.module, images[:1], "features.9", info.layout, None, pixels=pixels,
                                 settings=settings)
    assert whole.shape == (1, 3, 96, 96) and float(whole.min()) >= 0 and float(whole.max()) <= 1
    assert float(after[0]) > 10 * float(before[0])
    channel, before_channel, after_channel = dream(model.module, images, "features.9", info.layout, [7],
                                                   pixels=pixels, settings=settings)
    assert bool((after_channel > 5 * before_channel).all())
    assert torch.equal(channel[0], channel[1])  # images dream independently: equal images, equal dreams
    assert torch.corrcoef(torch.stack([whole[0].flatten(), scene.flatten()]))[0, 1] > 0.3  # still the scene
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.module.modules())
