"""Faithfulness: do the maps point at what drives the prediction?

- **Deletion / insertion** (Petsiuk et al., 2018, RISE): pixels are ranked by map value (highest
  first, ties by position); at ``counts = 0, s, 2s, ..., N`` (``s = ceil(N / steps)``) deletion
  replaces the top ``count`` pixels of the image by a baseline (zeros by default) and insertion
  starts from the baseline and restores them. The score is the target class's softmax
  probability; each curve's area under it (trapezoid rule over ``count / N``) is the result.
  A faithful map gives a **low deletion** AUC (the probability falls fast) and a **high
  insertion** AUC.
- **ROAD** (Rong et al., 2022, "Remove and Debias"): for each fraction ``f``, the top-``f`` pixels
  (MoRF) or the bottom-``f`` (LeRF) are removed and filled by noisy linear imputation (each
  removed pixel is the weighted mean of its 8 neighbours, 1/6 for edge and 1/12 for diagonal
  neighbours, solved jointly, plus Gaussian noise), which leaves no tell-tale hole for the model
  to react to. ``morf`` and ``lerf`` are the mean change of the target's softmax probability;
  ``combined = (lerf - morf) / 2``: **higher is more faithful**.

Every perturbed image of every method, image and step is built on the model's device and scored
in batched forwards, in chunks sized to a memory budget, inside the state guard (the model's
modes and the global RNG states are left as they were; ROAD's noise comes from its own seeded
generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lightning_cam.engine.capture import model_device_dtype, preserved_state
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.engine.methods.perturbation import default_chunk_size, run_in_chunks
from lightning_cam.engine.targets import Targets, make_scorer
from lightning_cam.metrics.attention import flat_maps

__all__ = ["deletion_insertion", "noisy_linear_imputation", "pixel_ranks", "road"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Maps = Tensor | Mapping[str, Tensor]


def pixel_ranks(maps: Tensor) -> Tensor:
    """``[..., N]``: each pixel's place when the map's pixels are sorted highest first (ties by position)."""
    order = torch.argsort(maps.flatten(-2), dim=-1, descending=True, stable=True)
    return torch.argsort(order, dim=-1)


def _flat_as_nan(stacked: Tensor, scores: Tensor) -> Tensor:
    """``scores`` ``[M, B]`` with NaN where the map is flat: it ranks no pixel above another (the order
    would be the pixels' positions), so its curve is no evidence."""
    flat = flat_maps(stacked.flatten(0, 1)).view(scores.shape).to(scores.device)
    return torch.where(flat, torch.full_like(scores, float("nan")), scores)


def _stacked(maps: Maps) -> tuple[list[str] | None, Tensor]:
    if isinstance(maps, Tensor):
        return None, maps[None]
    names = list(maps)
    return names, torch.stack([maps[name] for name in names])


def _scores(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    rows: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    output_key: OutputKey,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """The target's probability on the images and on each of ``rows`` perturbed images
    (``build(row indices) -> (images, image indices)``), in chunks."""
    device, dtype = model_device_dtype(model, images)
    with preserved_state(model, device.type), torch.inference_mode():
        images = images.to(device, dtype)
        output = select_output(model(images), output_key)
        scorer = make_scorer(targets, output)
        original = scorer.probability(output)

        def run(start: int, stop: int) -> Tensor:
            perturbed, image_index = build(torch.arange(start, stop, device=device))
            return scorer.probability(select_output(model(perturbed.to(dtype)), output_key), image_index)

        chunk = chunk_size or default_chunk_size(images[0], rows)
        return original, run_in_chunks(rows, chunk, run, "faithfulness")


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    targets: Targets = None,
    steps: int = 20,
    baseline: Tensor | None = None,
    *,
    output_key: OutputKey = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor] | dict[str, tuple[Tensor, Tensor]]:
    """``(deletion_auc [B], insertion_auc [B])`` of ``maps`` ``[B, H, W]`` (or, for a dict of
    methods' maps, that pair per method, every method scored in the same batched forwards).

    ``targets``: the class per image (``None``: the predicted one); ``baseline``: what deleted
    pixels become, broadcastable to ``images`` (zeros by default).

    Example::

        >>> maps = lc.explain(model, images, ("gradcam", "scorecam"))  # doctest: +SKIP
        >>> scores = deletion_insertion(model, images, maps)  # {"gradcam": (deletion, insertion), ...}
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    names, stacked = _stacked(maps)
    methods, batch, (height, width) = stacked.shape[0], images.shape[0], images.shape[-2:]
    pixels = height * width
    step = math.ceil(pixels / steps)
    counts = [*range(0, pixels, step), pixels]
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device))  # [M, B, N]
    flat = images.to(device).flatten(2)
    base = (
        (torch.zeros_like(images) if baseline is None else baseline.expand_as(images)).to(device).flatten(2)
    )
    count_of = torch.tensor(counts, device=device)
    per_method = batch * len(counts) * 2

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        method, rest = rows // per_method, rows % per_method
        image, point, insertion = rest // (2 * len(counts)), (rest // 2) % len(counts), rest % 2 == 1
        top = ranks[method, image] < count_of[point][:, None]  # [n, N]
        keep = (top == insertion[:, None])[:, None]
        perturbed = torch.where(keep, flat[image], base[image])
        return perturbed.view(-1, *images.shape[1:]), image

    _, scores = _scores(model, images, targets, methods * per_method, build, output_key, chunk_size)
    curves = scores.view(methods, batch, len(counts), 2)
    fractions = count_of.to(curves.dtype) / pixels
    deletion = torch.trapezoid(curves[..., 0], fractions, dim=-1).to(images.device)
    insertion = torch.trapezoid(curves[..., 1], fractions, dim=-1).to(images.device)
    deletion, insertion = _flat_as_nan(stacked, deletion), _flat_as_nan(stacked, insertion)
    if names is None:
        return deletion[0], insertion[0]
    return {name: (deletion[i], insertion[i]) for i, name in enumerate(names)}


def road(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    targets: Targets = None,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = 0.01,
    *,
    output_key: OutputKey = None,
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor] | dict[str, dict[str, Tensor]]:
    """``{"morf": [B], "lerf": [B], "combined": [B]}`` for ``maps`` ``[B, H, W]`` (or that dict per
    method for a dict of maps). ``noise`` is the imputation noise's std, drawn from a generator
    seeded with ``seed`` (the global RNGs are not touched).

    Example::

        >>> road(model, images, maps["gradcam"])["combined"]  # doctest: +SKIP
        tensor([0.21, 0.08])
    """
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1), e.g. (0.1, ..., 0.9); got {fractions!r}.")
    names, stacked = _stacked(maps)
    methods, batch, (height, width) = stacked.shape[0], images.shape[0], images.shape[-2:]
    pixels = height * width
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device))
    removed_counts = torch.tensor([round(f * pixels) for f in fractions], device=device)
    inputs = images.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    per_method = batch * len(fractions) * 2

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        method, rest = rows // per_method, rows % per_method
        image, fraction, lerf = rest // (2 * len(fractions)), (rest // 2) % len(fractions), rest % 2 == 1
        count = removed_counts[fraction][:, None]
        rank = ranks[method, image]
        removed = torch.where(lerf[:, None], rank >= pixels - count, rank < count).view(-1, height, width)
        return noisy_linear_imputation(inputs[image], removed, noise, generator), image

    original, scores = _scores(model, images, targets, methods * per_method, build, output_key, chunk_size)
    change = (scores.view(methods, batch, len(fractions), 2) - original.view(1, batch, 1, 1)).mean(dim=2)
    morf, lerf = (_flat_as_nan(stacked, change[..., i].to(images.device)) for i in (0, 1))
    results = [
        {"morf": morf[i], "lerf": lerf[i], "combined": (lerf[i] - morf[i]) / 2} for i in range(methods)
    ]
    return results[0] if names is None else dict(zip(names, results, strict=True))


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-5,
) -> Tensor:
    """Fill the ``removed`` pixels (``[n, H, W]`` bool) of ``images`` ``[n, C, H, W]``: each removed
    pixel equals the weighted mean of its in-image 8 neighbours (1/6 edge, 1/12 diagonal), all
    removed pixels of all images and channels solved jointly by preconditioned conjugate gradients
    (the system is symmetric positive definite wherever an image keeps a pixel), to a relative
    residual of ``tolerance``, starting from the same problem solved at half the resolution (so a
    large removed block costs few iterations); then Gaussian noise of std ``noise`` on the filled
    pixels."""
    dtype = torch.promote_types(images.dtype, torch.float32)
    mask = removed[:, None].to(dtype)
    filled = _impute(images.to(dtype), mask, tolerance)
    if noise > 0:
        filled = filled + noise * torch.randn(
            filled.shape, generator=generator, device=filled.device, dtype=dtype
        )
    return torch.where(mask > 0, filled, images.to(dtype)).to(images.dtype)


def _neighbour_sum(x: Tensor) -> Tensor:
    """Each pixel's in-image neighbours weighted 1/6 (edges) and 1/12 (diagonals); zero outside."""
    p = F.pad(x, (1, 1, 1, 1))
    edges = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    diagonals = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return edges / 6 + diagonals / 12


def _impute(values: Tensor, mask: Tensor, tolerance: float) -> Tensor:
    """The images with their removed pixels (``mask`` ``[n, 1, H, W]``, 1 = removed) solved for;
    the initial guess is the half-resolution solution, upsampled (cascadic multigrid)."""
    height, width = values.shape[-2:]
    known = 1 - mask
    if min(height, width) >= 16:
        pooled_known = F.avg_pool2d(known, 2, ceil_mode=True)
        coarse = F.avg_pool2d(values * known, 2, ceil_mode=True) / pooled_known.clamp(min=1e-12)
        coarse = _impute(coarse, (pooled_known == 0).to(mask.dtype), tolerance)
        guess = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    else:
        guess = (values * known).sum((-2, -1), keepdim=True) / known.sum((-2, -1), keepdim=True).clamp(min=1)
        guess = guess.expand_as(values)
    weights = _neighbour_sum(torch.ones(1, 1, height, width, dtype=values.dtype, device=values.device))
    right = mask * _neighbour_sum(values * known)
    solution = _conjugate_gradients(
        lambda u: mask * (weights * u - _neighbour_sum(u)), right, weights, tolerance, guess * mask
    )
    return torch.where(mask > 0, solution, values)


def _conjugate_gradients(
    operator: Callable[[Tensor], Tensor], right: Tensor, diagonal: Tensor, tolerance: float, initial: Tensor
) -> Tensor:
    """Solve ``operator(x) = right`` for every ``[H, W]`` system of ``right`` ``[n, C, H, W]`` at once
    (Jacobi-preconditioned CG from ``initial``); convergence is checked every 8 iterations (one host
    sync each)."""

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(dim=(-2, -1), keepdim=True)

    solution = initial.clone()
    residual = right - operator(solution)
    preconditioned = residual / diagonal
    direction, rz = preconditioned.clone(), dot(residual, preconditioned)
    limit = tolerance * right.flatten(-2).norm(dim=-1)[..., None, None].clamp(min=1e-30)
    for iteration in range(10 * (right.shape[-1] + right.shape[-2]) + 100):
        applied = operator(direction)
        curvature = dot(direction, applied)
        alpha = torch.where(curvature > 0, rz / torch.where(curvature > 0, curvature, 1.0), 0.0)
        solution += alpha * direction
        residual -= alpha * applied
        if iteration % 8 == 7 and bool((residual.flatten(-2).norm(dim=-1)[..., None, None] <= limit).all()):
            break
        preconditioned = residual / diagonal
        rz_next = dot(residual, preconditioned)
        direction = (
            preconditioned + torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1.0), 0.0) * direction
        )
        rz = rz_next
    return solution
