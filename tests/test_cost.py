from __future__ import annotations

import logging

import pytest
import torch

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.cost import duration, explanation_estimates, say_estimates
from cnnvis_cli.techniques import TechniqueContext, build_technique


def techniques(model, *names: str, **options):
    context = TechniqueContext(model, ["features"], TechniqueConfig(**options))
    return [build_technique(name, context) for name in names]


def test_passes_per_image_follow_each_techniques_options(tiny_net) -> None:
    example = torch.zeros(1, 3, 16, 16)
    scorecam, ablation, occlusion, rise = techniques(tiny_net, "scorecam", "ablationcam", "occlusion", "rise")
    assert scorecam.passes_per_image(example) == 1 + 12  # the layer's 12 channels, and the baseline
    assert techniques(tiny_net, "scorecam", max_channels=5)[0].passes_per_image(example) == 1 + 5
    assert ablation.passes_per_image(example) == 1 + 12
    assert occlusion.passes_per_image(example) == 1 + 1  # a 32 px window fits a 16 px image once
    from cnnvis_cli.techniques.occlusion import window_masks

    for height, width in ((64, 64), (70, 100), (224, 224)):
        windows = len(window_masks(height, width, 32, 16, torch.device("cpu")))
        assert occlusion.passes_per_image(torch.zeros(1, 3, height, width)) == 1 + windows
    assert rise.passes_per_image(example) == 2000


def test_only_many_pass_techniques_are_estimated(tiny_net) -> None:
    example = torch.zeros(1, 3, 16, 16)
    assert explanation_estimates(techniques(tiny_net, "gradcam", "saliency"), example, 10, 8) == {}
    estimates = explanation_estimates(techniques(tiny_net, "gradcam", "rise"), example, 10, 8)
    assert estimates["rise"][0] == 2000 and estimates["gradcam"][0] == 3
    assert estimates["rise"][1] > estimates["gradcam"][1] > 0


def test_a_long_technique_is_announced_with_the_option_that_makes_it_cheaper(tiny_net,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    chosen = techniques(tiny_net, "gradcam", "scorecam")
    with caplog.at_level(logging.INFO, logger="cnnvis"):
        say_estimates(chosen, {"gradcam": (3, 2.0), "scorecam": (513, 600.0)}, 6, torch.device("cpu"))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["scorecam takes about 10 min here (6 images x 513 forward passes each on cpu); "
                        "technique.max_channels=64 (score only the 64 most active channels), or fewer samples "
                        "(selection.max_samples) make it cheaper"]
    assert "explaining 6 images: about 10 min on cpu" in caplog.text


def test_durations_read_naturally() -> None:
    assert (duration(45), duration(600), duration(3 * 3600)) == ("45 s", "10 min", "3.0 h")
