"""The registry of explanation techniques: `technique=NAME` picks one, `technique=[A,B]` several."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.techniques.base import NORMALISATION, CamTechnique
from cnnvis_cli.techniques.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from cnnvis_cli.techniques.perturbation import AblationCAM, ScoreCAM

TECHNIQUES: dict[str, type[CamTechnique]] = {
    technique.name: technique
    for technique in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, ScoreCAM, AblationCAM)
}

__all__ = ["NORMALISATION", "TECHNIQUES", "CamTechnique", "build_technique"]


def build_technique(name: str, model: nn.Module, layers: Sequence[str], options: TechniqueConfig,
                    amp: bool = False) -> CamTechnique:
    """An instance of technique `name` with the run's options."""
    return TECHNIQUES[name].from_options(model, layers, options, amp)
