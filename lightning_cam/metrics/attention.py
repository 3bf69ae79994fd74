"""Attention metrics: numbers that show maps change over training and land on a shortcut.

Each metric is a small batched torch function of maps ``[B, H, W]`` (in ``[0, 1]``, as
``explain`` returns them) and, where needed, binary region masks ``[B, H, W]`` (the object, or a
known cue). The maps are first normalised to sum 1 per image (:func:`as_distribution`), so a map
is read as where its attention *mass* goes. Per-image values are returned; average them with
:func:`nanmean` (images whose mask is empty give NaN and are left out). A flat map (no value above
zero, :func:`flat_maps`) is no evidence: every per-image metric of it is NaN, so it is left out of
every mean instead of reading as a uniform map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import model_device_dtype, preserved_state
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.engine.targets import Scorer, make_scorer

__all__ = [
    "as_distribution",
    "average_drop",
    "class_mean_maps",
    "drift",
    "enrichment",
    "flat_maps",
    "increase_in_confidence",
    "masked_confidence",
    "mass_in_mask",
    "nanmean",
    "pointing_game",
    "slice_means",
]


def _flat(maps: Tensor) -> Tensor:
    return maps.reshape(maps.shape[0], -1).to(torch.promote_types(maps.dtype, torch.float32))


def flat_maps(maps: Tensor) -> Tensor:
    """Which maps ``[B, ...]`` are flat ``[B]``: no value above zero, so no evidence anywhere."""
    return _flat(maps).amax(dim=1) <= 0


def as_distribution(maps: Tensor) -> Tensor:
    """``M / sum(M)`` per image, flattened to ``[B, H*W]``; a flat map has no mass anywhere: its row is
    NaN (never a uniform map, which would read as "no bias")."""
    flat = _flat(maps).clamp(min=0)
    total = flat.sum(dim=1, keepdim=True)
    return flat / torch.where(total > 0, total, float("nan"))


def nanmean(values: Tensor) -> Tensor:
    """The mean of the non-NaN values, as a 0-d tensor on their device (NaN when there are none)."""
    return torch.nanmean(values.float())


def drift(current: Tensor, previous: Tensor) -> Tensor:
    """``1 - pearson(M_t, M_{t-1})`` per image: 0 for the same attention, up to 2 for its opposite.

    A map without spread (all equal values) correlates 1 with an equal map and 0 with any other; NaN
    where either map is flat (all zero: no attention to compare).
    """
    a, b = _flat(current), _flat(previous)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    correlation = (a * b).sum(dim=1) / torch.where(norms > 0, norms, 1.0)
    same = (_flat(current) == _flat(previous)).all(dim=1)
    correlation = torch.where(norms > 0, correlation, same.to(correlation.dtype))
    undefined = flat_maps(current) | flat_maps(previous)
    return torch.where(undefined, torch.full_like(correlation, float("nan")), 1 - correlation)


def mass_in_mask(maps: Tensor, masks: Tensor) -> Tensor:
    """``sum(M * R)`` per image: the share of the map's mass inside the region ``R`` (Wang et al.,
    2020, "energy-based pointing game"). NaN where ``R`` is empty or the map is flat."""
    region = _flat(masks) > 0.5
    mass = (as_distribution(maps) * region).sum(dim=1)
    return torch.where(region.any(dim=1), mass, torch.full_like(mass, float("nan")))


def enrichment(maps: Tensor, masks: Tensor) -> Tensor:
    """Mass in mask divided by the mask's share of the image area: 1 for a uniform map, above 1 where
    the map concentrates on ``R``. NaN where ``R`` is empty or the map is flat."""
    area = (_flat(masks) > 0.5).float().mean(dim=1)
    return mass_in_mask(maps, masks) / area


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """1 where the map's maximum falls inside ``R``, else 0 (Zhang et al., 2016); NaN where ``R`` is
    empty or the map is all zeros (it points nowhere)."""
    flat, region = _flat(maps), _flat(masks) > 0.5
    hit = region.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1).float()
    defined = region.any(dim=1) & (flat.amax(dim=1) > 0)
    return torch.where(defined, hit, torch.full_like(hit, float("nan")))


def average_drop(confidence: Tensor, masked_confidence: Tensor) -> Tensor:
    """Per image ``max(0, Y - O) / Y`` (Chattopadhyay et al., 2018, Grad-CAM++): ``Y`` the class
    probability on the image, ``O`` on the image multiplied by its map. Lower is better. (The image
    times a flat map is black: see :func:`masked_confidence`, which gives NaN for it.)"""
    return (confidence - masked_confidence).clamp(min=0) / confidence


def increase_in_confidence(confidence: Tensor, masked_confidence: Tensor) -> Tensor:
    """Per image ``1`` if ``O > Y`` else ``0`` (Grad-CAM++'s "increase in confidence")."""
    return (masked_confidence > confidence).float()


def masked_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Mapping[str, Tensor],
    targets: Tensor | Scorer,
    output_key: OutputKey = None,
) -> dict[str, Tensor]:
    """The target's probability on ``images * map`` for every method's maps, in **one** batched
    forward (under the state guard, in inference mode); NaN for a flat map (it masks everything).
    ``targets``: class indices ``[B]`` (softmax probabilities) or the
    :class:`~lightning_cam.engine.targets.Scorer` of an explanation."""
    names = list(maps)
    if not names:
        return {}
    device, dtype = model_device_dtype(model, images)
    with preserved_state(model, device.type), torch.inference_mode():
        batch = torch.cat([images * maps[name][:, None].to(images) for name in names]).to(device, dtype)
        output = select_output(model(batch), output_key)
        scorer = (
            targets if isinstance(targets, Scorer) else make_scorer(targets.to(device), output[: len(images)])
        )
        rows = torch.arange(len(images), device=device).repeat(len(names))
        chosen = scorer.probability(output, rows).to(images.device)
    flat = torch.cat([flat_maps(maps[name]).to(images.device) for name in names])
    chosen = torch.where(flat, torch.full_like(chosen, float("nan")), chosen)
    return dict(zip(names, chosen.chunk(len(names)), strict=True))


def class_mean_maps(maps: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The mean map of each class's images ``[num_classes, H, W]`` (``[num_classes, D, H, W]`` for
    volumes) and which classes have images."""
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(maps.dtype)  # [B, C]
    counts = one_hot.sum(dim=0)
    sums = torch.einsum("bc,b...->c...", one_hot, maps)
    return sums / counts.clamp(min=1).view(-1, *([1] * (maps.dim() - 1))), counts > 0


def slice_means(values: Tensor, membership: Tensor) -> Tensor:
    """The NaN-ignoring mean of per-image ``values`` ``[B]`` over each slice of images
    (``membership`` ``[S, B]`` bool): ``[S]``, NaN for a slice without a defined value."""
    defined = membership & ~values.isnan()[None]
    sums = torch.where(defined, values[None], torch.zeros_like(values[None])).sum(dim=1)
    counts = defined.sum(dim=1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
