"""Attention rollout and gradient-weighted attention against the papers' equations, one image and one target
at a time, on attention taken independently: from each block's qkv projection (fused attention left on),
and, for the gradients, dA = dout V^T from the gradient at the input of the attention's output projection
(out = A V)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnvis_cli.errors import UserError
from cnnvis_cli.techniques import TECHNIQUES

timm = pytest.importorskip("timm")

MODELS = {  # timm name: options (small: these run one image at a time in the reference)
    "deit_tiny_patch16_224": {"img_size": 64, "depth": 4},
    "deit_tiny_distilled_patch16_224": {"img_size": 64, "depth": 3},  # class and distillation tokens
    "vit_small_patch14_reg4_dinov2": {"img_size": 56, "depth": 3, "embed_dim": 96, "num_heads": 3,
                                      "num_classes": 10},  # 4 register tokens
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **MODELS[name]).eval()


def attention_and_gradients(model: torch.nn.Module, image: torch.Tensor, target: int):
    """Each block's attention (heads x L x L) and the gradient of the target's score with respect to it."""
    qkv, outputs, handles = [], [], []
    for block in model.blocks:
        handles.append(block.attn.qkv.register_forward_hook(lambda _m, _i, out: qkv.append(out.detach())))

        handles.append(block.attn.proj.register_forward_pre_hook(lambda _m, inputs: outputs.append(inputs[0])))
    try:
        score = model(image[None].clone().requires_grad_(True))[0, target]
    finally:
        for handle in handles:
            handle.remove()
    gradients = torch.autograd.grad(score, outputs)
    found = []
    for block, projected, gradient in zip(model.blocks, qkv, gradients, strict=True):
        heads = block.attn.num_heads
        tokens, width = projected.shape[1], projected.shape[2] // 3
        q, k, v = projected.reshape(1, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = ((block.attn.q_norm(q) @ block.attn.k_norm(k).transpose(-2, -1)) * block.attn.scale).softmax(-1)
        d_out = gradient.reshape(1, tokens, heads, width // heads).transpose(1, 2)  # heads x L x d
        found.append((attention[0], (d_out @ v.transpose(-2, -1))[0]))
    return found


def reference_rollout(model, image) -> torch.Tensor:
    blocks = attention_and_gradients(model, image, 0)
    tokens = blocks[0][0].shape[-1]
    rolled = torch.eye(tokens)
    for attention, _ in blocks:
        mixed = 0.5 * attention.mean(dim=0) + 0.5 * torch.eye(tokens)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rolled = mixed @ rolled
    return rolled


def reference_attention_gradient(model, image, target) -> torch.Tensor:
    blocks = attention_and_gradients(model, image, target)
    relevance = torch.eye(blocks[0][0].shape[-1])
    for attention, gradient in blocks:
        relevance = relevance + (gradient * attention).clamp(min=0).mean(dim=0) @ relevance
    return relevance


def as_map(relevance: torch.Tensor, prefix: int, size: int) -> torch.Tensor:
    patches = relevance[0, prefix:]
    side = int(round(patches.numel() ** 0.5))
    upsampled = F.interpolate(patches.reshape(1, 1, side, side), size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0]
    return (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())


@pytest.mark.parametrize("technique", ["rollout", "attention_gradient"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_attention_maps_follow_the_papers_equations(name: str, technique: str) -> None:
    model = build(name)
    size = MODELS[name]["img_size"]
    images = torch.randn(2, 3, size, size)
    image_rows, targets = torch.tensor([0, 0, 1]), torch.tensor([3, 7, 5])
    ours = TECHNIQUES[technique](model).explain(images, image_rows, targets).maps
    for row, (image, target) in enumerate(zip(image_rows.tolist(), targets.tolist(), strict=True)):
        relevance = reference_rollout(model, images[image]) if technique == "rollout" \
            else reference_attention_gradient(model, images[image], target)
        expected = as_map(relevance, model.num_prefix_tokens, size)
        torch.testing.assert_close(ours[row], expected, atol=1e-4, rtol=1e-4)
    if technique == "attention_gradient":  # the target matters: two targets of one image differ
        assert not torch.allclose(ours[0], ours[1], atol=1e-3)


def test_attention_techniques_leave_fused_attention_and_hooks_as_they_were() -> None:
    model = build("deit_tiny_patch16_224")
    flags = [block.attn.fused_attn for block in model.blocks]
    images = torch.randn(2, 3, 64, 64)
    before = model(images)
    for name in ("rollout", "attention_gradient"):
        TECHNIQUES[name](model).explain(images, torch.arange(2), torch.tensor([1, 2]))
    assert [block.attn.fused_attn for block in model.blocks] == flags
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
    torch.testing.assert_close(model(images), before)


@pytest.mark.parametrize(("build_model", "found"), [
    (lambda: __import__("torchvision").models.resnet18(), "it has no attention"),
    (lambda: timm.create_model("swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1, 1, 1),
                               num_heads=(1, 1, 1, 1)), "its attention is WindowAttention"),
])
@pytest.mark.parametrize("technique", ["rollout", "attention_gradient"])
def test_other_models_are_refused_in_one_line(build_model, found: str, technique: str) -> None:
    with pytest.raises(UserError, match=f"{technique} reads timm's ViT attention .*, and {found}; use a CAM"):
        TECHNIQUES[technique](build_model().eval()).check(torch.zeros(1, 3, 224, 224))
