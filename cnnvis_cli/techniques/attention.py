"""Explanations from a vision transformer's attention, for timm's ViT family (ViT, DeiT, DeiT distilled,
ViTs with register tokens), batched over images and targets.

- Attention rollout (Abnar and Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020): each
  block's attention averaged over heads, with the residual connection as an identity term,
  Â = (mean_h A + I) / 2, rows normalised to sum to 1; R = Â_L ... Â_1; the map is the class token's row
  of R over the patch tokens. It does not depend on the target class.
- Gradient-weighted attention (Chefer, Gur and Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): R = I, then block by block
  Ā = mean_h (∇A ⊙ A)^+ and R = R + Ā R, with ∇A the gradient of the target's score with respect to the
  block's attention; the map is the class token's row of R over the patch tokens, minus nothing else.

timm computes attention with fused kernels that never form A; while a map is computed each attention
module's `fused_attn` flag is turned off (the same arithmetic, unfused) and given back afterwards, and A is
taken from the module's `attn_drop` (an identity in eval mode). Models whose attention is another kind
(Swin's windows, EVA's rotary embeddings, BEiT's relative bias, torchvision's) are refused before inference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cnnvis_cli.errors import UserError
from cnnvis_cli.layouts import is_attention, model_prefix_tokens
from cnnvis_cli.techniques.base import Explanation, Technique, TechniqueContext, normalise_maps, row_gradients

SUPPORTED = "timm's ViT attention (ViT, DeiT, DeiT distilled, ViTs with register tokens)"


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules whose attention can be read: timm's ViT `Attention` (a `fused_attn`
    flag, and an `attn_drop` applied to the attention probabilities), in the order they are registered,
    which is the order the blocks run."""
    readable = _timm_vit_attention()
    return [] if readable is None else [module for module in model.modules() if isinstance(module, readable)]


def _timm_vit_attention() -> type | None:
    """timm's ViT attention class (`timm.layers.Attention`; in older timm, in its ViT module), if timm is here."""
    try:
        from timm.layers import Attention
    except ImportError:
        try:
            from timm.models.vision_transformer import Attention
        except ImportError:
            return None
    return Attention


@contextmanager
def attention_capture(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward pass appends every block's attention (B x heads x L x L) to the list
    it yields, in the order the blocks run (tensors of the pass's graph, when it has one)."""
    modules = attention_modules(model)
    captured: list[torch.Tensor] = []
    flags = [module.fused_attn for module in modules]

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured.append(output)

    handles = []
    try:
        for module in modules:
            module.fused_attn = False
            handles.append(module.attn_drop.register_forward_hook(keep))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(modules, flags, strict=True):
            module.fused_attn = flag


class AttentionTechnique(Technique):
    """A map read from the attention of every block, for the class token's view of the patch tokens."""

    families = f"transformers with {SUPPORTED}; refused on CNNs and other attention"

    @classmethod
    def from_context(cls, context: TechniqueContext) -> AttentionTechnique:
        return cls(context.model, amp=context.amp)

    def check(self, example: torch.Tensor) -> None:
        if not attention_modules(self.model):
            kinds = sorted({type(module).__name__ for module in self.model.modules() if is_attention(module)})
            found = f"its attention is {', '.join(kinds)}" if kinds else "it has no attention"
            raise UserError(f"{self.name} reads {SUPPORTED}, and {found}; use a CAM on a token layer, e.g. "
                            "technique=gradcam")

    def _explain(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor) -> Explanation:
        # with gradients, the input is the graph's leaf (the parameters are frozen), so that a block's
        # attention gets its whole gradient, through the later blocks' attention as well as their values
        inputs = images.detach().requires_grad_(True) if self.needs_gradients else images
        with attention_capture(self.model) as attentions, torch.set_grad_enabled(self.needs_gradients):
            logits = self.model(inputs)
        if not attentions:
            raise UserError(f"{self.name}: no attention was computed in the forward pass")
        relevance = self.relevance(logits, attentions, image_rows, targets)  # R x L x L
        prefix = model_prefix_tokens(self.model) or 0
        patches = relevance[:, 0, prefix:]  # the class token's row, over the patch tokens
        side = math.isqrt(patches.shape[1])
        maps = patches.reshape(-1, 1, side, side).float()
        upsampled = nn.functional.interpolate(maps, size=tuple(images.shape[-2:]), mode="bilinear",
                                              align_corners=False)[:, 0]
        return Explanation(normalise_maps(upsampled))

    def relevance(self, logits: torch.Tensor, attentions: list[torch.Tensor], image_rows: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        """R x L x L token relevance for each row."""
        raise NotImplementedError


class AttentionRollout(AttentionTechnique):
    """Attention rollout: Abnar and Zuidema, ACL 2020 (head mean, identity for the residual)."""

    name = "rollout"
    summary = "Attention rollout (Abnar and Zuidema, 2020): attention multiplied through the blocks; class-agnostic"
    cost = "1 forward (no backward; the same map for every target)"
    needs_gradients = False

    @torch.no_grad()
    def relevance(self, logits: torch.Tensor, attentions: list[torch.Tensor], image_rows: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        tokens = attentions[0].shape[-1]
        identity = torch.eye(tokens, device=logits.device)
        rolled = identity.expand(attentions[0].shape[0], tokens, tokens)
        for attention in attentions:
            mixed = (attention.float().mean(dim=1) + identity) / 2
            rolled = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rolled
        return rolled[image_rows]


class AttentionGradient(AttentionTechnique):
    """Gradient-weighted attention: Chefer, Gur and Wolf, ICCV 2021 ("Generic Attention-model
    Explainability"), the self-attention rule."""

    name = "attention_gradient"
    summary = ("Gradient-weighted attention (Chefer et al., 2021): positive gradient x attention, accumulated "
               "through the blocks")
    cost = "1 forward + 1 backward to the attention"

    def relevance(self, logits: torch.Tensor, attentions: list[torch.Tensor], image_rows: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        gradients = row_gradients(logits, attentions, image_rows, targets)  # per block: R x heads x L x L
        tokens = attentions[0].shape[-1]
        relevance = torch.eye(tokens, device=logits.device).repeat(len(targets), 1, 1)
        with torch.no_grad():
            for attention, gradient in zip(attentions, gradients, strict=True):
                weighted = (gradient * attention.detach().float()[image_rows]).clamp(min=0).mean(dim=1)
                relevance = relevance + weighted @ relevance
        return relevance
