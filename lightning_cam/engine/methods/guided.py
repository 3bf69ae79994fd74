"""Pixel-level methods: saliency, guided backprop and Guided Grad-CAM, at input resolution.

Guided backprop (Springenberg et al., 2015) changes the backward pass of every ReLU so that it
passes only positive gradients (where the ReLU's input was positive, as a plain ReLU already
does). :func:`guided_relus` does this without touching the model: a ``TorchFunctionMode``
wraps the result of every ReLU call, whether it comes from an ``nn.ReLU`` module (shared or
in-place, as in torchvision's ResNet) or from ``F.relu`` / ``torch.relu`` in a ``forward``, in an
autograd function that is the identity going forward and, while its switch is on, clamps the
gradient at zero going back. With the switch off the gradient is unchanged, so one forward pass
serves both the plain gradients (Grad-CAM, saliency) and the guided ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.overrides import TorchFunctionMode

from lightning_cam.engine.methods.registry import InputInputs, register

__all__ = ["GuidedSwitch", "guided_backprop", "guided_gradcam", "guided_relus", "saliency"]

_RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
_OTHER_ACTIVATIONS = frozenset(
    {
        F.gelu,
        F.silu,
        F.elu,
        F.selu,
        F.celu,
        F.leaky_relu,
        F.mish,
        F.hardswish,
        F.hardtanh,
        F.softplus,
        torch.sigmoid,
        torch.tanh,
    }
)


@dataclass
class GuidedSwitch:
    """Whether the guided ReLUs clamp gradients now, and which other activations the model used."""

    guided: bool = False
    other_activations: set[str] = field(default_factory=set)


class _GuidedReLUGradient(torch.autograd.Function):
    """Identity forward (a copy, so later in-place ops cannot touch the ReLU's own output);
    backward clamps the gradient at zero while ``switch.guided`` is on."""

    @staticmethod
    def forward(ctx: Any, relu_output: Tensor, switch: GuidedSwitch) -> Tensor:
        ctx.switch = switch
        return relu_output.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return (grad_output.clamp(min=0) if ctx.switch.guided else grad_output), None


class _GuidedReLUMode(TorchFunctionMode):
    def __init__(self, switch: GuidedSwitch) -> None:
        super().__init__()
        self.switch = switch

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if func in _RELUS and isinstance(result, Tensor) and result.requires_grad:
            return _GuidedReLUGradient.apply(result, self.switch)
        if func in _OTHER_ACTIVATIONS:
            self.switch.other_activations.add(getattr(func, "__name__", str(func)))
        return result


@contextmanager
def guided_relus(enabled: bool = True) -> Iterator[GuidedSwitch]:
    """Within the block, every ReLU's gradient can be switched to guided (``switch.guided = True``)."""
    switch = GuidedSwitch()
    if not enabled:
        yield switch
        return
    with _GuidedReLUMode(switch):
        yield switch


@register("saliency", kind="input", needs_input_gradients=True)
def saliency(inputs: InputInputs) -> Tensor:
    """Saliency (Simonyan et al., 2014): ``max over input channels of |d y^c / d X|``."""
    assert inputs.gradients is not None
    return inputs.gradients.abs().amax(dim=1)


@register("guided_backprop", kind="input", needs_guided_gradients=True)
def guided_backprop(inputs: InputInputs) -> Tensor:
    """Guided backpropagation: saliency with every ReLU's backward passing only positive gradients."""
    assert inputs.guided_gradients is not None
    return inputs.guided_gradients.abs().amax(dim=1)


@register("guided_gradcam", kind="combined", requires=("guided_backprop", "gradcam"))
def guided_gradcam(maps: Mapping[str, Tensor]) -> Tensor:
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop times Grad-CAM, both at input resolution."""
    return maps["guided_backprop"] * maps["gradcam"]
