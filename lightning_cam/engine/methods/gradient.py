"""The gradient family: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM and HiResCAM.

Each is a pure function of the activations ``A`` and gradients ``G = d y^c / d A`` of one
target layer (``[B, K, h, w]``, or ``[B, K, d, h, w]`` for volumes), returning the map ``[B, h, w]``
(``[B, d, h, w]``) before ReLU; sums and means run over every spatial dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_cam.engine.methods.registry import LayerInputs, register
from lightning_cam.engine.spatial import spatial_dims, weighted_sum

__all__ = ["gradcam", "gradcam_plus_plus", "hirescam", "layercam", "xgradcam"]


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator), numerator / torch.where(zero, 1.0, denominator))


def _gradients(inputs: LayerInputs) -> Tensor:
    assert inputs.gradients is not None, "the engine computes gradients for methods that need them"
    return inputs.gradients


@register("gradcam", needs_gradients=True)
def gradcam(inputs: LayerInputs) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``sum_k mean_ij(G_k) A_k``."""
    gradients = _gradients(inputs)
    return weighted_sum(gradients.mean(dim=spatial_dims(gradients)), inputs.activations)


@register("gradcam++", needs_gradients=True)
def gradcam_plus_plus(inputs: LayerInputs) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018), eq. 19 with the exponential trick of the paper:

    ``w_k = sum_ij alpha_kij relu(G_kij)``,
    ``alpha = G^2 / (2 G^2 + sum_ab(A_kab) G^3)``, alpha = 0 where the denominator is 0.
    """
    grads = _gradients(inputs)
    grads_squared = grads * grads
    activation_sums = inputs.activations.sum(dim=spatial_dims(grads), keepdim=True)
    alpha = _safe_divide(grads_squared, 2 * grads_squared + activation_sums * grads_squared * grads)
    weights = (alpha * grads.clamp(min=0)).sum(dim=spatial_dims(grads))
    return weighted_sum(weights, inputs.activations)


@register("xgradcam", needs_gradients=True)
def xgradcam(inputs: LayerInputs) -> Tensor:
    """XGrad-CAM (Fu et al., 2020): ``sum_k (sum_ij G_kij A_kij / sum_ij A_kij) A_k``."""
    activations = inputs.activations
    dims = spatial_dims(activations)
    weights = _safe_divide((_gradients(inputs) * activations).sum(dim=dims), activations.sum(dim=dims))
    return weighted_sum(weights, activations)


@register("layercam", needs_gradients=True)
def layercam(inputs: LayerInputs) -> Tensor:
    """LayerCAM (Jiang et al., 2021): ``sum_k relu(G_k) * A_k`` element-wise."""
    return (_gradients(inputs).clamp(min=0) * inputs.activations).sum(dim=1)


@register("hirescam", needs_gradients=True)
def hirescam(inputs: LayerInputs) -> Tensor:
    """HiResCAM (Draelos & Carin, 2020): ``sum_k G_k * A_k`` element-wise."""
    return (_gradients(inputs) * inputs.activations).sum(dim=1)
