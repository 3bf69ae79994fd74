"""Any target layer's output as ``[B, K, *grid]``: convolutional, channels-last, or tokens.

A layer's output comes in one of three layouts, found from its shape, the input's size and the
model's own metadata (:func:`infer_layout`); activations **and** gradients go through the same
:class:`Layout`, so every layer method sees ``[B, K, h, w]``:

- ``grid``: ``[B, K, h, w]`` (a convolution's output);
- ``channels_last``: ``[B, h, w, K]`` (torchvision ``swin_t`` stages, timm Swin blocks);
- ``tokens``: ``[B, N, K]``, ``P`` prefix tokens first (class, distillation, register tokens), then
  the ``h * w`` patch tokens in row-major order (ViT, DeiT).

It never guesses: a shape that fits more than one reading (or none) raises ``ValueError`` naming
``reshape_transform``, which takes a callable ``tensor -> [B, K, h, w]`` (pytorch-grad-cam's signature).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["Layout", "ReshapeTransform", "check_unpartitioned", "infer_layout", "partitioned"]

ReshapeTransform = Literal["auto"] | Callable[[Tensor], Tensor]
MAX_PREFIX_TOKENS = 8
GRID_SLACK = 1.5  # cells a grid may be off the image's proportions (rounding at odd sizes)


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps to ``[B, K, *grid]`` and back."""

    kind: Literal["grid", "channels_last", "tokens", "callable"]
    grid: tuple[int, ...] = ()
    prefix: int = 0
    transform: Callable[[Tensor], Tensor] | None = None

    def to_grid(self, output: Tensor) -> Tensor:
        """``[B, K, *grid]`` from the layer's output."""
        if self.kind == "grid":
            return output
        if self.kind == "channels_last":
            return output.movedim(-1, 1)
        if self.kind == "tokens":
            patches = output[:, self.prefix :]
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], *self.grid)
        assert self.transform is not None
        return self.transform(output)

    def from_grid(self, grid: Tensor, original: Tensor, rows: Tensor) -> Tensor:
        """The layer's layout from ``[n, K, *grid]``; token layouts take their prefix tokens from
        ``original`` (the layer's output), row ``i`` from image ``rows[i]`` of it."""
        if self.kind == "grid":
            return grid
        if self.kind == "channels_last":
            return grid.movedim(1, -1)
        if self.kind == "tokens":
            prefix = original[:, : self.prefix][rows]
            return torch.cat([prefix.to(grid.dtype), grid.flatten(2).transpose(1, 2)], dim=1)
        raise ValueError(
            "this method writes modified activations back into the layer, which a callable reshape_transform "
            "cannot invert; use reshape_transform='auto' for this layer, or a method that only reads activations."
        )


