"""ROAD's noisy linear imputation (Rong et al., 2022): removed pixels filled by the weighted mean of their
neighbours, all of them solved jointly, so that the model sees no tell-tale hole.

Images up to ``ROW_SOLVE_LIMIT`` (128) px on their shorter side are solved exactly by block elimination
over their rows (the odd rows by a tridiagonal sweep, the even rows by batched LU); larger images and
volumes by preconditioned conjugate gradients from a coarse solution. A removal and its complement (ROAD's
MoRF at ``f`` and LeRF at ``1 - f``) are one system for the row solver: half the work of two. Everything is
batched tensor work on the images' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = ["complementary_imputations", "noisy_linear_imputation"]


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
    shorter side is at most ``ROW_SOLVE_LIMIT`` (128) pixels are solved exactly by block elimination
    over their rows (in groups whose working memory fits ``ROW_SOLVE_BUDGET_BYTES``); larger images and volumes by preconditioned conjugate gradients to a relative
    residual of ``tolerance``, starting from the same problem solved at half the resolution (so a
    large removed block costs few iterations). Then Gaussian noise of std ``noise`` on the filled
    pixels."""
    values, mask = _as_float(images, removed)
    return _noisy(images, _impute(values, mask, tolerance), mask, noise, generator)


def complementary_imputations(
    images: Tensor,
    removed: Tensor,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """``(noisy_linear_imputation(images, removed), noisy_linear_imputation(images, ~removed))`` at
    about the cost of one call: where the row solver applies, the two parts are one system of the
    image's size (uncoupled), not two (each padded to the image's size). ROAD's MoRF at a fraction
    ``f`` and LeRF at ``1 - f`` are such a pair. Each result gets its own noise.

    Example::

        >>> images, removed = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8) < 0.3
        >>> removed_filled, rest_filled = complementary_imputations(images, removed)
        >>> kept = ~removed[:, None].expand_as(images)
        >>> torch.equal(removed_filled[kept], images[kept]) and torch.equal(rest_filled[~kept], images[~kept])
        True
    """
    values, mask = _as_float(images, removed)
    size = tuple(values.shape[2:])
    if len(size) == 2 and min(size) <= ROW_SOLVE_LIMIT:
        filled = rest_filled = _row_solve(values, 2 - mask, 2)  # part 1: removed, part 2: the rest
    else:
        both = _impute(torch.cat([values, values]), torch.cat([mask, 1 - mask]), tolerance)
        filled, rest_filled = both.chunk(2)
    return _noisy(images, filled, mask, noise, generator), _noisy(
        images, rest_filled, 1 - mask, noise, generator
    )


def _as_float(images: Tensor, removed: Tensor) -> tuple[Tensor, Tensor]:
    """The images in at least float32 and ``removed`` ``[n, *size]`` as a ``[n, 1, *size]`` mask of that type."""
    dtype = torch.promote_types(images.dtype, torch.float32)
    return images.to(dtype), removed[:, None].to(dtype)


def _noisy(
    images: Tensor, filled: Tensor, mask: Tensor, noise: float, generator: torch.Generator | None
) -> Tensor:
    """``images`` with the ``mask``ed pixels taken from ``filled``, plus Gaussian noise of std ``noise``
    there, in the images' dtype."""
    if noise > 0:
        filled = filled + noise * torch.randn(
            filled.shape, generator=generator, device=filled.device, dtype=filled.dtype
        )
    return torch.where(mask > 0, filled, images.to(filled.dtype)).to(images.dtype)


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


ROW_SOLVE_LIMIT = 128  # measured: faster than CG at 64, 96 and 128 px, and exact
ROW_SOLVE_BUDGET_BYTES = 256 * 2**20


def _impute(values: Tensor, mask: Tensor, tolerance: float) -> Tensor:
    """The images with their removed pixels (``mask`` ``[n, 1, H, W]``, 1 = removed) solved for. Images
    whose shorter side is at most ``ROW_SOLVE_LIMIT`` are solved exactly, row block by row block, in
    groups sized to ``ROW_SOLVE_BUDGET_BYTES``; larger ones and volumes by CG from the half-resolution solution, upsampled (cascadic multigrid)."""
    size, spatial = tuple(values.shape[2:]), tuple(range(2, values.dim()))
    if len(size) == 2 and min(size) <= ROW_SOLVE_LIMIT:
        return _row_solve(values, mask, 1)
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


def _row_solve(values: Tensor, parts: Tensor, count: int) -> Tensor:
    """``_impute_by_row_blocks`` in groups of images sized to ``ROW_SOLVE_BUDGET_BYTES``."""
    group = _row_solve_group_size(values)
    pieces = zip(values.split(group), parts.split(group), strict=True)
    return torch.cat([_impute_by_row_blocks(v, p, count) for v, p in pieces])


def _row_solve_group_size(values: Tensor) -> int:
    """Images per call of the row solver, whose working memory (the odd rows' whitened couplings, the
    even rows' blocks and their solutions: about ``2 H * W * (W + C)`` numbers per image, ``W`` the shorter
    side) must fit ``ROW_SOLVE_BUDGET_BYTES``."""
    channels, height, width = values.shape[1], max(values.shape[2:]), min(values.shape[2:])
    per_image = 4 * (height // 2 + 1) * width * (width + channels) * values.element_size()
    return max(1, ROW_SOLVE_BUDGET_BYTES // per_image)


def _impute_by_row_blocks(values: Tensor, parts: Tensor, count: int) -> Tensor:
    """The imputation of images ``[n, C, H, W]`` solved exactly: each of the ``count`` parts of ``parts``
    ``[n, 1, H, W]`` (0 = kept, 1 to ``count``: removed, by part) filled from the pixels outside it. The
    system (a removed pixel's row ``weights * x - neighbour_sum(x within its part) = neighbour_sum(values
    outside its part)``, a kept pixel's ``x = 0``) is block tridiagonal in the image's rows (along the
    longer side), and each row's own block is tridiagonal. So the odd rows are eliminated first by a
    batched tridiagonal sweep, which leaves a block tridiagonal system over the even rows with dense ``W x
    W`` blocks, eliminated one row at a time by batched LU: all images and channels at once in ``H / 2``
    steps. A part that leaves no pixel outside it comes back zeros."""
    if values.shape[-1] > values.shape[-2]:
        solved = _impute_by_row_blocks(values.transpose(-1, -2), parts.transpose(-1, -2), count)
        return solved.transpose(-1, -2)
    labels = parts.flatten(1)
    solvable = (labels.amin(dim=1) < labels.amax(dim=1)).view(-1, 1, 1, 1)  # no part is the whole image
    system = parts * solvable
    right = sum(
        (system == part) * _neighbour_sum(values * (parts != part), 2) for part in range(1, count + 1)
    )
    right = right.permute(2, 0, 3, 1).contiguous()  # [H, n, W, C]: one row's block at a time
    solution = _solve_row_system(_row_system(system[:, 0].transpose(0, 1)), right)
    return torch.where(parts > 0, solution.permute(1, 3, 0, 2), values)


def _row_system(parts: Tensor) -> dict[str, Tensor]:
    """The imputation's matrix for ``parts`` ``[H, n, W]`` (0 = kept, else the part a removed pixel
    belongs to; pixels of different parts are not coupled) by its diagonals: row ``r``'s own block
    ``tridiag(-pairs[r], diagonal[r], -pairs[r])`` (a kept pixel's row and column are the identity's)
    and the block ``U_r`` from row ``r`` to row ``r + 1``: ``-same`` on its diagonal, ``-to_right``
    above it (pixel ``c`` to ``c + 1`` below), ``-to_left`` under it."""
    removed = (parts > 0).to(parts.dtype)
    weights = _neighbour_sum(removed.new_ones(1, removed.shape[0], removed.shape[2]), 2)[0]  # [H, W]

    def coupled(a: tuple[slice, ...], b: tuple[slice, ...]) -> Tensor:
        return removed[a] * (parts[a] == parts[b])

    first, rest = slice(None, -1), slice(1, None)
    return {
        "diagonal": removed * weights[:, None] + 1 - removed,
        "pairs": coupled((..., rest), (..., first)) / 6,
        "same": coupled((first,), (rest,)) / 6,
        "to_right": coupled((first, ..., first), (rest, ..., rest)) / 12,
        "to_left": coupled((first, ..., rest), (rest, ..., first)) / 12,
    }


def _odd_row_columns(system: dict[str, Tensor], right: Tensor) -> Tensor:
    """``[H // 2, n, W, 2 (W + C)]``: for each odd row ``o`` its couplings and right side as columns,
    ``[U_{o-1}^T | f_o | U_o | f_o]`` (``U_o`` is zero for a last odd row)."""
    rows, images, width = system["diagonal"].shape
    odd, channels = rows // 2, right.shape[-1]
    columns = right.new_zeros(odd, images, width, 2 * (width + channels))
    above = columns[..., :width]  # U_{o-1}^T: the diagonals of U_{o-1} swapped
    _write_coupling(above, system, slice(0, 2 * odd, 2), transposed=True)
    below = columns[: (rows - 1) // 2, ..., width + channels : 2 * width + channels]
    _write_coupling(below, system, slice(1, None, 2), transposed=False)
    columns[..., width : width + channels] = right[1::2]
    columns[..., 2 * width + channels :] = right[1::2]
    return columns


def _write_coupling(block: Tensor, system: dict[str, Tensor], rows: slice, transposed: bool) -> None:
    """Write the coupling blocks ``U_r`` of ``rows`` (or their transposes) into ``block`` ``[..., W, W]``."""
    side = -1 if transposed else 1  # U_r[c, c + 1] = -to_right[c]; U_r[c + 1, c] = -to_left[c]
    block.diagonal(0, -2, -1).copy_(-system["same"][rows])
    block.diagonal(side, -2, -1).copy_(-system["to_right"][rows])
    block.diagonal(-side, -2, -1).copy_(-system["to_left"][rows])


def _whiten_in_place(diagonal: Tensor, pairs: Tensor, columns: Tensor) -> tuple[list[Tensor], Tensor]:
    """``columns`` ``[..., W, K]`` becomes ``Λ^-1/2 L^-1 columns`` where ``L Λ L^T`` factors the
    tridiagonal ``tridiag(-pairs, diagonal, -pairs)`` (``[..., W]``, ``[..., W - 1]``), one sweep over
    ``W``. Returns ``L``'s subdiagonal negated (per step) and ``Λ^-1/2`` ``[..., W, 1]``."""
    pivot, gains, pivots = diagonal[..., 0], [], [diagonal[..., 0]]
    for i in range(diagonal.shape[-1] - 1):
        gains.append(pairs[..., i] / pivot)
        pivot = diagonal[..., i + 1] - gains[-1] * pairs[..., i]
        pivots.append(pivot)
        columns[..., i + 1, :].addcmul_(gains[-1][..., None], columns[..., i, :])
    scale = torch.stack(pivots, dim=-1).rsqrt()[..., None]
    columns.mul_(scale)
    return gains, scale


def _solve_row_system(system: dict[str, Tensor], right: Tensor) -> Tensor:
    """``x`` ``[H, n, W, C]`` for the row system and its right side: the odd rows eliminated (their
    whitened columns), the even rows solved, then each odd row from its two neighbours."""
    rows, images, width = system["diagonal"].shape
    odd, channels = rows // 2, right.shape[-1]
    columns = _odd_row_columns(system, right)
    gains, scale = _whiten_in_place(system["diagonal"][1::2], system["pairs"][1::2], columns)
    solution = right.new_empty(rows, images, width, channels)
    solution[0::2] = _eliminate_even_rows(system, right, columns)
    neighbours = solution[0 : 2 * odd : 2].flatten(0, 1)
    odd_rows = torch.baddbmm(
        columns[..., width : width + channels].flatten(0, 1),
        columns[..., :width].flatten(0, 1),
        neighbours,
        alpha=-1,
    ).view(odd, images, width, channels)
    below = (rows - 1) // 2
    odd_rows[:below] -= columns[:below, ..., width + channels : 2 * width + channels] @ solution[2::2]
    odd_rows *= scale
    for i in range(width - 2, -1, -1):  # L^-T
        odd_rows[..., i, :].addcmul_(gains[i][..., None], odd_rows[..., i + 1, :])
    solution[1::2] = odd_rows
    return solution


def _even_row_starts(system: dict[str, Tensor], right: Tensor) -> Tensor:
    """``[ceil(H / 2), n, W, W + C]``: each even row's own tridiagonal block beside its right side."""
    width = right.shape[-2]
    starts = right.new_zeros(*right[0::2].shape[:-1], width + right.shape[-1])
    block = starts[..., :width]
    block.diagonal(0, -2, -1).copy_(system["diagonal"][0::2])
    block.diagonal(1, -2, -1).sub_(system["pairs"][0::2])
    block.diagonal(-1, -2, -1).sub_(system["pairs"][0::2])
    starts[..., width:] = right[0::2]
    return starts


def _eliminate_even_rows(system: dict[str, Tensor], right: Tensor, columns: Tensor) -> Tensor:
    """The even rows' solution ``[ceil(H / 2), n, W, C]``. Even row ``k``'s block (beside its right side)
    is its own tridiagonal minus, through the whitened columns, what couples it to the odd row below
    and the odd row above, minus the Schur complement of the even row before; it couples to even row
    ``k + 1`` through odd row ``k``. One batched LU (of the symmetric block, passed column-major) and one
    solve per row; then back substitution by products."""
    width, channels = right.shape[-2:]
    rows, odd = len(system["diagonal"]), len(columns)
    even = (rows + 1) // 2
    up, down = slice(0, width), slice(width + channels, 2 * width + channels)
    gains: list[Tensor] = []
    couplings: list[Tensor] = []
    for k, block in enumerate(_even_row_starts(system, right)):
        if k < odd:
            block.baddbmm_(columns[k, ..., up].mT, columns[k, ..., : width + channels], alpha=-1)
        if k > 0:
            block.baddbmm_(columns[k - 1, ..., down].mT, columns[k - 1, ..., width + channels :], alpha=-1)
            block.baddbmm_(couplings[-1].mT, gains[-1], alpha=-1)
        factors, pivots, _ = torch.linalg.lu_factor_ex(block[..., :width].mT)  # symmetric
        if k + 1 < even:
            # to even row k + 1, through odd row k
            couplings.append(torch.bmm(columns[k, ..., up].mT, columns[k, ..., down]).neg_())
            block[..., :width] = couplings[-1]
            gains.append(torch.linalg.lu_solve(factors, pivots, block))
        else:
            gains.append(torch.linalg.lu_solve(factors, pivots, block[..., width:]))
    solution = [gains[-1]]
    for k in range(even - 2, -1, -1):
        solution.append(torch.baddbmm(gains[k][..., width:], gains[k][..., :width], solution[-1], alpha=-1))
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
