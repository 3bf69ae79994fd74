"""The method registry: every CAM method is a small pure function registered by name.

There are four kinds of method, by what they are a function of:

- ``layer`` methods receive a :class:`LayerInputs` (what the engine's single guarded pass
  captured at one target layer) and return a map ``[B, h, w]`` before ReLU; with several target
  layers the engine fuses their normalised maps.
- ``input`` methods receive an :class:`InputInputs` (gradients with respect to the input pixels)
  and return a map ``[B, H, W]`` at input resolution.
- ``combined`` methods are a function of other methods' normalised maps (``requires``).
- ``attention`` methods receive an :class:`AttentionInputs` (the head-mean attention of every
  self-attention block, and with ``needs_attention_gradients`` each block's gradient-weighted
  attention) and return a map ``[B, h, w]`` over the patch grid; they need no target layer.

The engine asks for gradients, the classifier or guided ReLUs only when a requested method
needs them, and does the rest (ReLU, upsampling, normalisation) once for all methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "REGISTRY",
    "AttentionInputs",
    "InputInputs",
    "LayerInputs",
    "Method",
    "at_least_float32",
    "needs_float_images",
    "register",
]


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half and bfloat16 tensors as float32; float32 and float64 as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


@dataclass(frozen=True)
class LayerInputs:
    """What one forward (and at most one gradient) pass captured at one target layer.

    Attributes:
        activations: ``A``, the layer's output ``[B, K, h, w]`` in float32 (float64 for a float64 model).
        gradients: ``G = d y^c / d A`` ``[B, K, h, w]``, same dtype, or ``None`` when no requested
            method needs it.
        targets: the target class of each image ``[B]`` (int64).
        classifier_weight: ``W`` ``[num_classes, K]`` of the linear classifier after global
            pooling, or ``None`` when no requested method needs it.
        model: the model, for methods that run further forward passes (in eval mode, inside the
            state guard, with no hook of the engine attached).
        images: the model's input ``[B, C, H, W]`` (the model's dtype, no autograd history).
        layer: the target layer module.
        layer_name: its dotted name.
        logits: the model's output of the pass (at least float32, detached).
        output_key: how to find the prediction in the model's output (see ``select_output``).
        scorer: turns an output into the explained scores (and probabilities), per image or per row.
        scores: the explained score of each image ``[B]`` (at least float32, detached).
        layout: how the layer's own output maps to ``[B, K, h, w]`` (and back, for methods that
            write activations into the layer).
    """

    activations: Tensor
    gradients: Tensor | None
    targets: Tensor
    classifier_weight: Tensor | None = None
    model: nn.Module | None = None
    images: Tensor | None = None
    layer: nn.Module | None = None
    layer_name: str = ""
    logits: Tensor | None = None
    output_key: Any = None
    scorer: Any = None
    scores: Tensor | None = None
    layout: Any = None


@dataclass(frozen=True)
class InputInputs:
    """Gradients of the target scores with respect to the input pixels ``[B, C, H, W]`` (float32).

    Attributes:
        gradients: plain gradients, or ``None`` when no requested method needs them.
        guided_gradients: gradients with every ReLU passing only positive gradients, or ``None``.
    """

    gradients: Tensor | None
    guided_gradients: Tensor | None


@dataclass(frozen=True)
class AttentionInputs:
    """What the shared pass captured at every self-attention block, in the order the blocks ran.

    Attributes:
        attentions: per block, the attention probabilities averaged over heads ``[B, N, N]`` (float32).
        relevances: per block, ``mean over heads of (dS/dA * A) clamped at 0`` ``[B, N, N]`` (Chefer et
            al. 2021, ``S`` the explained scores), or ``None`` when no requested method needs gradients.
        prefix: how many tokens precede the patch tokens (class, distillation, register tokens).
        grid: the patch grid ``(h, w)``; the patch tokens follow the prefix in row-major order.
        class_token: whether the model predicts from token 0 (its class token); if not (average-pooled
            transformers), a map reads the mean of every token's row instead of the class token's row.
    """

    attentions: list[Tensor]
    relevances: list[Tensor] | None
    prefix: int
    grid: tuple[int, ...]
    class_token: bool


@dataclass(frozen=True)
class Method:
    """A registered CAM method.

    Attributes:
        name: the name users pass to ``explain(methods=...)``.
        compute: the method's function (see the module docstring for each ``kind``).
        kind: ``"layer"``, ``"input"``, ``"combined"`` or ``"attention"``.
        needs_gradients: whether the pass must compute ``G`` at the target layer.
        needs_classifier: whether the pass must find the classifier's weights.
        needs_input_gradients: whether the pass must compute plain input gradients.
        needs_guided_gradients: whether the pass must compute guided input gradients.
        needs_attention_gradients: whether the pass must compute each attention block's gradient.
        perturbs_input: whether it feeds the model images it changed (Score-CAM), so it needs float images.
        reruns_model: whether it runs further batched forwards of the model (Score-CAM, Ablation-CAM).
        requires: for ``combined`` methods, the methods whose maps it combines.
        options: the keyword options ``compute`` accepts, with their defaults.
    """

    name: str
    compute: Callable[..., Tensor]
    kind: Literal["layer", "input", "combined", "attention"] = "layer"
    needs_gradients: bool = False
    needs_classifier: bool = False
    needs_input_gradients: bool = False
    needs_guided_gradients: bool = False
    needs_attention_gradients: bool = False
    perturbs_input: bool = False
    reruns_model: bool = False
    requires: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, Method] = {}


def needs_float_images(method: Method) -> bool:
    """Whether ``method`` needs floating-point images: it differentiates with respect to them (guided
    backprop, saliency) or changes them (Score-CAM); the others also explain ``uint8`` images."""
    return method.kind in ("input", "combined") or method.perturbs_input


def register(name: str, **properties: Any) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``compute`` under ``name`` (a decorator); ``properties`` are :class:`Method` fields."""

    def decorate(compute: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in REGISTRY:
            raise ValueError(f"a CAM method named {name!r} is already registered")
        REGISTRY[name] = Method(name, compute, **properties)
        return compute

    return decorate
