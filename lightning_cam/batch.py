"""Reading batches and choosing the fixed samples that CAMMonitor explains at every check."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Capture",
    "FixedBatch",
    "Groups",
    "Masks",
    "SampleBuffer",
    "Unpacked",
    "describe",
    "primary_classes",
    "unpack_batch",
]

Masks = dict[str, Tensor]
Groups = list[int | str]
Unpacked = (
    tuple[Tensor, Tensor | None, Masks | None]
    | tuple[Tensor, Tensor | None, Masks | None, Groups | Tensor | None]
)


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
        return (*unpacked, None) if len(unpacked) == 3 else tuple(unpacked)
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
    if not isinstance(images, Tensor) or images.dim() not in (4, 5) or not images.is_floating_point():
        raise ValueError(
            f"CAMMonitor needs images as a float tensor [B, C, H, W] (or volumes [B, C, D, H, W]); the batch "
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

    def to(self, device: torch.device) -> FixedBatch:
        """The same samples with every tensor on ``device``."""
        masks = None if self.masks is None else {name: m.to(device) for name, m in self.masks.items()}
        labels = None if self.labels is None else self.labels.to(device)
        return FixedBatch(self.images.to(device), labels, masks, self.groups)

    def targets_for(self, choice: str | int) -> Tensor | int | None:
        """What a target choice explains: ``"predicted"`` -> ``None`` (the model's prediction), ``"label"``
        -> the labels, a class index as it is."""
        if choice == "predicted":
            return None
        return self.labels if choice == "label" else choice

    def state_dict(self) -> dict[str, Any]:
        """Every tensor on the CPU, for the checkpoint."""
        return vars(self.to(torch.device("cpu")))


@dataclass
class SampleBuffer:
    """Collects candidate samples from the batches the validation loop loads anyway.

    It keeps at most ``num_samples`` samples of each class and ``4 * num_samples`` in all (when
    full, a new class takes the place of the last sample of the largest class), and
    :meth:`select` takes them class by class in turn, so the fixed batch is balanced over the
    classes seen. No random numbers are drawn. Selected rows are cloned outside inference mode.
    """

    num_samples: int
    samples: dict[int | None, list[tuple[Tensor, Masks | None, int | str | None]]] = field(
        default_factory=dict
    )

    @property
    def size(self) -> int:
        return sum(len(items) for items in self.samples.values())

    def add(self, batch: FixedBatch) -> None:
        """Keep copies of the rows of ``batch`` that make the selection more balanced."""
        classes: list[int | None] = (
            [None] * len(batch.images) if batch.labels is None else primary_classes(batch.labels).tolist()
        )
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
                masks = (
                    None if batch.masks is None else {name: m[row].clone() for name, m in batch.masks.items()}
                )
                group = None if batch.groups is None else batch.groups[row]
                label = None if batch.labels is None else batch.labels[row].clone()
                kept.append((batch.images[row].clone(), label, masks, group))

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
        chosen: list[tuple[int | None, Tensor, Tensor | None, Masks | None, int | str | None]] = []
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
        _, images, labels, masks, groups = zip(*chosen, strict=True)
        stacked = torch.stack(images)
        return FixedBatch(
            stacked,
            None if labels[0] is None else torch.stack(labels),
            None if masks[0] is None else {name: torch.stack([m[name] for m in masks]) for name in masks[0]},
            None if groups[0] is None else list(groups),
        )


class Capture:
    """Takes the fixed samples from batches the loop loads anyway: reads each batch (``read``), keeps
    a balanced selection (:class:`SampleBuffer`) and hands it over once, as a :class:`FixedBatch`."""

    def __init__(self, num_samples: int, num_classes: int | None, read: Callable[[Any], FixedBatch]) -> None:
        self.num_samples, self.num_classes, self.read = num_samples, num_classes, read
        self.buffer = SampleBuffer(num_samples)

    @property
    def complete(self) -> bool:
        """Whether more batches could not make the selection more balanced."""
        return self.buffer.is_complete(self.num_classes)

    def add(self, batch: Any) -> None:
        """Read ``batch`` and keep what balances the selection (a ``ValueError`` names an unreadable batch)."""
        if not self.complete:
            self.buffer.add(self.read(batch))

    def finish(self) -> FixedBatch | None:
        """The selection so far (``None`` when nothing was captured); the buffer starts over."""
        if self.buffer.size == 0:
            return None
        fixed, self.buffer = self.buffer.select(), SampleBuffer(self.num_samples)
        return fixed
