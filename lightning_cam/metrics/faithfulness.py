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

Both run on images ``[B, C, H, W]`` with maps ``[B, H, W]`` and on volumes ``[B, C, D, H, W]`` with
maps ``[B, D, H, W]`` (voxels ranked alike; ROAD's imputation in 3-D weighs the 6 face, 12 edge
and 8 corner neighbours 4 : 2 : 1, as the 2-D weights 1/6 : 1/12 weigh edges and corners 2 : 1).

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


def pixel_ranks(maps: Tensor, dims: int = 2) -> Tensor:
    """``[..., N]``: each pixel's place when the map's pixels (its last ``dims`` axes: 2 for images, 3
    for volumes) are sorted highest first (ties by position)."""
    order = torch.argsort(maps.flatten(-dims), dim=-1, descending=True, stable=True)
    return torch.argsort(order, dim=-1)


def _flat_as_nan(stacked: Tensor, scores: Tensor) -> Tensor:
    """``scores`` ``[M, B]`` with NaN where the map is flat: it ranks no pixel above another (the order
    would be the pixels' positions), so its curve is no evidence."""
    flat = flat_maps(stacked.flatten(0, 1)).view(scores.shape).to(scores.device)
    return torch.where(flat, torch.full_like(scores, float("nan")), scores)


