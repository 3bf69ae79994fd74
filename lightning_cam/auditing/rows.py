"""One audited batch: explain it with the shared pass and keep, per image, a few numbers (never its
maps): dataset index, label, target, prediction, confidence, group, and per method and mask the
attention mass and the pointing-game hit. The maps are only added to running sums per class and
group, for the mean maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_cam import metrics
from lightning_cam.batches import FixedBatch
from lightning_cam.engine import Explanation, explain_batch
from lightning_cam.engine.layers import TargetLayer
from lightning_cam.engine.layouts import ReshapeTransform
from lightning_cam.engine.logits import OutputKey
from lightning_cam.engine.spatial import resize
from lightning_cam.engine.targets import correctness, num_classes, prediction

__all__ = ["AuditSettings", "MapSums", "batch_columns", "explain_audited"]


@dataclass(frozen=True)
class AuditSettings:
    """What an audit explains and how (the options of :func:`lightning_cam.audit`)."""

    methods: Sequence[str]
    target_layer: TargetLayer = "auto"
    targets: str | int = "label"
    output_key: OutputKey = None
    reshape_transform: ReshapeTransform | str = "auto"
    method_options: dict[str, dict] = field(default_factory=dict)
    strategies: bool = False
    detection_score_threshold: float = 0.5


def _targets(settings: AuditSettings, batch: FixedBatch) -> Tensor | int | None:
    if settings.targets == "label" and batch.labels is None:
        raise ValueError(
            "audit(targets='label') needs labels in the batches; pass targets='predicted' (or a class index), "
            "or unpack=a function batch -> (images, labels, masks, groups)."
        )
    return batch.targets_for(settings.targets, settings.detection_score_threshold)


def explain_audited(network: nn.Module, batch: FixedBatch, settings: AuditSettings) -> Explanation:
    """The batch's maps of every method, from one guarded pass."""
    if batch.labels is not None and batch.labels.dim() != 1:
        raise ValueError(
            f"audit takes class labels [B] (multiclass or binary); got labels of shape {list(batch.labels.shape)}. "
            "For multi-label or segmentation labels pass unpack=a function that returns the class to audit "
            "per image (or None) as labels, and the region as a mask."
        )
    return explain_batch(
        network,
        batch.images,
        settings.methods,
        settings.target_layer,
        _targets(settings, batch),
        output_key=settings.output_key,
        reshape_transform=settings.reshape_transform,
        method_options=settings.method_options,
    )


def batch_columns(
    batch: FixedBatch, explanation: Explanation, indices: Tensor, group_codes: Tensor
) -> dict[str, Tensor]:
    """Per image: ``index``, ``label`` (``-1`` without labels), ``target``, ``predicted``,
    ``confidence``, ``correct`` (NaN without labels), ``group`` (``-1`` without), and per mask
    ``area/<mask>``, per method ``<method>/flat`` (1 for a flat map) and ``<method>/mass/<mask>``,
    ``<method>/hit/<mask>`` (NaN where the mask is empty or the map flat)."""
    device = explanation.logits.device
    check_labels(batch.labels, num_classes(explanation.scorer, explanation.logits), indices)
    confidence, predicted = prediction(explanation.scorer, explanation.logits)
    labels = batch.labels.to(device) if batch.labels is not None else torch.full_like(predicted, -1)
    columns = {
        "index": indices.to(device),
        "label": labels,
        "target": explanation.targets.to(device),
        "predicted": predicted,
        "confidence": confidence.float(),
        "correct": correctness(predicted, batch.labels),
        "group": group_codes.to(device),
    }
    for method, maps in explanation.maps.items():
        columns[f"{method}/flat"] = metrics.flat_maps(maps).float()
    for mask_name, mask in (batch.masks or {}).items():
        mask = mask.to(device)
        area = (mask > 0.5).flatten(1).float().mean(dim=1)
        columns[f"area/{mask_name}"] = torch.where(area > 0, area, torch.full_like(area, float("nan")))
        for method, maps in explanation.maps.items():
            columns[f"{method}/mass/{mask_name}"] = metrics.mass_in_mask(maps, mask).float()
            columns[f"{method}/hit/{mask_name}"] = metrics.pointing_game(maps, mask).float()
    return columns


def check_labels(
    labels: Tensor | None, classes: int, indices: Tensor, named: str = "dataset indices"
) -> None:
    """``ValueError`` naming the labels outside ``[0, classes)`` and their ``indices`` (a label the
    classifier cannot predict would be counted as wrong and get a class of its own in every figure)."""
    if labels is None or not classes or labels.dim() != 1:
        return
    outside = (labels < 0) | (labels >= classes)
    if bool(outside.any()):
        where = outside.nonzero().flatten().cpu()
        raise ValueError(
            f"labels must be class indices in [0, {classes - 1}] (the model has {classes} classes); got "
            f"{sorted(set(labels[outside].tolist()))} at {named} {indices.cpu()[where].tolist()[:10]}: "
            "check the dataset's labels, or the model's number of classes."
        )


@dataclass
class MapSums:
    """Running sums of each method's maps per slice (``class=<name>``, ``group=<name>``, ``all``), at the
    first batch's size (later maps of another size are resized to it); volumes' maps are summed whole."""

    methods: list[str]
    sums: dict[str, Tensor] = field(default_factory=dict)
    size: tuple[int, ...] | None = None

    def add(self, explanation: Explanation, slices: dict[str, Tensor]) -> None:
        """Add the maps of the images in each slice (``slices``: name -> ``[B]`` bool)."""
        stacked = torch.stack([explanation.maps[m] for m in self.methods], dim=1)  # [B, M, *spatial]
        if self.size is None:
            self.size = tuple(stacked.shape[2:])
        elif tuple(stacked.shape[2:]) != self.size:
            stacked = resize(stacked.flatten(0, 1), self.size).unflatten(0, stacked.shape[:2])
        for name, members in slices.items():
            total = stacked[members.to(stacked.device)].sum(dim=0)
            self.sums[name] = self.sums[name] + total if name in self.sums else total
