"""Resolving ``target_layer``: ``"auto"``, a dotted module name, a module, or a list of these."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from difflib import get_close_matches

import torch
from torch import Tensor, nn

from lightning_cam.capture import ForwardHook, forward_hooks

__all__ = ["TargetLayer", "find_auto_layer", "resolve_target_layers"]

TargetLayer = str | nn.Module | Sequence[str | nn.Module]

_POOLING = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.LPPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)

# "auto" costs one probing forward of a single image; remember the answer per model and input shape.
_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = weakref.WeakKeyDictionary()


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's convolution layers, the usual candidates for a target layer."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)]


def _unknown_layer_message(model: nn.Module, name: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = get_close_matches(name, names, n=5, cutoff=0.5)
    convs = conv_layer_names(model)
    shown = ", ".join(convs[-8:]) if convs else "none"
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return (
        f"target_layer {name!r} is not a module of {type(model).__name__}.{hint} "
        f"Its last convolution layers are: {shown}. Use 'auto', a dotted name from "
        f"model.named_modules(), or the module itself."
    )


def find_auto_layer(model: nn.Module, sample: Tensor) -> str:
    """The last module, in execution order, whose output is 4-D with a spatial size above 1.

    Pooling, flattening and identity layers only resample what came before them, so they are
    skipped, and so is a container whose output is such a layer's output (``vgg.features`` ends
    with a max-pool: its last ReLU is chosen). On torchvision's resnet18 this is ``layer4``.
    The probe runs one image under ``torch.no_grad()``; the caller holds the state guard.
    """
    cache = _AUTO_CACHE.setdefault(model, {})
    key = tuple(sample.shape[1:])
    if key in cache:
        return cache[key]
    named = [(name, module) for name, module in model.named_modules() if name]  # not the model itself
    candidates: list[str] = []
    resampled: list[Tensor] = []

    def hook_for(index: int) -> ForwardHook:
        name, module = named[index]

        def record(_module: nn.Module, _inputs: tuple[object, ...], output: object) -> None:
            if not isinstance(output, Tensor) or output.dim() != 4:
                return
            if isinstance(module, _POOLING):
                resampled.append(output)
            elif max(output.shape[2:]) > 1 and not any(output is other for other in resampled):
                candidates.append(name)

        return record

    with forward_hooks([module for _, module in named], hook_for), torch.no_grad():
        model(sample[:1])
    if not candidates:
        raise ValueError(
            f"target_layer='auto' found no layer of {type(model).__name__} with a 4-D output of spatial "
            f"size above 1 for inputs of shape {list(sample.shape[1:])}. Name the layer explicitly; "
            f"convolution layers: {', '.join(conv_layer_names(model)[-8:]) or 'none'}."
        )
    cache[key] = candidates[-1]
    return candidates[-1]


def resolve_target_layers(
    model: nn.Module, target_layer: TargetLayer, sample: Tensor
) -> list[tuple[str, nn.Module]]:
    """Turn ``target_layer`` into a list of ``(name, module)`` pairs of ``model``."""
    if isinstance(target_layer, (str, nn.Module)):
        requested: Sequence[str | nn.Module] = [target_layer]
    elif isinstance(target_layer, Sequence) and len(target_layer) > 0:
        requested = target_layer
    else:
        raise ValueError(
            f"target_layer must be 'auto', a dotted module name, a module, or a non-empty list of these; "
            f"got {target_layer!r}."
        )
    modules = dict(model.named_modules())
    names = {module: name for name, module in modules.items()}
    resolved: list[tuple[str, nn.Module]] = []
    for layer in requested:
        if isinstance(layer, nn.Module):
            if layer not in names:
                raise ValueError(
                    f"the target_layer module {type(layer).__name__} is not part of {type(model).__name__}; "
                    f"pass one of its submodules or a name from model.named_modules()."
                )
            resolved.append((names[layer], layer))
            continue
        if not isinstance(layer, str):
            raise ValueError(f"target_layer entries must be names or modules; got {type(layer).__name__}.")
        name = find_auto_layer(model, sample) if layer == "auto" else layer
        if name not in modules or name == "":
            raise ValueError(_unknown_layer_message(model, name))
        resolved.append((name, modules[name]))
    return resolved
