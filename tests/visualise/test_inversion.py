"""Feature inversion (Mahendran and Vedaldi, 2015): the regularisers against their definitions, the
representation distance falling, and low layers keeping more of the image than high ones."""

from __future__ import annotations

import torch

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.demo.scene import render_scene
from cnnvis_cli.models import load_model
from cnnvis_cli.visualise.inversion import InversionSettings, alpha_norm, invert, total_variation
from cnnvis_cli.visualise.render import Pixels


def test_the_regularisers_follow_their_definitions() -> None:
    image = torch.full((1, 3, 3, 3), 0.5)
    image[0, 0, 1, 1] = 1.0
    assert torch.allclose(alpha_norm(image, 6.0), torch.tensor([0.5 ** 6]))
    # forward differences from each pixel of the top-left 2 x 2 block: (0, 1) has dy = 0.5, (1, 0) dx = 0.5, and
    # (1, 1), the bright one, dx = dy = -0.5
    assert torch.allclose(total_variation(image, 2.0), torch.tensor([0.25 + 0.25 + 0.5]))
    assert torch.allclose(total_variation(image, 1.0), torch.tensor([0.5 + 0.5 + 0.5 ** 0.5]))


def test_inversion_matches_the_representation_and_low_layers_keep_more_of_the_image() -> None:
    model = load_model(ModelConfig(source="demo", name="demo"))
    layouts = {info.name: info.layout for info in model.layers}
    scene = torch.from_numpy(render_scene("test", 0).image).permute(2, 0, 1).float() / 255
    result = invert(model.module, scene, ["features.0", "features.3", "features"], layouts,
                    pixels=Pixels(model.preprocess.mean, model.preprocess.std),
                    settings=InversionSettings(steps=150))
    falls = result.start / result.distance
    assert float(falls[0]) > 50 and bool((falls > 3).all()), falls
    assert result.correlation[0] > 0.9 > result.correlation[1] > result.correlation[2], result.correlation
    assert result.images.shape == (3, 3, 96, 96)
