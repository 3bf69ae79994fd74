"""What CAMMonitor explains for each kind of model, from its labels: ``multiclass`` and ``binary``
(labels ``[B]``: the target choices as given), ``multilabel`` (multi-hot labels ``[B, C]``: a row per
image and positive class) and ``segmentation`` (label maps ``[B, H, W]``: each image's largest
labelled class, its label region as the mask ``label``) and ``detection`` (lists of images and of
``{"boxes", "labels"}``: the ground-truth boxes or the detections, their union as the mask ``boxes``).
No Lightning in it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_cam.batches import FixedBatch, primary_classes
from lightning_cam.engine.targets import Targets, multilabel, segmentation

__all__ = ["TASKS", "TaskView", "infer_task", "primary_classes", "task_view"]

TASKS = ("multiclass", "binary", "multilabel", "segmentation", "detection")


def infer_task(task: str | None, labels: Tensor | None, boxes: object = None) -> str:
    """``task`` when given, else ``detection`` where the batch carried boxes, else from the labels' shape
    (``[B]`` multiclass or binary: the model's output tells those apart; ``[B, C]`` multilabel;
    ``[B, H, W]`` segmentation)."""
    if task is not None:
        return task
    if boxes is not None:
        return "detection"
    if labels is None or labels.dim() == 1:
        return "multiclass"
    return "multilabel" if labels.dim() == 2 else "segmentation"


@dataclass(frozen=True)
class TaskView:
    """The rows a task explains: their batch (images repeated per positive class for multilabel), the
    target they share whatever the choice (``None``: per choice), and each row's class."""

    fixed: FixedBatch
    target: Targets
    classes: Tensor | None
    task: str


def task_view(fixed: FixedBatch, task: str, max_rows: int) -> TaskView:
    """The view of ``fixed`` that ``task`` explains (see the module's docstring)."""
    labels = fixed.labels
    if task == "multilabel" and labels is not None:
        image_rows, classes = (labels > 0.5).nonzero(as_tuple=True)
        image_rows, classes = image_rows[:max_rows], classes[:max_rows]
        masks = None if fixed.masks is None else {name: m[image_rows] for name, m in fixed.masks.items()}
        groups = None if fixed.groups is None else [fixed.groups[i] for i in image_rows.tolist()]
        rows = FixedBatch(fixed.images[image_rows], classes, masks, groups)
        return TaskView(rows, multilabel(classes), classes, task)
    if task == "segmentation" and labels is not None:
        classes = primary_classes(labels).to(labels.device)
        region = (labels.long() == classes[:, None, None]).float()
        masks = {**(fixed.masks or {}), "label": region}
        rows = FixedBatch(fixed.images, classes, masks, fixed.groups)
        return TaskView(rows, segmentation(classes, region), classes, task)
    return TaskView(fixed, None, None, task)
