"""Resolving ``target_layer``: ``"auto"``, a dotted module name, a module, or a list of these."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import ForwardHook, forward_hooks
from lightning_cam.engine.layouts import Layout, ReshapeTransform, infer_layout
from lightning_cam.engine.logits import OutputKey, select_output

__all__ = ["TargetLayer", "find_auto_layer", "resolve_target_layers"]

TargetLayer = str | nn.Module | Sequence[str | nn.Module]

_POOLING = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.LPPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool3d,
    nn.MaxPool3d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)

# "auto" costs one probing forward of a single image; remember the answer per model and input shape.
_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], str]] = weakref.WeakKeyDictionary()


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


@dataclass
class _Probe:
    """One module's output in the probing forward, in the order the modules finished."""

    name: str
    module: nn.Module
    output: Tensor
    input_shape: tuple[int, ...] | None
    layout: Layout | None = None


def _probe(model: nn.Module, sample: Tensor, output_key: OutputKey) -> tuple[list[_Probe], Tensor | None]:
    """Every named module's tensor output for one image, and a score to differentiate (the largest
    element of the model's output: the predicted class's logit for a classifier)."""
    named = [(name, module) for name, module in model.named_modules() if name]  # not the model itself
    probes: list[_Probe] = []

    def hook_for(index: int) -> ForwardHook:
        def record(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if isinstance(output, Tensor) and output.dim() >= 3 and output.shape[0] == 1:
                first = next((x for x in inputs if isinstance(x, Tensor)), None)
                probes.append(
                    _Probe(named[index][0], module, output, None if first is None else tuple(first.shape))
                )

        return record

    with forward_hooks([module for _, module in named], hook_for), torch.enable_grad():
        output = select_output(model(sample[:1]), output_key)
        score = output.flatten().max() if isinstance(output, Tensor) and output.requires_grad else None
    return probes, score


def _cnn_choice(probes: list[_Probe]) -> str | None:
    """The last module with a channels-first spatial output that is not a pooling layer's (or a
    container returning a pooling layer's output)."""
    resampled: list[Tensor] = []
    chosen = None
    for probe in probes:
        if isinstance(probe.module, _POOLING):
            resampled.append(probe.output)
        elif _spatial_grid(probe) and not any(probe.output is other for other in resampled):
            chosen = probe.name
    return chosen


def _spatial_grid(probe: _Probe) -> bool:
    layout = probe.layout
    return (
        layout is not None and layout.kind == "grid" and probe.output.dim() in (4, 5) and max(layout.grid) > 1
    )


def _is_block(probe: _Probe, parents: dict[str, nn.Module]) -> bool:
    """A repeated block of a transformer: a shape-keeping module among siblings of its own type."""
    parent = parents.get(probe.name.rpartition(".")[0])
    siblings = [] if parent is None else [c for c in parent.children() if type(c) is type(probe.module)]
    return (
        len(siblings) > 1
        and probe.input_shape == tuple(probe.output.shape)
        and any(True for _ in probe.module.children())
    )


def _transformer_choice(model: nn.Module, probes: list[_Probe], score: Tensor) -> str | None:
    """The first shape-keeping layer of the last block whose patch positions carry the score's
    gradient (ViT / DeiT: the last block's first norm; Swin: the last block's ``norm1``)."""
    spatial = [p for p in probes if p.layout is not None and p.layout.kind in ("tokens", "channels_last")]
    with torch.enable_grad():
        gradients = torch.autograd.grad(
            score, [p.output for p in spatial], allow_unused=True, retain_graph=True
        )
    carrying = [
        p
        for p, g in zip(spatial, gradients, strict=True)
        if g is not None and bool(p.layout.to_grid(g).abs().sum() > 0)
    ]
    parents = dict(model.named_modules())
    blocks = [p for p in spatial if _is_block(p, parents)]
    blocks = [
        b for b in blocks if not any(other.name.startswith(b.name + ".") for other in blocks)
    ]  # innermost
    if blocks:
        last = blocks[-1]
        inside = [
            p
            for p in carrying
            if p.name.startswith(last.name + ".") and tuple(p.output.shape) == last.input_shape
        ]
        if inside:
            return inside[0].name
    return carrying[-1].name if carrying else None


def find_auto_layer(
    model: nn.Module,
    sample: Tensor,
    reshape_transform: ReshapeTransform = "auto",
    output_key: OutputKey = None,
) -> str:
    """The target layer ``"auto"`` picks, from one probing forward of one image (cached per model,
    input shape and ``reshape_transform``; the caller holds the state guard).

    One rule for every model: among the layers whose output reads as a spatial layout
    (:func:`~lightning_cam.engine.layouts.infer_layout`), a transformer (token or channels-last outputs)
    gets the first shape-keeping layer inside its last repeated block whose patch positions carry
    the gradient of the predicted score (ViT and DeiT: the last block's first norm; Swin: its
    ``norm1``), never a patch embedding; a CNN gets its last channels-first layer with a spatial
    size above 1 that is not a pooling layer (``layer4`` on ResNets, the last ReLU on VGG).
    """
    cache = _AUTO_CACHE.setdefault(model, {})
    key = (
        tuple(sample.shape[1:]),
        reshape_transform if isinstance(reshape_transform, str) else id(reshape_transform),
    )
    if key in cache:
        return cache[key]
    probes, score = _probe(model, sample, output_key)
    size = tuple(sample.shape[2:])
    for probe in probes:
        try:
            probe.layout = infer_layout(
                probe.output, size, model, probe.module, probe.name, reshape_transform
            )
        except ValueError:
            probe.layout = None
    transformer = any(p.layout is not None and p.layout.kind in ("tokens", "channels_last") for p in probes)
    chosen = (
        _transformer_choice(model, probes, score)
        if transformer and score is not None
        else _cnn_choice(probes)
    )
    if chosen is None:
        raise ValueError(
            f"target_layer='auto' found no layer of {type(model).__name__} with a spatial output for inputs of "
            f"shape {list(sample.shape[1:])}. Name the layer explicitly; convolution layers: "
            f"{', '.join(conv_layer_names(model)[-8:]) or 'none'}."
        )
    cache[key] = chosen
    return chosen


def resolve_target_layers(
    model: nn.Module,
    target_layer: TargetLayer,
    sample: Tensor,
    reshape_transform: ReshapeTransform = "auto",
    output_key: OutputKey = None,
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
        name = find_auto_layer(model, sample, reshape_transform, output_key) if layer == "auto" else layer
        if name not in modules or name == "":
            raise ValueError(_unknown_layer_message(model, name))
        resolved.append((name, modules[name]))
    return resolved
