"""Reading batches: a tuple, a dict or a user ``unpack`` -> images, labels, masks and groups
(:class:`FixedBatch`).

Shared by the monitor (its fixed samples) and the full audit (every image), so it sits above both
wings; it imports torch only."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_cam.engine.detection import PredictedBoxes, boxes
from lightning_cam.engine.targets import Targets

__all__ = [
    "FixedBatch",
    "Groups",
    "Masks",
    "Unpacked",
    "box_union",
    "chunked",
    "describe",
    "missing_groups_message",
    "primary_classes",
    "unpack_batch",
]

Masks = dict[str, Tensor]
Groups = list[int | str]
Unpacked = (
    tuple[Tensor, Tensor | None, Masks | None]
    | tuple[Tensor, Tensor | None, Masks | None, Groups | Tensor | None]
)


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive pieces of at most ``size`` (the last may be shorter).

    Example::

        >>> chunked([1, 2, 3, 4, 5], 2)
        [[1, 2], [3, 4], [5]]
    """
    return [items[start : start + size] for start in range(0, len(items), size)]


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


def _as_groups(value: Any, batch: int) -> Groups | None:
    if value is None:
        return None
    groups = (
        value.tolist()
        if isinstance(value, Tensor)
        else list(value)
        if isinstance(value, (list, tuple))
        else None
    )
    if groups is None or len(groups) != batch or not all(isinstance(g, (int, str)) for g in groups):
        raise ValueError(
            f"groups must hold one int or string per image ({batch}), e.g. a tensor [B] of site ids or a list "
            f"of names; got {describe(value)}."
        )
    return groups


def _split(
    batch: Any, unpack: Callable[[Any], Unpacked] | None, keys: tuple[str, str, str, str]
) -> tuple[Any, Any, Any, Any]:
    image_key, label_key, mask_key, group_key = keys
    if unpack is not None:
        unpacked = unpack(batch)
        if not isinstance(unpacked, (tuple, list)) or len(unpacked) not in (3, 4):
            raise ValueError(
                f"unpack must return (images, labels, masks) or (images, labels, masks, groups); it returned "
                f"{describe(unpacked)}."
            )
        if len(unpacked) == 4:
            return tuple(unpacked)
        carried = batch.get(group_key) if isinstance(batch, Mapping) else None  # groups the unpack left out
        return (*unpacked, carried)
    if isinstance(batch, Tensor):
        return batch, None, None, None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 4:
        return tuple(batch) + (None,) * (4 - len(batch))
    if isinstance(batch, Mapping) and image_key in batch:
        return (
            batch[image_key],
            batch.get(label_key),
            batch.get(mask_key, batch.get("masks")),
            batch.get(group_key),
        )
    raise ValueError(
        f"CAMMonitor cannot read this batch: {describe(batch)}. It reads a tensor, a tuple "
        f"(images, labels[, masks[, groups]]) or a dict with keys {image_key!r}, {label_key!r}, {mask_key!r}, "
        f"{group_key!r}; pass image_key/label_key/mask_key/group_key, or unpack=a function batch -> "
        f"(images, labels, masks[, groups])."
    )


def primary_classes(labels: Tensor) -> Tensor:
    """One class per image, to balance the captured samples: the label; a multi-hot row's first
    positive class; a label map's largest class other than 0 (background), else 0."""
    if labels.dim() == 1:
        return labels.long()
    if labels.dim() == 2:
        return (labels > 0.5).float().argmax(dim=1)
    flat = labels.flatten(1).long()
    size = max(2, int(flat.max()) + 1)
    counts = torch.zeros(len(flat), size, dtype=torch.long, device=flat.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))  # pixels per class, every image at once
    foreground = counts[:, 1:].argmax(dim=1) + 1
    return torch.where(counts[:, 1:].amax(dim=1) > 0, foreground, torch.zeros_like(foreground))


