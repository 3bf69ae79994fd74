"""Detectors: what a box map explains, and where a detector's feature maps lie on its input images.

A torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD) returns one ``{"boxes", "labels",
"scores"}`` dict per image and resizes and pads its input inside ``model.transform`` before its
backbone runs: every feature map covers the **padded canvas**, on which image ``i`` fills only the
top-left ``resized[i]`` pixels. :class:`Canvas` records that layout during the explained forward
and maps a feature-grid map back to each original image (upsampled to the canvas, cropped to the
image's part, resized to the image's own size), so a map never spreads over the padding.

:func:`boxes` is the target: per reference box, the output box that overlaps it most, counted when
that overlap is above ``iou`` and its label matches, scoring ``IoU + detection score`` (the score of
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``), summed over an image's reference boxes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import ForwardHook, forward_hooks
from lightning_cam.engine.spatial import resize

__all__ = [
    "Boxes",
    "Canvas",
    "PredictedBoxes",
    "boxes",
    "check_score_threshold",
    "detached_detections",
    "detector_canvas",
    "is_box_output",
]

BOX_KEYS = ("boxes", "labels", "scores")


def is_box_output(output: Any) -> bool:
    """Whether ``output`` is a detector's: a list of dicts holding ``boxes``, ``labels`` and ``scores``."""
    return (
        isinstance(output, (list, tuple))
        and bool(output)
        and all(isinstance(item, dict) and all(key in item for key in BOX_KEYS) for item in output)
    )


def detached_detections(output: Any) -> list[dict[str, Tensor]] | None:
    """A detector's output without autograd history (its boxes, labels and scores), else ``None``."""
    if not is_box_output(output):
        return None
    return [{key: item[key].detach() for key in BOX_KEYS} for item in output]


def _image_score(detections: dict[str, Tensor], references: Tensor, labels: Tensor, iou: float) -> Tensor:
    """One image's box score; ``0 * sum(scores)`` keeps it in the graph when no box matches."""
    from torchvision.ops import box_iou  # torchvision is loaded wherever a detector is

    scores = detections["scores"]
    connected = 0 * scores.sum()
    if not len(references) or not len(scores):
        return connected
    overlaps = box_iou(references.to(detections["boxes"]), detections["boxes"])  # [references, detections]
    best, index = overlaps.max(dim=1)
    matched = (best > iou) & (detections["labels"][index] == labels.to(index.device))
    return (best + scores[index])[matched].sum() + connected


@dataclass(frozen=True)
class Boxes:
    """Reference boxes ``[N_i, 4]`` (x1, y1, x2, y2 in image ``i``'s pixels) and labels ``[N_i]`` per
    image; calling it on a detector's output gives one score per image (see the module's docstring)."""

    references: tuple[Tensor, ...]
    labels: tuple[Tensor, ...]
    iou: float = 0.5

    def __call__(self, output: Any) -> Tensor:
        if not is_box_output(output):
            raise ValueError(
                f"box targets read a detector's output, a list of {{'boxes', 'labels', 'scores'}} dicts per "
                f"image; the model returned {type(output).__name__}."
            )
        if len(output) != len(self.references):
            raise ValueError(
                f"box targets hold boxes for {len(self.references)} image(s); the detector returned "
                f"{len(output)} output(s)."
            )
        return torch.stack(
            [
                _image_score(detections, references, labels, self.iou)
                for detections, references, labels in zip(output, self.references, self.labels, strict=True)
            ]
        )


def check_score_threshold(threshold: float) -> float:
    """``threshold`` if it is a detection score in ``[0, 1)``; ``ValueError`` otherwise."""
    if not 0 <= threshold < 1:
        raise ValueError(f"detection_score_threshold must be in [0, 1); got {threshold!r}.")
    return threshold


