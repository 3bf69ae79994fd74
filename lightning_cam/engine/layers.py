"""Resolving ``target_layer``: ``"auto"``, a dotted module name, a module, or a list of these."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches

from torch import Tensor, nn

from lightning_cam.engine.auto_layer import conv_layer_names, find_auto_layer
from lightning_cam.engine.layouts import ReshapeTransform
from lightning_cam.engine.logits import OutputKey

__all__ = ["TargetLayer", "find_auto_layer", "resolve_target_layers"]

TargetLayer = str | nn.Module | Sequence[str | nn.Module]


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


def resolve_target_layers(
    model: nn.Module,
    target_layer: TargetLayer,
    sample: Tensor | list[Tensor],
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