def _stacked(maps: Maps, images: Tensor) -> tuple[list[str] | None, Tensor]:
    """The maps as ``[M, B, *size]``; ``ValueError`` unless each is one map per image at its size."""
    if images.dim() not in (4, 5):
        raise ValueError(
            f"images must be [B, C, H, W] or volumes [B, C, D, H, W]; got shape {list(images.shape)}."
        )
    named = {"maps": maps} if isinstance(maps, Tensor) else dict(maps)
    expected = [images.shape[0], *images.shape[2:]]
    for name, value in named.items():
        if not isinstance(value, Tensor) or list(value.shape) != expected:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{name} must hold one map per image at the images' size, {expected}; got {got}. explain() returns "
                f"maps at the input's size; resize others with lightning_cam.engine.spatial.resize."
            )
    stacked = torch.stack(list(named.values()))
    return (None if isinstance(maps, Tensor) else list(named)), stacked


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
    """``(deletion_auc [B], insertion_auc [B])`` of ``maps`` ``[B, H, W]`` (volumes: ``[B, D, H, W]``;
    or, for a dict of methods' maps, that pair per method, every method scored in the same batched
    forwards).

    ``targets``: the class per image (``None``: the predicted one); ``baseline``: what deleted
    pixels become, broadcastable to ``images`` (zeros by default).

    Example::

        >>> maps = lc.explain(model, images, ("gradcam", "scorecam"))  # doctest: +SKIP
        >>> scores = deletion_insertion(model, images, maps)  # {"gradcam": (deletion, insertion), ...}
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    names, stacked = _stacked(maps, images)
    methods, batch, pixels = stacked.shape[0], images.shape[0], math.prod(images.shape[2:])
    step = math.ceil(pixels / steps)
    counts = [*range(0, pixels, step), pixels]
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device), images.dim() - 2)  # [M, B, N]
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
    """``{"morf": [B], "lerf": [B], "combined": [B]}`` for ``maps`` ``[B, H, W]`` (volumes: ``[B, D, H,
    W]``; or that dict per method for a dict of maps). ``noise`` is the imputation noise's std, drawn from a generator
    seeded with ``seed`` (the global RNGs are not touched).

    Example::

        >>> road(model, images, maps["gradcam"])["combined"]  # doctest: +SKIP
        tensor([0.21, 0.08])
    """
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1), e.g. (0.1, ..., 0.9); got {fractions!r}.")
    names, stacked = _stacked(maps, images)
    size = tuple(images.shape[2:])
    methods, batch, pixels = stacked.shape[0], images.shape[0], math.prod(size)
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device), len(size))
    removed_counts = torch.tensor([round(f * pixels) for f in fractions], device=device)
    inputs = images.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    per_method = batch * len(fractions) * 2

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        method, rest = rows // per_method, rows % per_method
        image, fraction, lerf = rest // (2 * len(fractions)), (rest // 2) % len(fractions), rest % 2 == 1
        count = removed_counts[fraction][:, None]
        rank = ranks[method, image]
        removed = torch.where(lerf[:, None], rank >= pixels - count, rank < count).view(-1, *size)
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
    """Fill the ``removed`` pixels (``[n, H, W]`` bool) of ``images`` ``[n, C, H, W]`` (volumes:
    ``[n, D, H, W]`` of ``[n, C, D, H, W]``): each removed pixel equals the weighted mean of its in-image
    8 neighbours (1/6 edge, 1/12 diagonal; in 3-D the 26 weighted 4 : 2 : 1 by face, edge, corner), all
    removed pixels of all images and channels solved jointly (the system is symmetric positive definite
    wherever an image keeps a pixel; an image with no pixel left is filled with zeros). Images whose
    shorter side is at most ``ROW_SOLVE_LIMIT`` (64) pixels are solved exactly by block elimination
    over their rows; larger images and volumes by preconditioned conjugate gradients to a relative
    residual of ``tolerance``, starting from the same problem solved at half the resolution (so a
    large removed block costs few iterations). Then Gaussian noise of std ``noise`` on the filled
    pixels."""
    dtype = torch.promote_types(images.dtype, torch.float32)
    mask = removed[:, None].to(dtype)
    filled = _impute(images.to(dtype), mask, tolerance)
    if noise > 0:
        filled = filled + noise * torch.randn(
            filled.shape, generator=generator, device=filled.device, dtype=dtype
        )
    return torch.where(mask > 0, filled, images.to(dtype)).to(images.dtype)


def _binomial_blur(x: Tensor, dims: int) -> Tensor:
    """``x`` filtered by ``[1, 2, 1]`` along each of its last ``dims`` axes, zero outside: one small
    matrix product per axis (faster than shifted views on every device)."""
    for axis in range(x.dim() - dims, x.dim()):
        size = x.shape[axis]
        band = 2 * torch.eye(size, dtype=x.dtype, device=x.device)
        band += torch.diag_embed(torch.ones(size - 1, dtype=x.dtype, device=x.device), offset=1)
        band += band.diagonal(offset=1).diag_embed(offset=-1)
        last = axis == x.dim() - 1
        x = x @ band if last else (band @ x.reshape(*x.shape[:axis], size, -1)).view(x.shape)
    return x


def _neighbour_sum(x: Tensor, dims: int) -> Tensor:
    """Each pixel's in-image neighbours over the last ``dims`` axes: in 2-D weighted 1/6 (edges) and
    1/12 (diagonals); in 3-D 1/14 (faces), 1/28 (edges), 1/56 (corners). Zero outside. The ``[1, 2,
    1]`` filter along every axis weighs the neighbours 2 : 1 (4 : 2 : 1 in 3-D) around a centre of
    ``2**dims``, so the centre is taken out and the weights scaled to sum to one in the interior."""
    return (_binomial_blur(x, dims) - 2**dims * x) / (4**dims - 2**dims)


ROW_SOLVE_LIMIT = 64


def _impute(values: Tensor, mask: Tensor, tolerance: float) -> Tensor:
    """The images with their removed pixels (``mask`` ``[n, 1, H, W]``, 1 = removed) solved for. Images
    whose shorter side is at most ``ROW_SOLVE_LIMIT`` are solved exactly, row block by row block;
    larger ones and volumes by CG from the half-resolution solution, upsampled (cascadic multigrid)."""
    size, spatial = tuple(values.shape[2:]), tuple(range(2, values.dim()))
    if len(size) == 2 and min(size) <= ROW_SOLVE_LIMIT:
        return _impute_by_row_blocks(values, mask)
    known = 1 - mask
    if min(size) >= 16:
        pool = F.avg_pool2d if len(size) == 2 else F.avg_pool3d
        pooled_known = pool(known, 2, ceil_mode=True)
        coarse = pool(values * known, 2, ceil_mode=True) / pooled_known.clamp(min=1e-12)
        coarse = _impute(coarse, (pooled_known == 0).to(mask.dtype), tolerance)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        guess = F.interpolate(coarse, size=size, mode=mode, align_corners=False)
    else:
        guess = (values * known).sum(spatial, keepdim=True) / known.sum(spatial, keepdim=True).clamp(min=1)
        guess = guess.expand_as(values)
    systems = mask.expand_as(values).flatten(0, 1)  # one system per image and channel
    right = systems * _neighbour_sum((values * known).flatten(0, 1), len(size))
    solution = _conjugate_gradients(systems, right, tolerance, (guess * mask).flatten(0, 1))
    return torch.where(mask > 0, solution.view(values.shape), values)


def _impute_by_row_blocks(values: Tensor, mask: Tensor) -> Tensor:
    """The imputation of images ``[n, C, H, W]`` solved exactly: the system (a removed pixel's row
    ``weights * x - neighbour_sum(x) = neighbour_sum(known values)``, a kept pixel's ``x = 0``) is block
    tridiagonal in the image's rows, so block Gaussian elimination over the shorter side's lines
    solves all images and channels at once in ``H`` batched ``W x W`` steps."""
    if values.shape[-1] > values.shape[-2]:
        return _impute_by_row_blocks(values.transpose(-1, -2), mask.transpose(-1, -2)).transpose(-1, -2)
    removed = mask[:, 0].transpose(0, 1)  # [H, n, W]
    weights = _neighbour_sum(torch.ones_like(mask[:1, 0]), 2)[0]  # [H, W]
    right = mask * _neighbour_sum(values * (1 - mask), 2)
    # Within a row: the diagonal and the 1/6 edge neighbours; between rows r and r + 1: the 1/6 edge
    # neighbour above and the 1/12 diagonal ones. A kept pixel's row and column are the identity's.
    row_pairs = removed[..., 1:] * removed[..., :-1] / 6
    no_kept_pixel = mask.flatten(1).amin(dim=1)[:, None]  # [n, 1]: singular; a tiny diagonal leaves it 0
    within = torch.diag_embed(removed * weights[:, None] + 1 - removed + 1e-6 * no_kept_pixel)
    within.diagonal(1, -2, -1).sub_(row_pairs)
    within.diagonal(-1, -2, -1).sub_(row_pairs)
    between = torch.diag_embed(-removed[:-1] * removed[1:] / 6)
    between.diagonal(1, -2, -1).sub_(removed[:-1, ..., :-1] * removed[1:, ..., 1:] / 12)
    between.diagonal(-1, -2, -1).sub_(removed[:-1, ..., 1:] * removed[1:, ..., :-1] / 12)
    solution = _block_tridiagonal_solve(within, between, right.permute(2, 0, 3, 1))  # [H, n, W, C]
    return torch.where(mask > 0, solution.permute(1, 3, 0, 2), values)


def _block_tridiagonal_solve(within: Tensor, between: Tensor, right: Tensor) -> Tensor:
    """``x`` with ``between[r-1]^T x[r-1] + within[r] x[r] + between[r] x[r+1] = right[r]`` for the
    symmetric block system ``within`` ``[R, n, W, W]``, ``between`` ``[R-1, n, W, W]``, ``right`` ``[R,
    n, W, C]``: block elimination forward (one LU solve per row block gives both the gain on the next
    block and the carried right side), then substitution back by products alone."""
    gains, carried = [], []
    block, side = within[0], right[0]
    for row in range(len(within)):
        factors, pivots, _ = torch.linalg.lu_factor_ex(block)
        couple = between[row] if row + 1 < len(within) else side[..., :0]
        solved = torch.linalg.lu_solve(factors, pivots, torch.cat([couple, side], dim=-1))
        gain, side_solved = solved.split([couple.shape[-1], side.shape[-1]], dim=-1)
        gains.append(gain)
        carried.append(side_solved)
        if row + 1 < len(within):
            block = torch.baddbmm(within[row + 1], between[row].transpose(-1, -2), gain, alpha=-1)
            side = torch.baddbmm(right[row + 1], between[row].transpose(-1, -2), side_solved, alpha=-1)
    solution = [carried[-1]]
    for row in range(len(within) - 2, -1, -1):
        solution.append(torch.baddbmm(carried[row], gains[row], solution[-1], alpha=-1))
    return torch.stack(solution[::-1])


def _conjugate_gradients(mask: Tensor, right: Tensor, tolerance: float, initial: Tensor) -> Tensor:
    """Solve ``mask * (weights * x - neighbour_sum(x)) = right`` (``weights``: each pixel's neighbour
    weights' sum) for each of the ``[S, H, W]`` (or ``[S, D, H, W]``) systems, Jacobi-preconditioned CG
    from ``initial``. Every 8 iterations (one host sync) the systems whose relative residual is below
    ``tolerance`` are set aside, so that each costs its own iterations, not the slowest one's."""
    dims = right.dim() - 1
    weights = _neighbour_sum(torch.ones(1, *right.shape[1:], dtype=right.dtype, device=right.device), dims)
    blur_weight = 1 / (4**dims - 2**dims)
    state = {
        "x": initial,
        "centre": mask * (weights + 2**dims * blur_weight),  # the centre taken out of the blur, put back
        "blur": mask * blur_weight,
        "limit": tolerance * right.flatten(1).norm(dim=-1),
        "index": torch.arange(len(right), device=right.device),
    }
    state["residual"] = right - _masked_operator(state, initial, dims)
    state["direction"] = state["residual"] / weights
    state["rz"] = _per_system_dot(state["residual"], state["direction"])
    solution = initial.clone()
    for iteration in range(10 * sum(right.shape[1:]) + 100):
        if iteration % 8 == 7:
            solution[state["index"]] = state["x"]
            going = state["residual"].flatten(1).norm(dim=-1) > state["limit"]
            if not bool(going.any()):
                return solution
            state = {name: value[going] for name, value in state.items()}
        _conjugate_gradient_step(state, weights, dims)
    solution[state["index"]] = state["x"]
    return solution


def _masked_operator(state: dict[str, Tensor], x: Tensor, dims: int) -> Tensor:
    return (state["centre"] * x).addcmul(state["blur"], _binomial_blur(x, dims), value=-1)


def _per_system_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(-1).view(-1, *([1] * (a.dim() - 1)))


def _conjugate_gradient_step(state: dict[str, Tensor], diagonal: Tensor, dims: int) -> None:
    """One Jacobi-preconditioned CG iteration on every system in ``state``, in place."""
    direction, rz = state["direction"], state["rz"]
    applied = _masked_operator(state, direction, dims)
    curvature = _per_system_dot(direction, applied)
    alpha = torch.where(curvature > 0, rz / torch.where(curvature > 0, curvature, 1.0), 0.0)
    state["x"] = state["x"].addcmul(alpha, direction)
    state["residual"] = state["residual"].addcmul(alpha, applied, value=-1)
    preconditioned = state["residual"] * (1 / diagonal)
    rz_next = _per_system_dot(state["residual"], preconditioned)
    beta = torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1.0), 0.0)
    state["direction"], state["rz"] = preconditioned.addcmul(beta, direction), rz_next
