"""The model-randomisation sanity check (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

A map that barely changes when the model's weights are replaced by random ones says more about
the image (edges) than about the model. The check explains the images with the model and with a
**copy** whose learnable layers are re-initialised from the output down to the input (cascading),
and gives the Spearman rank correlation per image between the two maps: **low is trustworthy**.
The model, its gradients and buffers, and every RNG state are left exactly as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.engine import explain_batch
from lightning_cam.engine.capture import preserved_rng
from lightning_cam.engine.layers import TargetLayer
from lightning_cam.engine.layouts import ReshapeTransform
from lightning_cam.engine.logits import OutputKey
from lightning_cam.engine.targets import Targets
from lightning_cam.metrics.attention import flat_maps

__all__ = ["learnable_layers", "model_randomization", "spearman"]


def learnable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters and can ``reset_parameters()``, from the output down
    (the reverse of their registration order, which is the order of the forward for most models)."""
    names = [
        name
        for name, module in model.named_modules()
        if callable(getattr(module, "reset_parameters", None))
        and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``[B, N]`` (from 0) of each row's values, tied values sharing their mean rank."""
    flat = values.flatten(1).double()
    sorted_values, order = flat.sort(dim=1, stable=True)
    rows, length = flat.shape
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = new_group.cumsum(dim=1) - 1 + torch.arange(rows, device=flat.device)[:, None] * length
    positions = torch.arange(length, device=flat.device, dtype=flat.dtype).expand(rows, length)
    total = torch.zeros(rows * length, device=flat.device, dtype=flat.dtype).index_add_(
        0, group.flatten(), positions.flatten()
    )
    size = torch.zeros_like(total).index_add_(0, group.flatten(), torch.ones_like(positions).flatten())
    mean_rank = (total / size.clamp(min=1))[group]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman's rank correlation per image of maps ``[B, H, W]`` (ties get their mean rank). A
    flat (all-zero) reference map ``first`` has no ranking and is no evidence: NaN. A structured
    reference whose ``second`` map is flat (a randomised model's map that lost all structure) shares
    no ranking with it: 0, the strongest evidence the sanity check gives. A constant map above zero
    correlates 1 with an equal map and 0 with any other."""
    a, b = average_ranks(first), average_ranks(second)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    correlation = (a * b).sum(dim=1) / torch.where(norms > 0, norms, 1.0)
    same = (first.flatten(1) == second.flatten(1)).all(dim=1)
    correlation = torch.where(norms > 0, correlation, same.double()).float()
    return torch.where(flat_maps(first), torch.full_like(correlation, float("nan")), correlation)


def _seed(seed: int, device: torch.device) -> None:
    """Seed the generators ``reset_parameters`` draws from: the CPU's, and CUDA's when the model is
    there (CUDA is then initialised, so :func:`preserved_rng` restores it; an uninitialised CUDA is
    never seeded, which would queue a seed for its later start)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def _layer_in_copy(model: nn.Module, target_layer: TargetLayer) -> TargetLayer:
    """``target_layer`` with modules of ``model`` given by their names, so it also names the copy's."""
    if isinstance(target_layer, nn.Module):
        return next(name for name, module in model.named_modules() if module is target_layer)
    if isinstance(target_layer, (list, tuple)):
        return [_layer_in_copy(model, layer) for layer in target_layer]  # type: ignore[misc]
    return target_layer


def model_randomization(
    model: nn.Module,
    images: Tensor,
    methods: str | Sequence[str] = "gradcam",
    target_layer: TargetLayer = "auto",
    targets: Targets = None,
    *,
    seed: int = 0,
    curve: bool = False,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    output_key: OutputKey = None,
    reshape_transform: ReshapeTransform = "auto",
    **options: Any,
) -> dict[str, Tensor]:
    """Spearman correlation per image ``{method: [B]}`` between the maps of ``model`` and of a copy with
    every learnable layer re-initialised (seeded). With ``curve=True``: ``{method: [L, B]}``, row
    ``i`` after re-initialising the ``i + 1`` layers nearest the output (:func:`learnable_layers`
    order), so the last row is the final value. The targets are the model's own (the predicted
    class where ``targets`` is ``None``) for both. ``options`` and ``method_options`` go to
    :func:`~lightning_cam.explain_batch`.

    Example::

        >>> model_randomization(trained_model, images, ("gradcam", "guided_backprop"))  # doctest: +SKIP
        {"gradcam": tensor([0.12, 0.05]), "guided_backprop": tensor([0.91, 0.88])}
    """
    reference = explain_batch(
        model, images, methods, target_layer, targets, options=options, method_options=method_options
    )
    classes, layer = reference.targets, _layer_in_copy(model, target_layer)
    device = next((p.device for p in model.parameters()), images.device)
    names = learnable_layers(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no layer with parameters and reset_parameters(); nothing to randomise."
        )
    stages = range(1, len(names) + 1) if curve else [len(names)]
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    rows: dict[str, list[Tensor]] = {name: [] for name in reference.maps}
    done = 0
    for stage in stages:
        with preserved_rng():
            for index in range(
                done, stage
            ):  # layer i always gets seed + i: the cascade ends where "all at once" does
                _seed(seed + index, device)
                modules[names[index]].reset_parameters()
        done = stage
        maps = explain_batch(
            randomized, images, methods, layer, classes, options=options, method_options=method_options
        ).maps
        for name, value in maps.items():
            rows[name].append(spearman(reference.maps[name], value))
    del randomized
    return {name: torch.stack(values) if curve else values[0] for name, values in rows.items()}