def _readable_labels(labels: object, images: Tensor) -> bool:
    """Class indices ``[B]``, multi-hot rows ``[B, C]`` (0/1, any dtype) or integer label maps ``[B, H, W]``."""
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2, 3) or len(labels) != len(images):
        return False
    if labels.dim() == 2:
        return bool(((labels == 0) | (labels == 1)).all())
    if labels.dim() == 3 and tuple(labels.shape[1:]) != tuple(images.shape[-2:]):
        return False
    return not labels.is_floating_point()


def _unwrapped(labels: Any) -> Any:
    """Labels a collate wrapped in a one-element list or tuple (``[tensor([...])]``), unwrapped."""
    if isinstance(labels, (list, tuple)) and len(labels) == 1 and isinstance(labels[0], Tensor):
        return labels[0]
    return labels


def unpack_batch(
    batch: Any,
    unpack: Callable[[Any], Unpacked] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str = "mask",
    group_key: str = "group",
) -> FixedBatch:
    """Read images, labels, masks and groups out of a batch.

    Without ``unpack``: a tensor (images only), a tuple/list ``(x, y[, masks[, groups]])``, or a dict
    with ``image_key``, ``label_key``, ``mask_key`` (or ``"masks"``) and ``group_key``. ``masks`` is a
    tensor ``[B, H, W]`` (named ``mask_key``) or a dict of named masks; ``groups`` one int or string
    per image (site, sex, scanner). Anything else raises ``ValueError`` showing the batch's structure.

    Example::

        >>> parts = unpack_batch({"image": torch.rand(2, 3, 8, 8), "label": torch.tensor([0, 1])})
        >>> parts.labels.tolist(), parts.masks, parts.groups
        ([0, 1], None, None)
    """
    images, labels, masks, groups = _split(batch, unpack, (image_key, label_key, mask_key, group_key))
    if _is_detection_batch(images, labels):
        return _detection_batch(images, labels, _as_masks(masks, mask_key), groups)
    labels = _unwrapped(labels)
    readable = isinstance(images, Tensor) and (images.is_floating_point() or images.dtype == torch.uint8)
    if not readable or images.dim() not in (4, 5):
        raise ValueError(
            f"CAMMonitor needs images as a float or uint8 tensor [B, C, H, W] (or volumes [B, C, D, H, W]); the batch "
            f"{describe(batch)} gave "
            f"{describe(images)}. Pass unpack=a function batch -> (images, labels, masks)."
        )
    if labels is not None and not _readable_labels(labels, images):
        raise ValueError(
            f"CAMMonitor needs labels as integer class indices [B] ({len(images)}), multi-hot rows [B, C] or "
            f"label maps [B, H, W] of the images' size; got {describe(labels)}. Pass unpack=a function "
            f"batch -> (images, labels or None, masks)."
        )
    return FixedBatch(images, labels, _as_masks(masks, mask_key), _as_groups(groups, len(images)))


def _is_detection_batch(images: Any, labels: Any) -> bool:
    """A detection batch: a list of images ``[C, H, W]`` and one ``{"boxes", "labels"}`` dict per image."""
    return (
        isinstance(images, (list, tuple))
        and isinstance(labels, (list, tuple))
        and bool(labels)
        and all(isinstance(item, Mapping) and "boxes" in item and "labels" in item for item in labels)
    )


def _detection_batch(
    images: Sequence[Any], targets: Sequence[Mapping], masks: Masks | None, groups: Any
) -> FixedBatch:
    """A detection batch as a :class:`FixedBatch`: the images stacked (the monitor's fixed samples share
    one size), each image's first box's label as its class (``0``, background, without boxes) and the
    union of its boxes as the mask ``boxes``."""
    if not all(isinstance(image, Tensor) and image.dim() == 3 for image in images):
        raise ValueError(f"detection batches hold images [C, H, W]; got {describe(list(images))}.")
    sizes = sorted({tuple(image.shape) for image in images})
    if len(sizes) > 1:
        raise ValueError(
            f"CAMMonitor's detection task keeps fixed samples of one size; this batch has images of sizes "
            f"{[list(size) for size in sizes[:4]]}. Resize the monitored validation images to one size "
            f"(lightning_cam.explain itself takes lists of any sizes)."
        )
    stacked = torch.stack(list(images))
    boxes = [
        {"boxes": t["boxes"].float().reshape(-1, 4), "labels": t["labels"].long().reshape(-1)}
        for t in targets
    ]
    classes = torch.tensor([int(t["labels"][0]) if len(t["labels"]) else 0 for t in boxes])
    union = torch.stack([box_union(t["boxes"], tuple(stacked.shape[-2:])) for t in boxes])
    return FixedBatch(
        stacked, classes, {**(masks or {}), "boxes": union}, _as_groups(groups, len(stacked)), boxes
    )