@dataclass(frozen=True)
class PredictedBoxes:
    """Each image's own detections scoring at least ``threshold``: its score is their summed detection
    score (each matches itself, so :func:`boxes` of them adds only the constant IoU 1 per box)."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        check_score_threshold(self.threshold)

    def __call__(self, output: Any) -> Tensor:
        if not is_box_output(output):
            raise ValueError(f"predicted-box targets read a detector's output; got {type(output).__name__}.")
        return torch.stack([(s * (s >= self.threshold)).sum() for s in (item["scores"] for item in output)])


def boxes(
    references: Sequence[Tensor] | Tensor, labels: Sequence[Tensor] | Tensor, iou: float = 0.5
) -> Boxes:
    """A target for detectors: per image, reference ``references`` ``[N_i, 4]`` (x1, y1, x2, y2 in the
    image's pixels; a ``[B, N, 4]`` tensor for equal counts) and their ``labels`` ``[N_i]``. An image's
    score sums, over its reference boxes, ``IoU + score`` of the output box that overlaps the reference
    most, when that overlap is above ``iou`` and its label matches (pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget``, batched). Works on any model returning a list of ``{"boxes",
    "labels", "scores"}`` dicts (torchvision's Faster R-CNN, RetinaNet, FCOS, SSD), no ``output_key``.

    Example::

        >>> target = lc.targets.boxes([torch.tensor([[10.0, 20.0, 60.0, 90.0]])], [torch.tensor([3])])
        >>> maps = lc.explain(detector, [image], "gradcam", targets=target)  # doctest: +SKIP
    """
    references, labels = list(references), list(labels)
    if len(references) != len(labels):
        raise ValueError(
            f"boxes needs one label tensor per image's boxes; got {len(references)} box tensors and "
            f"{len(labels)} label tensors."
        )
    checked = []
    for image, (box, label) in enumerate(zip(references, labels, strict=True)):
        box, label = torch.as_tensor(box, dtype=torch.float32), torch.as_tensor(label).long()
        if box.dim() != 2 or box.shape[1] != 4 or label.shape != (len(box),):
            raise ValueError(
                f"image {image}: boxes must be [N, 4] (x1, y1, x2, y2) with labels [N]; got boxes "
                f"{list(box.shape)} and labels {list(label.shape)}."
            )
        if bool((box[:, 2:] < box[:, :2]).any()):
            raise ValueError(f"image {image}: a box has x2 < x1 or y2 < y1; boxes are (x1, y1, x2, y2).")
        checked.append((box, label))
    if not 0 <= iou < 1:
        raise ValueError(f"iou must be in [0, 1); got {iou!r}.")
    return Boxes(tuple(b for b, _ in checked), tuple(label for _, label in checked), float(iou))


@dataclass
class Canvas:
    """Where the images lay on the batch a detector's transform built: the padded canvas ``(H, W)``,
    each image's resized ``(h, w)`` on it, and its original ``(H_i, W_i)``."""

    padded: tuple[int, int] | None = None
    resized: list[tuple[int, int]] = field(default_factory=list)
    original: list[tuple[int, int]] = field(default_factory=list)

    def place(self, maps: Tensor) -> list[Tensor]:
        """Feature-grid maps ``[B, h, w]`` over the canvas -> one map per image at its original size."""
        assert self.padded is not None, "the detector's transform did not run"
        on_canvas = resize(maps, self.padded)
        return [
            resize(on_canvas[i : i + 1, :height, :width], original)[0]
            for i, ((height, width), original) in enumerate(zip(self.resized, self.original, strict=True))
        ]


def detector_transforms(model: nn.Module) -> list[nn.Module]:
    """The detector input transforms (torchvision's ``GeneralizedRCNNTransform``) inside ``model``; none
    when torchvision's detection models were never imported (so a classifier pays no import)."""
    transforms = sys.modules.get("torchvision.models.detection.transform")
    if transforms is None:
        return []
    return [module for module in model.modules() if isinstance(module, transforms.GeneralizedRCNNTransform)]


@contextmanager
def detector_canvas(model: nn.Module) -> Iterator[Canvas | None]:
    """Record the canvas of the detector transform's forward (``None`` for a model without one)."""
    transforms = detector_transforms(model)
    if not transforms:
        yield None
        return
    canvas = Canvas()

    def hook_for(index: int) -> ForwardHook:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            batch = output[0]
            canvas.padded = tuple(batch.tensors.shape[-2:])
            canvas.resized = [tuple(size) for size in batch.image_sizes]
            canvas.original = [tuple(image.shape[-2:]) for image in inputs[0]]

        return record

    with forward_hooks(transforms, hook_for):
        yield canvas
