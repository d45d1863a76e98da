from __future__ import annotations

import pytest
import torch
from references import reference_ablationcam, reference_scorecam

from cnnvis_cli.techniques.perturbation import AblationCAM, ScoreCAM


@pytest.mark.parametrize(("technique", "reference", "seed"), [
    (ScoreCAM, reference_scorecam, 4),
    (AblationCAM, reference_ablationcam, 6),
])
def test_matches_the_definition_whatever_the_streaming_batch(tiny_net, technique, reference, seed: int) -> None:
    torch.manual_seed(seed)
    images = torch.randn(2, 3, 16, 16)
    image_rows, targets = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 4])
    expected = torch.stack([reference(tiny_net, "features", images[i], int(t))
                            for i, t in zip(image_rows, targets, strict=True)])
    assert all(float(m.max()) == 1.0 for m in expected)  # maps with content
    for batch_size in (1, 7, 64):
        maps = technique(tiny_net, ["features"], batch_size=batch_size).explain(images, image_rows, targets).maps
        torch.testing.assert_close(maps, expected, atol=1e-4, rtol=1e-4)  # Score-CAM: differences of probabilities


def test_without_the_baseline_the_weights_are_the_probabilities_of_the_authors_code(tiny_net) -> None:
    with torch.no_grad():  # a few constant channels, which must weigh 0 with or without the baseline
        tiny_net.features[4].bias[:3] = 50.0
        tiny_net.features[4].weight[:3] = 0.0
    torch.manual_seed(7)
    images = torch.randn(2, 3, 16, 16)
    image_rows, targets = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 4])
    expected = torch.stack([reference_scorecam(tiny_net, "features", images[i], int(t), subtract_baseline=False)
                            for i, t in zip(image_rows, targets, strict=True)])
    increase = ScoreCAM(tiny_net, ["features"]).explain(images, image_rows, targets).maps
    maps = ScoreCAM(tiny_net, ["features"], subtract_baseline=False, batch_size=5).explain(
        images, image_rows, targets).maps
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    assert (maps - increase).abs().amax() > 0.05  # the baseline changes the maps


def test_max_channels_scores_only_the_most_active_channels(tiny_net) -> None:
    torch.manual_seed(5)
    image = torch.randn(3, 16, 16)
    with torch.no_grad():
        captured = {}
        handle = tiny_net.features.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out.clone()))
        tiny_net(image[None])
        handle.remove()
    top = captured["a"][0].mean(dim=(1, 2)).topk(4).indices.tolist()
    technique = ScoreCAM(tiny_net, ["features"], max_channels=4)
    maps = technique.explain(image[None], torch.tensor([0]), torch.tensor([1])).maps
    torch.testing.assert_close(maps[0], reference_scorecam(tiny_net, "features", image, 1, channels=top),
                               atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize(("technique", "reference"), [(ScoreCAM, reference_scorecam),
                                                      (AblationCAM, reference_ablationcam)])
def test_channels_that_are_zero_everywhere_are_not_scored_and_maps_do_not_change(tiny_net, technique,
                                                                                reference) -> None:
    with torch.no_grad():  # half the last block's channels end below zero, so its ReLU leaves them at 0
        tiny_net.features[4].bias[:6] = -100.0
    torch.manual_seed(6)
    images, rows, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 1]), torch.tensor([3, 0, 4])
    inputs_seen = []
    handle = tiny_net.register_forward_pre_hook(lambda _m, args: inputs_seen.append(len(args[0])))
    try:
        maps = technique(tiny_net, ["features"], batch_size=64).explain(images, rows, targets).maps
    finally:
        handle.remove()
    expected = torch.stack([reference(tiny_net, "features", images[i], int(t))
                            for i, t in zip(rows, targets, strict=True)])
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    passes = sum(inputs_seen)
    assert passes <= 2 * (12 - 6) + 2 * 2  # the 6 live channels of 2 images, plus the unperturbed passes


def test_ablation_passes_reuse_the_layer_output_and_give_the_layer_back_after_a_failure(tiny_net) -> None:
    torch.manual_seed(7)
    images, rows, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), torch.tensor([1, 2])
    calls = []
    handle = tiny_net.features[3].register_forward_hook(lambda *_: calls.append(1))  # a conv inside the layer
    try:
        AblationCAM(tiny_net, ["features"], batch_size=64).explain(images, rows, targets)
    finally:
        handle.remove()
    assert len(calls) == 2  # the unperturbed pass and the original scores; no ablated pass ran it

    passes = []

    def fail_on_an_ablated_pass(*_):
        passes.append(1)
        if len(passes) == 2:
            raise RuntimeError("boom")

    handle = tiny_net.classifier.register_forward_hook(fail_on_an_ablated_pass)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            AblationCAM(tiny_net, ["features"], batch_size=64).explain(images, rows, targets)
    finally:
        handle.remove()
    assert "forward" not in vars(tiny_net.features)
    with torch.no_grad():  # the layer computes again
        assert not torch.equal(tiny_net.features(images), tiny_net.features(images.flip(-1)))
