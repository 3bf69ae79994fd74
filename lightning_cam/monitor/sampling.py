"""Choosing the fixed samples that CAMMonitor explains at every check, from the batches the
validation loop loads anyway (no second pass over the data, no random numbers drawn)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_cam.batches import FixedBatch, Masks, primary_classes

__all__ = ["Capture", "SampleBuffer"]


@dataclass
class SampleBuffer:
    """Collects candidate samples from the batches the validation loop loads anyway.

    It keeps at most ``num_samples`` samples of each class and ``4 * num_samples`` in all (when
    full, a new class takes the place of the last sample of the largest class), and
    :meth:`select` takes them class by class in turn, so the fixed batch is balanced over the
    classes seen. No random numbers are drawn. Selected rows are cloned outside inference mode.
    """

    num_samples: int
    samples: dict[int | None, list[tuple[Tensor, Tensor | None, Masks | None, int | str | None, Any]]] = (
        field(default_factory=dict)
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
                boxes = None if batch.boxes is None else {k: v.clone() for k, v in batch.boxes[row].items()}
                kept.append((batch.images[row].clone(), label, masks, group, boxes))

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
        chosen: list[tuple[int | None, Tensor, Tensor | None, Masks | None, int | str | None, Any]] = []
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
        _, images, labels, masks, groups, boxes = zip(*chosen, strict=True)
        stacked = torch.stack(images)
        return FixedBatch(
            stacked,
            None if labels[0] is None else torch.stack(labels),
            None if masks[0] is None else {name: torch.stack([m[name] for m in masks]) for name in masks[0]},
            None if groups[0] is None else list(groups),
            None if boxes[0] is None else list(boxes),
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
