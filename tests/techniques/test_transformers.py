"""The CAMs on vision transformers' token layers, against pytorch-grad-cam given the reshape that fits each
model (written here: the prefix tokens dropped, the patch tokens laid on their grid, NHWC maps permuted).

Random-initialised timm models at small inputs: DeiT-tiny distilled (2 prefix tokens: class and
distillation), a ViT with 4 register tokens (5 prefix tokens) and Swin-tiny (NHWC blocks). Each model's
layer is the one cnnvis chooses by default, so the test also shows that the default's maps are not blank.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_against_pytorch_grad_cam import GradCamStyleScoreCAM, per_image_pearson

from cnnvis_cli.errors import UserError
from cnnvis_cli.layouts import NHWC, TOKENS
from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques import TECHNIQUES

timm = pytest.importorskip("timm")

MODELS = {  # name: (timm options, input size, the default layer, its layout, prefix tokens); made small, as
    # Score-CAM runs one pass per channel of the layer
    "deit_tiny_distilled_patch16_224": ({"img_size": 64, "depth": 6}, 64, "blocks.5.norm1", TOKENS, 2),
    "vit_small_patch14_reg4_dinov2": ({"img_size": 56, "depth": 4, "embed_dim": 192, "num_heads": 3,
                                       "num_classes": 1000}, 56, "blocks.3.norm1", TOKENS, 5),
    "swin_tiny_patch4_window7_224": ({"img_size": 112, "embed_dim": 24, "depths": (1, 1, 2, 1),
                                      "num_heads": (1, 2, 3, 6)}, 112, "norm", NHWC, 0),
}
REFERENCES = {
    "gradcam": pytorch_grad_cam.GradCAM,
    "gradcampp": pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "layercam": pytorch_grad_cam.LayerCAM,
}
TARGETS = [3, 250, 999]


def build(name: str) -> tuple[torch.nn.Module, int]:
    options, size, *_ = MODELS[name]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **options).eval(), size


def reshape_for(layout: str, prefix: int):
    """pytorch-grad-cam's `reshape_transform` for a layer: its output as N x C x H x W."""
    def tokens(tensor: torch.Tensor) -> torch.Tensor:
        grid = tensor[:, prefix:]
        side = int(round(grid.shape[1] ** 0.5))
        return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)

    return tokens if layout == TOKENS else (lambda tensor: tensor.permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_default_layer_is_one_whose_grid_reaches_the_output(name: str) -> None:
    model, size = build(name)
    layers, _ = inspect_layers(model, size)
    _, _, default, layout, prefix = MODELS[name]
    assert resolve_target_layer(model, None, layers) == default
    chosen = {layer.name: layer for layer in layers}[default]
    assert chosen.layout.kind == layout and chosen.layout.prefix == prefix and chosen.reaches_output
    assert {layer.name: layer for layer in layers}["patch_embed"].embedding
    if layout == TOKENS:  # after the last attention only the prefix tokens are read
        assert not {layer.name: layer for layer in layers}["norm"].reaches_output


@pytest.mark.parametrize("technique", sorted(REFERENCES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradient_cams_on_token_layers_agree_with_pytorch_grad_cam(name: str, technique: str) -> None:
    model, size = build(name)
    _, _, layer, layout, prefix = MODELS[name]
    images = torch.randn(3, 3, size, size)
    ours = TECHNIQUES[technique](model, [layer]).explain(images, torch.arange(3), torch.tensor(TARGETS)).maps.numpy()
    reference = REFERENCES[technique](model=model, target_layers=[model.get_submodule(layer)],
                                      reshape_transform=reshape_for(layout, prefix))
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    assert ours.shape == theirs.shape == (3, size, size)
    assert all(np.ptp(m) > 0 for m in theirs) and all(np.ptp(m) > 0 for m in ours)
    assert min(per_image_pearson(ours, theirs)) >= 0.99


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eigencam_on_token_layers_agrees_with_pytorch_grad_cam_up_to_sign(name: str) -> None:
    model, size = build(name)
    _, _, layer, layout, prefix = MODELS[name]
    images = torch.randn(3, 3, size, size)
    ours = TECHNIQUES["eigencam"](model, [layer]).explain(images, torch.arange(3), torch.zeros(3, dtype=torch.long))
    reference = pytorch_grad_cam.EigenCAM(model=model, target_layers=[model.get_submodule(layer)],
                                          reshape_transform=reshape_for(layout, prefix))
    theirs = reference(input_tensor=images, targets=None)
    for mine, their in zip(ours.maps.numpy(), theirs, strict=True):
        # the component's sign is the SVD routine's in pytorch-grad-cam; its map is then of the ReLU of the
        # other sign, so only the agreeing maps are compared
        if np.ptp(their) > 0 and np.corrcoef(mine.ravel(), their.ravel())[0, 1] > 0:
            assert np.corrcoef(mine.ravel(), their.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scorecam_on_token_layers_agrees_with_pytorch_grad_cam(name: str) -> None:
    model, size = build(name)
    _, _, layer, layout, prefix = MODELS[name]
    images = torch.randn(2, 3, size, size)
    reference = pytorch_grad_cam.ScoreCAM(model=model, target_layers=[model.get_submodule(layer)],
                                          reshape_transform=reshape_for(layout, prefix))
    reference.batch_size = 64
    theirs = reference(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in TARGETS[:2]])
    ours = GradCamStyleScoreCAM(model, [layer], batch_size=64, subtract_baseline=False).explain(
        images, torch.arange(2), torch.tensor(TARGETS[:2])).maps.numpy()
    assert all(np.ptp(m) > 0 for m in theirs)
    assert min(per_image_pearson(ours, theirs)) >= 0.99


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ablationcam_on_token_layers_keeps_the_prefix_tokens_and_the_model_intact(name: str) -> None:
    model, size = build(name)
    layer = MODELS[name][2]
    images = torch.randn(2, 3, size, size)
    before = model(images)
    maps = TECHNIQUES["ablationcam"](model, [layer], max_channels=16).explain(
        images, torch.arange(2), torch.tensor(TARGETS[:2])).maps
    assert maps.shape == (2, size, size) and torch.isfinite(maps).all() and (maps.amax(dim=(1, 2)) > 0).all()
    torch.testing.assert_close(model(images), before)  # no hook or replaced forward left behind


@pytest.mark.parametrize(("build_model", "size", "default"), [
    (lambda: __import__("torchvision").models.vit_b_16(image_size=64), 64, "encoder.layers.encoder_layer_11.ln_1"),
    (lambda: __import__("torchvision").models.swin_t(), 112, "permute"),  # NHWC norm, then NCHW
    (lambda: timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=2, num_classes=10), 56, "norm"),
])
def test_default_layers_of_other_transformers(build_model, size: int, default: str) -> None:
    # torchvision's ViT starts with an all-zero head, so the scores reach nothing: the default is found from
    # the head's input; EVA-02 averages its patch tokens, so its last tokens reach the output
    torch.manual_seed(0)
    model = build_model().eval()
    assert resolve_target_layer(model, None, inspect_layers(model, size)[0]) == default
    if hasattr(model, "heads"):
        torch.nn.init.normal_(model.heads.head.weight)
    maps = TECHNIQUES["gradcam"](model, [default]).explain(torch.randn(2, 3, size, size), torch.arange(2),
                                                           torch.tensor([1, 2])).maps
    assert (maps.flatten(1).amax(dim=1) - maps.flatten(1).amin(dim=1) > 0).all()  # not blank


def test_choosing_the_patch_embedding_or_a_layer_without_gradient_is_warned_about(caplog) -> None:
    model, size = build("deit_tiny_distilled_patch16_224")
    layers, _ = inspect_layers(model, size)
    with caplog.at_level("WARNING", logger="cnnvis"):
        assert resolve_target_layer(model, "patch_embed", layers) == "patch_embed"
        assert resolve_target_layer(model, "norm", layers) == "norm"
    embedding, blank = (record.getMessage() for record in caplog.records)
    assert embedding.startswith("layer patch_embed runs before the model's first attention") \
        and embedding.endswith("the default layer is blocks.5.norm1")
    assert blank.startswith("layer norm: the class scores do not depend on its patch tokens")
    with pytest.raises(UserError, match="layer 'head' has no spatial output .* e.g. blocks.5.norm1"):
        resolve_target_layer(model, "head", layers)
