"""A pattern repeated at one place across a strategy's images: what sets a shortcut apart from an object.

An object moves, turns, changes size and colour from image to image; a shortcut (a tag, a caption, a
watermark, a ruler, a line along an edge) is the same pixels at the same place in every image that
carries it, whatever the object does. Per pixel ``p``, with the strategy's images ``x_i`` (members),
their medoid there ``c(p)`` (the member content closest to all the others': the common content) and
other classes' images ``y_j``:

- ``spread(p)``: the upper median of ``|x_i(p) - c(p)|^2`` over the members: small only where more than
  half of them show the common content;
- ``separation(p)``: the median of ``|y_j(p) - c(p)|^2`` over the others: how far a typical other image
  is from it (a median, so that the few other images whose object happens to lie there do not make a
  plain background look like a pattern);
- ``repeated(p) = separation / (separation + spread + floor)`` in ``[0, 1]``, the squares summed over
  channels, ``floor`` = :data:`FLOOR` times the others' mean variance per pixel (a difference far below
  the images' own variation is no pattern, and a pixel the same in every image is none either).

A pixel is **on the pattern** where ``repeated >= 0.8`` (:data:`ON_PATTERN`): a typical other image is at
least four times as far from the common content as the members are. Pure functions of tensors, on
their device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = [
    "FLOOR",
    "ON_PATTERN",
    "dilated",
    "kth_smallest",
    "max_filter",
    "pattern_floor",
    "pattern_near",
    "pattern_region",
    "repeated_map",
    "repetition",
]

FLOOR = 0.05
ON_PATTERN = 0.8
MIN_PIXELS = 4
POOLED_WORK = 32_768  # window x pixels up to which max_pool2d along each axis is faster (measured on a CPU)


def repeated_map(members: Tensor, others: Tensor, floor: Tensor | None = None) -> Tensor:
    """``[H, W]`` in ``[0, 1]``: how much each pixel of the members ``[n, C, H, W]`` holds one content that
    the others ``[m, C, H, W]`` lack there (see the module's docstring); ``floor``: :func:`pattern_floor`
    of the whole images (given when these are a crop).

    Example::

        >>> generator = torch.Generator().manual_seed(0)
        >>> members, others = torch.rand(6, 3, 8, 8, generator=generator), torch.rand(6, 3, 8, 8, generator=generator)
        >>> members[:, :, 0, 0] = 1.0  # the same pixel in every member
        >>> others[:, :, 0, 0] = 0.0
        >>> repeated = repeated_map(members, others)
        >>> bool(repeated[0, 0] > 0.99), bool(repeated.median() < ON_PATTERN)  # the tag; elsewhere no pattern
        (True, True)
    """
    members, others = members.float(), others.float()
    apart = (members[:, None] - members[None]).pow(2).sum(dim=2)  # [n, n, H, W]
    medoid = apart.sum(dim=1).min(dim=0).indices  # [H, W]; argmin's first minimum, 7x faster on the CPU
    centre = members.gather(0, medoid[None, None].expand(1, *members.shape[1:]))[0]
    spread = kth_smallest(
        apart.gather(0, medoid[None, None].expand(1, *apart.shape[1:]))[0], len(members) // 2
    )
    separation = kth_smallest((others - centre).pow(2).sum(dim=1), (len(others) - 1) // 2)
    floor = pattern_floor(others) if floor is None else floor
    return separation / (separation + spread + floor)


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest (from 0) of ``values`` ``[n, ...]`` along the first dimension, NaN ordered
    last (as ``torch.sort``); ``k = (n - 1) // 2``: the lower median (``torch.median``'s, NaN aside). On the
    CPU numpy's partition along the first axis (float32 and float64), 4x faster there than
    ``torch.median`` or ``kthvalue`` along a dimension (0.15 ms vs 0.67 ms for 1,024 medians of 32);
    elsewhere a sort.

    Example::

        >>> kth_smallest(torch.tensor([[3.0, 1.0], [1.0, float("nan")], [2.0, 0.0]]), 1).tolist()
        [2.0, 1.0]
    """
    if (
        values.device.type != "cpu"
        or values.requires_grad
        or values.dtype not in (torch.float32, torch.float64)
    ):
        return values.sort(dim=0).values[k]  # numpy has no bfloat16
    return torch.from_numpy(np.partition(values.numpy(), k, axis=0)[k])


def pattern_floor(others: Tensor) -> Tensor:
    """:data:`FLOOR` times the others' ``[m, C, H, W]`` variance per pixel (summed over channels), averaged
    over the image: the least separation that counts."""
    others = others.float()
    variance = (others - others.mean(dim=0)).pow(2).mean(dim=0)  # as var(unbiased=False), 6x faster on CPU
    return FLOOR * variance.sum(dim=0).mean().clamp(min=1e-6)


def pattern_near(
    members: Tensor, others: Tensor, near: Tensor, floor: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The pattern the attention sits on (:func:`pattern_region`) and :func:`repeated_map` wherever that
    and :func:`repetition` read it, for the pixels ``near`` ``[H, W]`` bool (the attention region grown
    by a cell, :func:`dilated`). The map is computed on their bounding box (the rest left 0); the whole
    map only where a pattern is found or may be: its seeds grown inside the box survive as a pattern, or
    come within two pixels of a side where the box cuts the image (beyond, the growth reads pixels the
    box lacks). The same region and figures as the whole map, at the cost of the box. ``floor``:
    :func:`pattern_floor` of the others, when known. Returns ``(region, repeated)``."""
    if not bool(near.any()):
        return near, torch.zeros(near.shape, device=members.device)
    rows, columns = near.any(dim=1).nonzero().flatten(), near.any(dim=0).nonzero().flatten()
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1))
    floor = pattern_floor(others) if floor is None else floor
    found = repeated_map(members[(..., *box)], others[(..., *box)], floor)
    on = found >= ON_PATTERN
    grown = _grown(on, near[box] & on, sum(near.shape))
    if _near_a_cut(grown, box, near.shape) or bool(_without_specks(grown, on).any()):
        repeated = repeated_map(members, others, floor)
        return pattern_region(repeated, near), repeated
    repeated = torch.zeros(near.shape, device=members.device)
    repeated[box] = found
    return torch.zeros_like(near), repeated


def _near_a_cut(region: Tensor, box: tuple[slice, slice], shape: torch.Size) -> bool:
    """Whether ``region`` (a crop ``box`` of an image of ``shape``) comes within two pixels of a side where
    the box cuts the image."""
    inner = torch.zeros_like(region)
    top, left = (2 if cut.start > 0 else 0 for cut in box)
    bottom, right = (
        length - (2 if cut.stop < whole else 0)
        for cut, length, whole in zip(box, region.shape, shape, strict=True)
    )
    inner[top:bottom, left:right] = True
    return bool((region & ~inner).any())


def dilated(region: Tensor, width: int) -> Tensor:
    """``region`` ``[..., H, W]`` bool grown by ``width`` pixels (a square neighbourhood)."""
    if width <= 0:
        return region
    return max_filter(region.float(), width) > 0


def max_filter(values: Tensor, width: int) -> Tensor:
    """Each value of ``values`` ``[..., H, W]`` replaced by the largest within ``width`` pixels (a square
    of side ``2 * width + 1``; pixels beyond the edges ignored): ``max_pool2d(values, 2 * width + 1,
    stride=1, padding=width)`` one axis after the other: a large window by van Herk / Gil-Werman running
    maxima, whose cost does not grow with the width (at 224 px and a width of 28, 1.6 ms instead of
    max_pool2d's 200 ms), a small one (:data:`POOLED_WORK`) by max_pool2d along each axis.

    Example::

        >>> max_filter(torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0]]), 1).tolist()
        [[0.0, 0.0, 0.0, 5.0, 5.0]]
    """
    window = 2 * width + 1
    if window <= 3 or window * values.shape[-2] * values.shape[-1] <= POOLED_WORK:
        grid = values.reshape(1, -1, *values.shape[-2:])
        rows = F.max_pool2d(grid, (1, window), stride=1, padding=(0, width))
        return F.max_pool2d(rows, (window, 1), stride=1, padding=(width, 0)).view(values.shape)
    return _running_max(_running_max(values, width, -1), width, -2)


def _running_max(values: Tensor, width: int, dim: int) -> Tensor:
    """The largest of ``values`` within ``width`` positions along ``dim`` (edges ignored): blocks of the
    window's length, each position the larger of the maximum from it to its block's end and the maximum
    from the next block's start to its window's end."""
    line = values.movedim(dim, -1)
    length, window = line.shape[-1], 2 * width + 1
    blocks = -(-(length + 2 * width) // window)
    padded = F.pad(line, (width, blocks * window - length - width), value=float("-inf"))
    pieces = padded.unflatten(-1, (blocks, window))
    ahead = pieces.cummax(dim=-1).values.flatten(-2)  # from each block's start
    behind = pieces.flip(-1).cummax(dim=-1).values.flip(-1).flatten(-2)  # to each block's end
    return torch.maximum(behind[..., :length], ahead[..., window - 1 : window - 1 + length]).movedim(-1, dim)


def pattern_region(repeated: Tensor, near: Tensor) -> Tensor:
    """``[H, W]`` bool: the whole pattern the attention sits on. Its seeds are the pixels on the pattern
    among ``near`` ``[H, W]`` (the attention region grown by a cell, the maps' resolution:
    :func:`dilated`); from them it grows along pixels on the pattern, bridging gaps of up to two pixels
    (a caption's glyphs are one pattern), with a one-pixel margin; a piece of fewer than
    :data:`MIN_PIXELS` pixels on the pattern is left out (chance). Empty where the attention sits on no
    pattern.

    Example::

        >>> repeated = torch.zeros(8, 8)
        >>> repeated[7, :] = 1.0  # a line along the bottom edge
        >>> attention = torch.zeros(8, 8, dtype=torch.bool)
        >>> attention[6:, :2] = True  # the maps saw its left end
        >>> pattern_region(repeated, dilated(attention, 1))[6:].sum().item()  # the whole line, and its margin
        16
    """
    on = repeated >= ON_PATTERN
    return _without_specks(_grown(on, near & on, sum(on.shape)), on)


def _grown(on: Tensor, seeds: Tensor, steps: int) -> Tensor:
    """``seeds`` grown along the pixels ``on`` a pattern, a pixel at a time (at most ``steps`` times), to
    pixels within one of a pixel on it: gaps of up to two pixels are bridged, with a one-pixel margin."""
    if not bool(seeds.any()):
        return seeds  # no seed: the attention sits on no pattern
    allowed, region = dilated(on, 1), seeds
    for _ in range(steps):
        grown = dilated(region, 1) & allowed
        if torch.equal(grown, region):
            break
        region = grown
    return region


def _without_specks(region: Tensor, on: Tensor) -> Tensor:
    """``region`` without its pieces of fewer than :data:`MIN_PIXELS` pixels ``on`` the pattern: a speck
    of a few pixels is chance, not a pattern."""
    if not bool(region.any()):
        return region
    labels = _components(region)
    pixels = torch.bincount(labels[on & region], minlength=region.numel() + 1)
    return region & (pixels[labels] >= MIN_PIXELS)


def _components(mask: Tensor) -> Tensor:
    """``[H, W]`` long: each pixel of ``mask`` labelled by its 8-connected component (the largest pixel
    number in it, from 1); 0 outside."""
    numbers = torch.arange(1, mask.numel() + 1, device=mask.device, dtype=torch.float32).view(mask.shape)
    labels = numbers * mask
    for _ in range(mask.numel()):
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def repetition(repeated: Tensor, weights: Tensor, cell: int) -> float:
    """The share of the attention ``weights`` ``[H, W]`` (non-negative) that lies within ``cell`` pixels of
    the pattern: ``sum(weights * maxpool(repeated)) / sum(weights)``. The max-pool forgives the maps'
    coarse resolution: attention on the cell that holds a tag is attention on the tag. NaN without weight.

    Example::

        >>> repeated = torch.zeros(8, 8)
        >>> repeated[0, 0] = 1.0
        >>> weights = torch.zeros(8, 8)
        >>> weights[0, 1], weights[6, 6] = 3.0, 1.0
        >>> repetition(repeated, weights, 1)
        0.75
    """
    near = max_filter(repeated.float(), cell)
    total = weights.sum()
    return float((weights * near).sum() / total) if float(total) > 0 else float("nan")
