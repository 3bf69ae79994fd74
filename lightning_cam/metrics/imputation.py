"""ROAD's noisy linear imputation (Rong et al., 2022): removed pixels filled by the weighted mean of their
neighbours, all of them solved jointly, so that the model sees no tell-tale hole.

Small images are solved exactly by block elimination over their rows; large images and volumes by
preconditioned conjugate gradients from a coarse solution. Everything is batched tensor work on the
images' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = ["noisy_linear_imputation"]


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
