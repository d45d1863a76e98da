"""The contract and the hygiene every technique owes its caller, checked for each registered technique and
for SmoothGrad around a gradient technique."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.techniques import TECHNIQUES, TechniqueContext, build_technique
from cnnvis_cli.techniques.base import normalise_maps, passes_reported_to, row_gradients, slot_of_rows
from cnnvis_cli.techniques.gradient import GradCAM

# every technique on a small CNN; the attention techniques read a transformer's attention, and have their
# own checks below, with the CAMs on a token layer
ATTENTION = {name for name, technique in TECHNIQUES.items() if technique.__module__.endswith(".attention")}
NAMES = [*(name for name in TECHNIQUES if name not in ATTENTION), "saliency+smooth"]


def small_options(smooth: bool = False) -> TechniqueConfig:
    """Options that keep the many-pass techniques quick on tiny images."""
    options = TechniqueConfig(batch_size=16)
    options.integrated_gradients.steps = 4
    options.occlusion.window, options.occlusion.stride = 4, 4
    options.rise.masks = 12
    options.smooth.samples = 3 if smooth else 0
    return options


def make(name: str, model: nn.Module):
    base, _, smooth = name.partition("+")
    return build_technique(base, TechniqueContext(model, ["features"], small_options(bool(smooth))))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(tiny_net, name: str) -> None:
    technique = make(name, tiny_net)
    explanation = technique.explain(torch.randn(2, 3, 12, 12), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    maps = explanation.maps
    assert maps.shape == (3, 12, 12) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and float(maps.min()) >= 0 and float(maps.max()) == 1
    if technique.signed:
        assert explanation.signed.shape == (3, 12, 12) and explanation.signed.dtype == torch.float32
        assert torch.isfinite(explanation.signed).all()
    else:
        assert explanation.signed is None
    empty = technique.explain(torch.randn(2, 3, 12, 12), torch.tensor([], dtype=torch.long),
                              torch.tensor([], dtype=torch.long))
    assert empty.maps.shape == (0, 12, 12)


@pytest.mark.parametrize("name", NAMES)
def test_model_is_given_back_as_it_was_even_after_an_exception(tiny_net, name: str) -> None:
    tiny_net.train()
    tiny_net.features[0].requires_grad_(False)  # a mix of frozen and trainable parameters
    flags = [p.requires_grad for p in tiny_net.parameters()]
    bn = tiny_net.features[4]
    running_mean = bn.running_mean.clone()
    make(name, tiny_net).explain(torch.randn(2, 3, 12, 12), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert hook_count(tiny_net) == 0
    assert not any("forward" in vars(module) for module in tiny_net.modules())
    assert all(m.training for m in tiny_net.modules())
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    assert all(p.grad is None for p in tiny_net.parameters())  # no gradient accumulated in parameters
    torch.testing.assert_close(bn.running_mean, running_mean)  # explained in eval mode: statistics untouched

    def explode(*_):
        raise RuntimeError("boom")

    tiny_net.classifier.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        make(name, tiny_net).explain(torch.randn(1, 3, 12, 12), torch.tensor([0]), torch.tensor([0]))
    tiny_net.classifier._forward_hooks.clear()
    assert hook_count(tiny_net) == 0
    assert not any("forward" in vars(module) for module in tiny_net.modules())  # no module's forward replaced
    assert all(m.training for m in tiny_net.modules())
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    assert all(p.grad is None for p in tiny_net.parameters())


def live_tensors() -> int:
    gc.collect()
    return sum(1 for item in gc.get_objects() if issubclass(type(item), torch.Tensor))


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def assert_memory_flat(technique, images: torch.Tensor, batches: int) -> None:
    """`batches` calls of `technique.explain` keep no tensor and grow the process by less than 20 MiB."""
    rows, targets = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    for _ in range(5):
        technique.explain(images, rows, targets)
    tensors, resident = live_tensors(), resident_bytes()
    for _ in range(batches):
        technique.explain(images, rows, targets)
    assert live_tensors() == tensors  # nothing kept between calls
    assert resident_bytes() - resident < 20 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_flat_over_200_batches(tiny_net, name: str) -> None:
    assert_memory_flat(make(name, tiny_net), torch.randn(2, 3, 8, 8), 200)


@pytest.mark.parametrize("name", NAMES)
def test_rows_and_targets_must_pair_up(tiny_net, name: str) -> None:
    with pytest.raises(ValueError, match="equal length"):
        make(name, tiny_net).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="outside the batch"):
        make(name, tiny_net).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]), torch.tensor([0, 0]))


@pytest.mark.parametrize("name", NAMES)
def test_a_model_that_ignores_its_input_gives_zero_maps_not_nan(tiny_net, name: str) -> None:
    with torch.no_grad():
        for parameter in tiny_net.features.parameters():
            parameter.zero_()
    explanation = make(name, tiny_net).explain(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.equal(explanation.maps, torch.zeros(2, 8, 8))


def test_normalise_maps() -> None:
    maps = torch.stack([torch.tensor([[1.0, 3.0], [5.0, 3.0]]), torch.full((2, 2), 7.0), torch.zeros(2, 2)])
    expected = torch.stack([torch.tensor([[0.0, 0.5], [1.0, 0.5]]), torch.zeros(2, 2), torch.zeros(2, 2)])
    torch.testing.assert_close(normalise_maps(maps), expected)


def test_slot_of_rows_counts_earlier_rows_of_the_same_image() -> None:
    assert slot_of_rows(torch.tensor([2, 0, 2, 1, 0, 2])).tolist() == [0, 0, 1, 0, 1, 2]


def test_row_gradients_match_one_backward_pass_per_row() -> None:
    torch.manual_seed(0)
    weights = torch.randn(4, 3)
    inputs = torch.randn(2, 3, requires_grad=True)

    def scores() -> torch.Tensor:  # B x classes, each image's scores depend only on that image
        return (inputs @ weights.T) ** 2

    rows, targets = torch.tensor([1, 0, 1]), torch.tensor([2, 0, 3])
    (gradients,) = row_gradients(scores(), [inputs], rows, targets)
    for row in range(3):
        (expected,) = torch.autograd.grad(scores()[rows[row], targets[row]], inputs)
        torch.testing.assert_close(gradients[row], expected[rows[row]])


def test_unknown_layer_is_refused(tiny_net) -> None:
    with pytest.raises(ValueError, match="no such layer in the model: nope"):
        GradCAM(tiny_net, ["nope"]).explain(torch.randn(1, 3, 8, 8), torch.tensor([0]), torch.tensor([0]))


def test_mixed_precision_only_where_low_precision_is_safe(tiny_net) -> None:
    context = TechniqueContext(tiny_net, ["features"], small_options(), amp=True)
    mixed = {name for name in TECHNIQUES if build_technique(name, context).mixed_precision}
    assert mixed == {"scorecam", "eigencam", "rise"}
    assert not build_technique("scorecam", TechniqueContext(tiny_net, ["features"], small_options())).mixed_precision


def test_inputs_per_pass_is_the_option_or_the_device_default(tiny_net) -> None:
    from cnnvis_cli.config import TechniqueConfig
    from cnnvis_cli.techniques.base import TechniqueContext, inputs_per_pass

    assert inputs_per_pass(TechniqueContext(tiny_net, ["features"], TechniqueConfig())) == 8  # a CPU model
    assert inputs_per_pass(TechniqueContext(tiny_net, ["features"], TechniqueConfig(batch_size=3))) == 3
    if torch.cuda.is_available():
        assert inputs_per_pass(TechniqueContext(tiny_net.cuda(), ["features"], TechniqueConfig())) == 64


@pytest.mark.parametrize(("name", "options"), [
    ("scorecam", {}), ("occlusion", {}), ("rise", {"rise": {"masks": 40}}),
    ("integrated_gradients", {"integrated_gradients": {"steps": 12}}), ("saliency", {"smooth": {"samples": 6}}),
])
def test_many_pass_techniques_report_their_passes_as_they_go(name: str, options: dict, tiny_net) -> None:
    """What moves the progress bar within a batch: (done, total) after each group of passes, rising to the end."""
    config = TechniqueConfig(batch_size=4)
    for key, value in options.items():
        setattr(config, key, type(getattr(config, key))(**value))
    technique = build_technique(name, TechniqueContext(tiny_net, ["features"], config))  # saliency: in SmoothGrad
    reports: list[tuple[int, int]] = []
    with passes_reported_to(lambda done, total: reports.append((done, total))):
        technique.explain(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert len(reports) > 1
    totals = {total for _, total in reports}
    assert len(totals) == 1  # one stream of passes (a wrapped technique's own are not reported)
    done = [count for count, _ in reports]
    assert done == sorted(done) and done[-1] == totals.pop()


# --- a small vision transformer: the token-layer path of the CAMs, and the attention techniques -----------

TRANSFORMER_NAMES = ["gradcam", "layercam", "scorecam", "ablationcam", "eigencam", "saliency", *sorted(ATTENTION)]


@pytest.fixture
def tiny_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()


def make_for_vit(name: str, model: nn.Module):
    return build_technique(name, TechniqueContext(model, ["blocks.1.norm1"], small_options()))


@pytest.mark.parametrize("name", TRANSFORMER_NAMES)
def test_transformer_output_contract_and_model_given_back(tiny_vit, name: str) -> None:
    tiny_vit.train()
    tiny_vit.patch_embed.requires_grad_(False)
    flags = [p.requires_grad for p in tiny_vit.parameters()]
    fused = [block.attn.fused_attn for block in tiny_vit.blocks]
    maps = make_for_vit(name, tiny_vit).explain(torch.randn(2, 3, 32, 32), torch.tensor([0, 1, 1]),
                                                torch.tensor([0, 1, 2])).maps
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and float(maps.max()) == 1
    assert hook_count(tiny_vit) == 0 and not any("forward" in vars(module) for module in tiny_vit.modules())
    assert all(m.training for m in tiny_vit.modules()) and [p.requires_grad for p in tiny_vit.parameters()] == flags
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert [block.attn.fused_attn for block in tiny_vit.blocks] == fused

    def explode(*_):
        raise RuntimeError("boom")

    tiny_vit.head.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        make_for_vit(name, tiny_vit).explain(torch.randn(1, 3, 32, 32), torch.tensor([0]), torch.tensor([0]))
    tiny_vit.head._forward_hooks.clear()
    assert hook_count(tiny_vit) == 0 and [block.attn.fused_attn for block in tiny_vit.blocks] == fused
    assert all(m.training for m in tiny_vit.modules()) and all(p.grad is None for p in tiny_vit.parameters())


@pytest.mark.parametrize("name", ["gradcam", "ablationcam", *sorted(ATTENTION)])  # each path once
def test_transformer_memory_is_flat_over_50_batches(tiny_vit, name: str) -> None:
    assert_memory_flat(make_for_vit(name, tiny_vit), torch.randn(2, 3, 32, 32), 50)
