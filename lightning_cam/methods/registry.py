"""The method registry: every CAM method is a small pure function registered by name.

A method receives a :class:`LayerInputs` (what the engine's single guarded pass captured for one
target layer) and returns a low-resolution map ``[B, h, w]`` before ReLU. The engine asks for
gradients only when a requested method needs them, and does the rest (ReLU, upsampling,
normalisation) once for all methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["REGISTRY", "LayerInputs", "Method", "register"]


@dataclass(frozen=True)
class LayerInputs:
    """What one forward (and at most one gradient) pass captured at one target layer.

    Attributes:
        activations: ``A``, the layer's output ``[B, K, h, w]`` in float32.
        gradients: ``G = d y^c / d A`` ``[B, K, h, w]`` in float32, or ``None`` when no requested
            method needs it.
        targets: the target class of each image ``[B]`` (int64).
        classifier_weight: ``W`` ``[num_classes, K]`` of the linear classifier after global
            pooling, or ``None`` when no requested method needs it.
    """

    activations: Tensor
    gradients: Tensor | None
    targets: Tensor
    classifier_weight: Tensor | None


@dataclass(frozen=True)
class Method:
    """A registered CAM method.

    Attributes:
        name: the name users pass to ``explain(methods=...)``.
        compute: ``LayerInputs -> [B, h, w]`` map before ReLU.
        needs_gradients: whether the pass must compute ``G``.
        needs_classifier: whether the pass must find the classifier's weights.
    """

    name: str
    compute: Callable[[LayerInputs], Tensor]
    needs_gradients: bool = False
    needs_classifier: bool = False


REGISTRY: dict[str, Method] = {}


def register(
    name: str, *, needs_gradients: bool = False, needs_classifier: bool = False
) -> Callable[[Callable[[LayerInputs], Tensor]], Callable[[LayerInputs], Tensor]]:
    """Register ``compute`` under ``name`` (a decorator)."""

    def decorate(compute: Callable[[LayerInputs], Tensor]) -> Callable[[LayerInputs], Tensor]:
        if name in REGISTRY:
            raise ValueError(f"a CAM method named {name!r} is already registered")
        REGISTRY[name] = Method(name, compute, needs_gradients, needs_classifier)
        return compute

    return decorate