def _strides_agree(grid: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether ``grid`` is ``size`` divided by about the same stride in every dimension."""
    if len(grid) != len(size) or any(g < 1 or g > s for g, s in zip(grid, size, strict=True)):
        return False
    strides = [s / g for g, s in zip(grid, size, strict=True)]
    return max(strides) / min(strides) < 1.25


def _hugging_face_prefix_and_patch(module: nn.Module) -> tuple[int, tuple[int, ...]] | None:
    """Hugging Face ViT-style embeddings: ``patch_embeddings.patch_size`` and the prefix-token
    parameters (``cls_token``, DeiT's ``distillation_token``, ``register_tokens``; none: Swin)."""
    patch = getattr(getattr(module, "patch_embeddings", None), "patch_size", None)
    if patch is None:
        return None
    tokens = [getattr(module, name, None) for name in ("cls_token", "distillation_token", "register_tokens")]
    prefix = sum(token.shape[1] for token in tokens if isinstance(token, nn.Parameter))
    return prefix, tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)


def _model_prefix_and_patch(model: nn.Module) -> tuple[int | None, tuple[int, ...] | None]:
    """Prefix-token count and patch size from timm (``num_prefix_tokens``, ``patch_embed.patch_size``),
    torchvision (``VisionTransformer.patch_size``, one class token) or Hugging Face (ViT-style
    embeddings) metadata, where present."""
    for module in model.modules():
        hugging_face = _hugging_face_prefix_and_patch(module)
        if hugging_face is not None:
            return hugging_face
        prefix = getattr(module, "num_prefix_tokens", None)
        if isinstance(prefix, int):
            patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
            return prefix, tuple(patch) if isinstance(patch, (tuple, list)) else None
        if type(module).__name__ == "VisionTransformer" and isinstance(
            getattr(module, "patch_size", None), int
        ):
            return 1, (module.patch_size, module.patch_size)
    return None, None


def _has_token_parameters(model: nn.Module) -> bool:
    """Whether any parameter's name holds ``token`` (``cls_token``, ``class_token``, ``dist_token``,
    ``register_tokens``, ...): a model without one (LeViT) has no prefix tokens."""
    return any("token" in name for name, _ in model.named_parameters())


def token_layout(shape: tuple[int, ...], size: tuple[int, ...], model: nn.Module, name: str) -> Layout:
    tokens = shape[1]
    prefix, patch = _model_prefix_and_patch(model)
    if prefix is not None and patch is not None and len(patch) == len(size):
        grid = tuple(s // p for s, p in zip(size, patch, strict=True))
        if math.prod(grid) == tokens - prefix:
            return Layout("tokens", grid, prefix)
    fits = []
    for extra in [prefix] if prefix is not None else range(MAX_PREFIX_TOKENS + 1):
        count = tokens - extra
        for rows in range(1, count + 1):
            if count % rows == 0 and rows * size[1] == (count // rows) * size[0]:
                fits.append(Layout("tokens", (rows, count // rows), extra))
    unprefixed = [fit for fit in fits if fit.prefix == 0]
    if len(fits) > 1 and unprefixed and prefix is None and not _has_token_parameters(model):
        fits = unprefixed  # no class, distillation or register token to skip
    if len(fits) == 1:
        return fits[0]
    readings = ", ".join(f"{f.prefix} prefix + {f.grid[0]}x{f.grid[1]} patches" for f in fits) or "none"
    skip = f"{prefix}" if prefix is not None else "P"
    which = (
        ""
        if prefix is not None
        else ", P the number of prefix tokens (class, distillation, register; 0 without)"
    )
    raise ValueError(
        f"target layer {name!r} outputs tokens {list(shape)} for an input of {list(size)}, which do not read as "
        f"one grid of patches with the input's aspect ratio (readings: {readings}). Pass reshape_transform="
        f"a function tensor -> [B, K, h, w] (e.g. lambda t: t[:, {skip}:].transpose(1, 2).reshape(B, K, h, w)"
        f"{which})."
    )


def _features(module: nn.Module) -> int | None:
    """The feature size a layer norm or linear layer produces along the last dimension."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return module.out_features if isinstance(module, nn.Linear) else None


def _evidence(modules: list[nn.Module], shape: tuple[int, ...], linear: bool) -> set[str]:
    """Which layouts the modules' own types vouch for: a convolution or batch/group norm with ``K =
    shape[1]`` channels for channels first, a layer norm (or, with ``linear``, a linear layer) over
    ``K = shape[-1]`` features for channels last."""
    found = set()
    for module in modules:
        if isinstance(module, nn.Linear) and not linear:
            continue
        if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            channels = (
                getattr(module, "out_channels", None)
                or getattr(module, "num_features", None)
                or module.num_channels
            )
            if channels == shape[1]:
                found.add("grid")
        elif _features(module) == shape[-1]:
            found.add("channels_last")
    return found


def _grid_layout(
    shape: tuple[int, ...], size: tuple[int, ...], model: nn.Module, layer: nn.Module, name: str
) -> Layout:
    """Channels first or channels last: the reading whose grid divides the input by one stride; where
    both or neither do, the one the layer's (else the model's) module types vouch for; else raise."""
    readings = {"grid": Layout("grid", shape[2:]), "channels_last": Layout("channels_last", shape[1:-1])}
    agreeing = [kind for kind, layout in readings.items() if _strides_agree(layout.grid, size)]
    if len(agreeing) == 1:
        return readings[agreeing[0]]
    candidates = agreeing or [
        kind
        for kind, layout in readings.items()
        if all(g <= s for g, s in zip(layout.grid, size, strict=True))
    ]
    for modules, linear in ((list(layer.modules()), True), (list(model.modules()), False)):
        vouched = _evidence(modules, shape, linear) & set(candidates)
        if len(vouched) == 1:
            return readings[vouched.pop()]
    raise ValueError(
        f"target layer {name!r} outputs {list(shape)} for an input of {list(size)}: it reads as channels "
        f"first [B, K, *grid] and as channels last [B, *grid, K], and the model's layers do not say which. "
        f"Pass reshape_transform=lambda t: t (channels first) or lambda t: t.movedim(-1, 1) (channels last)."
    )


def infer_layout(
    output: Tensor,
    size: tuple[int, ...],
    model: nn.Module,
    layer: nn.Module,
    name: str,
    reshape_transform: ReshapeTransform = "auto",
) -> Layout:
    """The layout of target layer ``name``'s (``layer``'s) ``output`` for inputs of spatial ``size``
    ((H, W), or (D, H, W) for volumes)."""
    if callable(reshape_transform):
        return Layout("callable", transform=reshape_transform)
    if reshape_transform != "auto":
        raise ValueError(
            f"reshape_transform must be 'auto' or a callable tensor -> [B, K, h, w]; got {reshape_transform!r}."
        )
    shape, spatial = tuple(output.shape), len(size)
    if len(shape) == 3 and spatial == 2:
        return token_layout(shape, size, model, name)
    if len(shape) == spatial + 2:
        return _grid_layout(shape, size, model, layer, name)
    if spatial == 3:
        raise ValueError(
            f"the input is a volume or clip with spatial size {list(size)} (D, H, W) but target layer {name!r} outputs "
            f"shape {list(shape)}; volume maps need a layer with a 5-D output [B, K, d, h, w] (a Conv3d block, e.g. "
            f"'layer4' of torchvision's r3d_18), or reshape_transform=a function tensor -> [B, K, d, h, w]."
        )
    raise ValueError(
        f"target layer {name!r} outputs shape {list(shape)} for an input of spatial size {list(size)}; CAM methods "
        f"need [B, K, h, w] (convolutions), [B, h, w, K] (channels last) or [B, N, K] (tokens). Pick a "
        f"layer before global pooling, or pass reshape_transform=a function tensor -> [B, K, h, w]."
    )


def partitioned(layout: Layout, size: tuple[int, ...] | None) -> bool:
    """Whether a grid or channels-last layout holds the image's grid re-arranged into windows: its
    proportions are not the image's (scaled from its largest dimension, another is more than
    :data:`GRID_SLACK` cells or a tenth off), yet it has exactly as many cells as the image's grid at some
    stride (maxvit's ``[B, 64, 49, K]`` is the 56x56 grid at stride 4 in 7x7 windows). Most models with
    other strides per axis (video's time, a spectrogram's frequency) have no such count; one whose
    strides multiply to a square on a square image does, and needs a ``reshape_transform``. ``size``
    ``None`` (a detector's canvas in "auto"'s probe): no check."""
    if size is None or layout.kind not in ("grid", "channels_last") or len(layout.grid) != len(size):
        return False
    reference = max(range(len(size)), key=lambda i: layout.grid[i])
    scale = layout.grid[reference] / size[reference]
    if all(
        abs(g - s * scale) <= max(GRID_SLACK, 0.1 * s * scale) for g, s in zip(layout.grid, size, strict=True)
    ):
        return False
    cells = math.prod(layout.grid)
    return any(
        math.prod(-(-s // stride) for s in size) == cells or math.prod(s // stride for s in size) == cells
        for stride in range(1, max(size) + 1)
    )


def check_unpartitioned(layout: Layout, size: tuple[int, ...], name: str, shape: tuple[int, ...]) -> None:
    """``ValueError`` when target layer ``name``'s output (``shape``, read as ``layout``) is the image's
    grid re-arranged into windows (:func:`partitioned`): its map would be a strip of windows, not the
    image."""
    if partitioned(layout, size):
        grid, image = "x".join(map(str, layout.grid)), "x".join(map(str, size))
        raise ValueError(
            f"target layer {name!r} outputs {list(shape)} for an input of {image}: read as a {grid} grid it is not "
            f"the image's grid at one stride but as many cells re-arranged into windows (a window- or "
            f"grid-partitioned attention layer, as in MaxViT), whose map would be a strip of windows. Name the block "
            f"that puts the windows back (on torchvision's maxvit_t e.g. 'blocks.3.layers.1', or target_layer='auto'), "
            f"or pass reshape_transform=a function tensor -> [B, K, h, w] that un-partitions it (a grid that is "
            f"the image's at other strides per axis: reshape_transform=lambda t: t, or t.movedim(-1, 1) if channels last)."
        )
