"""Reading batches and choosing the fixed samples that CAMMonitor explains at every check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["FixedBatch", "Masks", "SampleBuffer", "Unpacked", "describe", "unpack_batch"]

Masks = dict[str, Tensor]
Unpacked = tuple[Tensor, Tensor | None, Masks | None]


def describe(value: Any, depth: int = 0) -> str:
    """A short description of a batch's structure, e.g. ``tuple(Tensor[8, 3, 32, 32] float32, list[8])``."""
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if depth > 2:
        return type(value).__name__
    if isinstance(value, Mapping):
        inner = ", ".join(f"{key!r}: {describe(item, depth + 1)}" for key, item in list(value.items())[:8])
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (tuple, list)):
        if value and all(not isinstance(item, (Tensor, Mapping, tuple, list)) for item in value):
            return f"{type(value).__name__}[{len(value)}]"
        return f"{type(value).__name__}({', '.join(describe(item, depth + 1) for item in value[:8])})"
    return type(value).__name__


def _as_masks(value: Any, name: str) -> Masks | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return {name: value}
    if isinstance(value, Mapping) and all(isinstance(item, Tensor) for item in value.values()):
        return {str(key): item for key, item in value.items()}
    raise ValueError(f"masks must be a tensor [B, H, W] or a dict of them; got {describe(value)}.")


def unpack_batch(
    batch: Any,
    unpack: Callable[[Any], Unpacked] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
) -> Unpacked:
    """Read ``(images, labels, masks)`` out of a batch.

    Without ``unpack``: a tensor (images only), a tuple/list ``(x, y)`` or ``(x, y, masks)``, or a
    dict with ``image_key``, ``label_key`` and ``mask_key`` (or ``"masks"``). ``masks`` is a tensor
    ``[B, H, W]`` (named ``"mask"``) or a dict of named masks. Anything else raises ``ValueError``
    showing the batch's structure.
    """
    if unpack is not None:
        unpacked = unpack(batch)
        if not isinstance(unpacked, (tuple, list)) or len(unpacked) != 3:
            raise ValueError(f"unpack must return (images, labels, masks); it returned {describe(unpacked)}.")
        images, labels, masks = unpacked
    elif isinstance(batch, Tensor):
        images, labels, masks = batch, None, None
    elif isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        masks = batch[2] if len(batch) > 2 else None
    elif isinstance(batch, Mapping) and image_key in batch:
        images, labels = batch[image_key], batch.get(label_key)
        masks = batch.get(mask_key, batch.get("masks"))
    else:
        raise ValueError(
            f"CAMMonitor cannot read this batch: {describe(batch)}. It reads a tensor, a tuple "
            f"(images, labels[, masks]) or a dict with keys {image_key!r}, {label_key!r}, {mask_key!r}; "
            f"pass image_key/label_key/mask_key, or unpack=a function batch -> (images, labels, masks)."
        )
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"CAMMonitor needs images as a float tensor [B, C, H, W]; the batch {describe(batch)} gave "
            f"{describe(images)}. Pass unpack=a function batch -> (images, labels, masks)."
        )
    if labels is not None and (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or len(labels) != len(images)
    ):
        raise ValueError(
            f"CAMMonitor needs labels as integer class indices [B] ({len(images)}); got {describe(labels)}. "
            f"Pass unpack=a function batch -> (images, labels or None, masks)."
        )
    return images, labels, _as_masks(masks, mask_key)


@dataclass
class FixedBatch:
    """The samples explained at every check: images, their labels and masks, if any."""

    images: Tensor
    labels: Tensor | None = None
    masks: Masks | None = None

    def to(self, device: torch.device) -> FixedBatch:
        masks = None if self.masks is None else {name: m.to(device) for name, m in self.masks.items()}
        labels = None if self.labels is None else self.labels.to(device)
        return FixedBatch(self.images.to(device), labels, masks)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.cpu(), "labels": self.labels, "masks": self.masks}


@dataclass
class SampleBuffer:
    """Collects candidate samples from the batches the validation loop loads anyway.

    It keeps at most ``num_samples`` samples of each class and ``4 * num_samples`` in all (when
    full, a new class takes the place of the last sample of the largest class), and
    :meth:`select` takes them class by class in turn, so the fixed batch is balanced over the
    classes seen. No random numbers are drawn. Selected rows are cloned outside inference mode.
    """

    num_samples: int
    samples: dict[int | None, list[tuple[Tensor, Masks | None]]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(items) for items in self.samples.values())

    def add(self, images: Tensor, labels: Tensor | None, masks: Masks | None) -> None:
        classes: list[int | None] = [None] * len(images) if labels is None else labels.tolist()
        with torch.inference_mode(False), torch.no_grad():
            for row, label in enumerate(classes):
                kept = self.samples.setdefault(label, [])
                if len(kept) >= self.num_samples:
                    continue
                if self.size >= 4 * self.num_samples:
                    largest = max(self.samples.values(), key=len)
                    if len(largest) <= len(kept) + 1:
                        continue
                    largest.pop()
                sample_masks = None if masks is None else {name: m[row].clone() for name, m in masks.items()}
                kept.append((images[row].clone(), sample_masks))

    def is_complete(self, num_classes: int | None) -> bool:
        """Whether more batches could not make the selection more balanced."""
        if None in self.samples:
            return self.size >= self.num_samples
        if num_classes is None or len(self.samples) < num_classes:
            return False
        quota = -(-self.num_samples // num_classes)
        return all(len(items) >= quota for items in self.samples.values())

    def select(self) -> FixedBatch:
        """Up to ``num_samples`` samples, taking one of each class in turn (classes by first appearance)."""
        chosen: list[tuple[int | None, Tensor, Masks | None]] = []
        depth = 0
        while len(chosen) < self.num_samples and depth < self.num_samples:
            for label, items in self.samples.items():
                if depth < len(items) and len(chosen) < self.num_samples:
                    chosen.append((label, *items[depth]))
            depth += 1
        if not chosen:
            raise ValueError("no samples were captured")
        first_seen = {label: index for index, label in enumerate(self.samples)}
        chosen.sort(key=lambda item: first_seen[item[0]])  # rows grouped by class, stable
        images = torch.stack([image for _, image, _ in chosen])
        labels = (
            None
            if chosen[0][0] is None
            else torch.tensor([label for label, _, _ in chosen], device=images.device)
        )
        masks = None
        if chosen[0][2] is not None:
            names = chosen[0][2].keys()
            masks = {name: torch.stack([m[name] for _, _, m in chosen if m is not None]) for name in names}
        return FixedBatch(images, labels, masks)
