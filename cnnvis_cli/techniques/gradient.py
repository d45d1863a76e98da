"""CAMs weighted by gradients: the target's score differentiated with respect to the layer's activation.

Each method says how gradients g = d score_c / d A_k(i, j) weigh the activations A_k; the engine
(`cam.py`) then takes map = ReLU(sum_k weight_k * A_k), with weights per channel or per position:

- Grad-CAM (Selvaraju et al., ICCV 2017):         weight_k = mean_ij g
- Grad-CAM++ (Chattopadhay et al., WACV 2018):    weight_k = sum_ij alpha_k(i, j) ReLU(g)
- XGrad-CAM (Fu et al., BMVC 2020):               weight_k = sum_ij g A_k(i, j) / sum_ab A_k(a, b)
- HiRes-CAM (Draelos and Carin, 2020):            weight_k(i, j) = g
- LayerCAM (Jiang et al., IEEE TIP 2021):          weight_k(i, j) = ReLU(g)
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from cnnvis_cli.techniques.cam import ChannelWeightedCAM

GRADCAMPP_EPSILON = 1e-6
XGRADCAM_EPSILON = 1e-7


class GradientCAM(ChannelWeightedCAM):
    """A CAM whose weights come from the gradients (and perhaps the activations) of each row."""

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, images: torch.Tensor,
                        image_rows: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
        assert gradient is not None  # needs_gradients is True for every gradient CAM
        return self.weigh(activation[image_rows], gradient)

    @abstractmethod
    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """R x K (per channel) or R x K x h x w (per position) weights from R x K x h x w rows."""


class GradCAM(GradientCAM):
    """Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.

        weight_k = mean over positions (i, j) of g
    """

    name = "gradcam"
    summary = "Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient"

    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.mean(dim=(2, 3))


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++: Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for
    Deep Convolutional Networks", WACV 2018 (eq. 19, the score's exponential folded into the gradients).

        alpha_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3 + 1e-6)      (0 where g = 0)
        weight_k      = sum_ij alpha_k(i, j) ReLU(g)

    The 1e-6 (as in pytorch-grad-cam) keeps the ratio finite where the denominator nears zero, which
    happens with activations that can be negative (hard-swish in MobileNetV3).
    """

    name = "gradcampp"
    summary = "Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted per position"

    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        squared = gradient.pow(2)
        activation_sums = activation.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * squared + activation_sums * squared * gradient + GRADCAMPP_EPSILON
        alpha = torch.where(gradient != 0, squared / denominator, 0.0)
        return (alpha * gradient.clamp(min=0)).sum(dim=(2, 3))


class XGradCAM(GradientCAM):
    """XGrad-CAM: Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
    CNNs", BMVC 2020.

        weight_k = sum_ij g A_k(i, j) / (sum_ab A_k(a, b) + 1e-7)      (the 1e-7 keeps an all-zero channel at 0)
    """

    name = "xgradcam"
    summary = "XGrad-CAM (Fu et al., 2020): gradients weighted by the channel's normalised activation"

    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return (gradient * activation).sum(dim=(2, 3)) / (activation.sum(dim=(2, 3)) + XGRADCAM_EPSILON)


class HiResCAM(GradientCAM):
    """HiRes-CAM: Draelos and Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020.

        weight_k(i, j) = g        (element-wise: the gradients are not averaged)
    """

    name = "hirescam"
    summary = "HiRes-CAM (Draelos and Carin, 2020): gradient times activation, position by position"

    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient


class LayerCAM(GradientCAM):
    """LayerCAM: Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE Transactions on Image Processing 30, 2021.

        weight_k(i, j) = ReLU(g)  (element-wise positive gradients)
    """

    name = "layercam"
    summary = "LayerCAM (Jiang et al., 2021): positive gradients times activation, position by position"

    def weigh(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.clamp(min=0)
