"""Images and volumes through one code path: the number of spatial dimensions is data, not code.

Images are ``[B, C, H, W]``, volumes and clips ``[B, C, D, H, W]``; maps are ``[B, H, W]`` or
``[B, D, H, W]``; a layer's grid is ``[B, K, h, w]`` or ``[B, K, d, h, w]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = ["INTERPOLATION", "per_item", "resize", "spatial_dims", "weighted_sum"]

INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def spatial_dims(tensor: Tensor, start: int = 2) -> tuple[int, ...]:
    """The dimensions from ``start`` on: ``(2, 3)`` of ``[B, K, h, w]``, ``(2, 3, 4)`` of ``[B, K, d, h, w]``."""
    return tuple(range(start, tensor.dim()))


def resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Maps ``[N, *spatial]`` to ``[N, *size]``: (bi/tri)linear interpolation, ``align_corners=False``."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = INTERPOLATION[len(size)]
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, align_corners=False).squeeze(1)


def per_item(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``[N]`` shaped to broadcast over ``like`` ``[N, ...]``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k``: channel weights ``[B, K]``, activations ``[B, K, *spatial]`` -> ``[B, *spatial]``."""
    return torch.einsum("bk,bk...->b...", weights.to(activations), activations)
