"""The registry of explanation techniques: `technique=NAME` picks one, `technique=[A,B]` several."""

from __future__ import annotations

from cnnvis_cli.techniques.attention import AttentionGradient, AttentionRollout
from cnnvis_cli.techniques.attribution import GradientXInput, InputGradient, Saliency
from cnnvis_cli.techniques.base import NORMALISATION, Explanation, Technique, TechniqueContext
from cnnvis_cli.techniques.eigen import EigenCAM
from cnnvis_cli.techniques.flip import Flip
from cnnvis_cli.techniques.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from cnnvis_cli.techniques.guided import GuidedBackprop, GuidedGradCAM
from cnnvis_cli.techniques.integrated import IntegratedGradients
from cnnvis_cli.techniques.lrp import LRP
from cnnvis_cli.techniques.occlusion import Occlusion
from cnnvis_cli.techniques.perturbation import AblationCAM, ScoreCAM
from cnnvis_cli.techniques.rise import RISE
from cnnvis_cli.techniques.smoothgrad import SmoothGrad

TECHNIQUES: dict[str, type[Technique]] = {
    technique.name: technique
    for technique in (
        GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, ScoreCAM, AblationCAM, EigenCAM,
        Saliency, GradientXInput, GuidedBackprop, GuidedGradCAM, IntegratedGradients,
        Occlusion, RISE, LRP, Flip, AttentionRollout, AttentionGradient,
    )
}
# option files that configure a registered technique rather than add one
PRESETS = {"smoothgrad": "SmoothGrad (Smilkov et al., 2017): saliency averaged over 25 noisy copies; "
                         "technique.smooth.samples=N smooths any gradient technique"}

__all__ = ["NORMALISATION", "PRESETS", "TECHNIQUES", "Explanation", "Technique", "TechniqueContext",
           "build_technique"]


def build_technique(name: str, context: TechniqueContext) -> Technique:
    """An instance of technique `name` with the run's options, wrapped in SmoothGrad when they ask for it."""
    technique = TECHNIQUES[name].from_context(context)
    if context.options.smooth.samples > 0 and isinstance(technique, InputGradient):
        return SmoothGrad.from_context(context, technique)
    return technique
