"""Gradient-free maps from one forward pass: CAM (classifier weights) and Eigen-CAM."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_cam.engine.methods.registry import LayerInputs, register
from lightning_cam.engine.spatial import weighted_sum

__all__ = ["cam", "eigencam"]


@register("cam", needs_classifier=True)
def cam(inputs: LayerInputs) -> Tensor:
    """CAM (Zhou et al., 2016): ``sum_k W[c, k] A_k`` with ``W`` the weights of the linear
    classifier that follows global average pooling and ``c`` the target class."""
    assert inputs.classifier_weight is not None, "the engine finds the classifier for methods that need it"
    kind = getattr(inputs.scorer, "kind", "class")
    if kind == "callable":
        raise ValueError(
            "'cam' weighs channels by a class's classifier weights; with a callable target use gradcam."
        )
    if kind == "binary":  # one logit: class 1 explains +W, class 0 explains -W
        sign = torch.where(inputs.targets == 1, 1.0, -1.0).to(inputs.activations)[:, None]
        weights = sign * inputs.classifier_weight[0].to(inputs.activations)
    else:
        weights = inputs.classifier_weight[inputs.targets].to(inputs.activations)
    return weighted_sum(weights, inputs.activations)


@register("eigencam")
def eigencam(inputs: LayerInputs) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin, 2020): the projection of the activations (positions x
    channels, centred over positions) on their first principal component. The sign of a
    principal component is arbitrary: it is chosen so that the map's largest-magnitude value
    is positive."""
    activations = inputs.activations
    batch, channels, *spatial = activations.shape
    positions = activations.reshape(batch, channels, -1).transpose(1, 2)
    centred = positions - positions.mean(dim=1, keepdim=True)
    centred = torch.nan_to_num(centred, nan=0.0, posinf=0.0, neginf=0.0)
    _, _, right_vectors = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ right_vectors[:, 0, :].unsqueeze(-1)  # [B, hw, 1]
    flat = projection.reshape(batch, -1)
    peak = flat.gather(1, flat.abs().argmax(dim=1, keepdim=True))
    return (flat * torch.where(peak < 0, -1.0, 1.0)).reshape(batch, *spatial)