def box_union(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``[H, W]``: 1 on every pixel that a box ``(x1, y1, x2, y2)`` of ``boxes`` ``[N, 4]`` covers (a
    pixel ``(x, y)`` spans ``[x, x + 1)``: covered where that span overlaps the box), else 0."""
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))  # [N, 1, 1] each
    ys = torch.arange(size[0], device=boxes.device, dtype=boxes.dtype)[:, None]
    xs = torch.arange(size[1], device=boxes.device, dtype=boxes.dtype)[None, :]
    inside = (xs + 1 > x1) & (xs < x2) & (ys + 1 > y1) & (ys < y2)  # [N, H, W]
    return inside.any(dim=0).to(boxes.dtype)


def missing_groups_message(owner: str, group_names: Sequence[str], group_key: str) -> str:
    """What to say when ``group_names`` was given but no batch carried groups."""
    return (
        f"{owner} got group_names={list(group_names)} but no batch carried groups, so nothing is reported per "
        f"group. Groups are read from the key {group_key!r} of dict batches (group_key=...), the 4th element of "
        f"tuple batches, or the 4th value unpack returns."
    )


def group_name(group: object, group_names: Sequence[str] | None = None) -> str:
    """The name of a group id (an int indexing ``group_names``, or a string), safe inside a tag."""
    if isinstance(group, int) and group_names is not None and 0 <= group < len(group_names):
        group = group_names[group]
    return str(group).replace("/", "_")


@dataclass
class FixedBatch:
    """Samples to explain: images, and their labels, masks and groups where the batch has them."""

    images: Tensor
    labels: Tensor | None = None
    masks: Masks | None = None
    groups: Groups | None = None
    boxes: list[dict[str, Tensor]] | None = None
    """Detection batches: each image's ground-truth ``{"boxes" [N, 4], "labels" [N]}``."""

    def to(self, device: torch.device) -> FixedBatch:
        """The same samples with every tensor on ``device``."""
        masks = None if self.masks is None else {name: m.to(device) for name, m in self.masks.items()}
        labels = None if self.labels is None else self.labels.to(device)
        boxes = None if self.boxes is None else [{k: v.to(device) for k, v in b.items()} for b in self.boxes]
        return FixedBatch(self.images.to(device), labels, masks, self.groups, boxes)

    def targets_for(self, choice: str | int, score_threshold: float = 0.5) -> Targets:
        """What a target choice explains: ``"predicted"`` -> ``None`` (the model's prediction), ``"label"``
        -> the labels, a class index as it is. Detection batches: ``"label"`` -> the ground-truth boxes,
        ``"predicted"`` -> each image's detections scoring at least ``score_threshold``."""
        if self.boxes is not None:
            if choice == "label":
                return boxes([b["boxes"] for b in self.boxes], [b["labels"] for b in self.boxes])
            if choice == "predicted":
                return PredictedBoxes(score_threshold)
            raise ValueError(f"detection monitoring explains targets 'label' or 'predicted'; got {choice!r}.")
        if choice == "predicted":
            return None
        return self.labels if choice == "label" else choice

    def state_dict(self) -> dict[str, Any]:
        """Every tensor on the CPU, for the checkpoint."""
        return vars(self.to(torch.device("cpu")))
