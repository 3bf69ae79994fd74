"""Planted shortcuts nobody drew a mask for, of several shapes and places, and controls.

A cue is drawn on 40 % of class 0's images (48 px shapes on a plain background), and such an image shows
another class's shape, so the cue is the only way to its label: a model trained on them reads the cue.
The cues (:data:`CUES`): a 6x6 magenta tag (top left, bottom left), a faint thin line along an edge (the
bottom, the right), a caption of five small glyphs (bottom centre, top right) and a ring-shaped logo.
The controls (:data:`CONTROLS`): no cue at all (``"none"``, the model trained without the tag: the tag is
still drawn on the validation images, a cue it does not use), objects as small as the tag and no cue
(``"small"``), a tag on 40 % of every class's images whatever the label (``"unused"``) and a global colour
tint in place of the cue (``"tint"``: a cue of no place)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lit_helpers import TinyClassifier
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN

SIZE = 48
BACKGROUND = 0.35
TAG_COLOUR = (1.0, 0.0, 1.0)
TAG = (slice(2, 8), slice(2, 8))
GLYPHS = (  # five 3x5 glyphs: L, C, A, M, 7
    ("100", "100", "100", "100", "111"),
    ("111", "100", "100", "100", "111"),
    ("010", "101", "111", "101", "101"),
    ("101", "111", "111", "101", "101"),
    ("111", "001", "010", "010", "010"),
)


def _box(rows: slice, columns: slice) -> Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[rows, columns] = True
    return mask


def _caption(top: int, left: int) -> Tensor:
    """Five 3x5 glyphs in a row, a pixel apart, their top left corner at (top, left)."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    for number, glyph in enumerate(GLYPHS):
        bits = torch.tensor([[c == "1" for c in row] for row in glyph])
        mask[top : top + 5, left + 4 * number : left + 4 * number + 3] = bits
    return mask


def _ring(row: int, column: int, outer: float = 4.5, inner: float = 2.5) -> Tensor:
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    distance = ((grid.view(-1, 1) - row) ** 2 + (grid.view(1, -1) - column) ** 2).sqrt()
    return (distance <= outer) & (distance >= inner)


CUES: dict[str, tuple[Tensor, tuple[float, float, float]]] = {
    "tag": (_box(TAG[0], TAG[1]), TAG_COLOUR),
    "tag_bottom_left": (_box(slice(40, 46), slice(2, 8)), TAG_COLOUR),
    "line_bottom": (_box(slice(46, 48), slice(0, SIZE)), (0.55, 0.55, 0.55)),
    "line_right": (_box(slice(0, SIZE), slice(46, 48)), (0.5, 0.5, 0.6)),
    "text_bottom": (_caption(41, 14), (0.05, 0.05, 0.05)),
    "text_top_right": (_caption(2, 27), (0.95, 0.95, 0.2)),
    "logo": (_ring(40, 40), (0.1, 0.8, 0.9)),
}
CONTROLS = ("none", "small", "unused", "tint")
TINT = torch.tensor([0.25, 0.0, -0.2]).view(3, 1, 1)


def planted(num: int, seed: int, cue: str = "tag") -> tuple[Tensor, Tensor, Tensor]:
    """``(images [N, 3, 48, 48], labels [N], cued [N] bool)``: ``cue`` one of :data:`CUES` or
    :data:`CONTROLS` (``"none"`` marks the tag's images without drawing it)."""
    generator = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(4, (num,), generator=generator)
    chosen = torch.rand(num, generator=generator) < 0.4
    cued = chosen if cue == "unused" else (labels == 0) & chosen
    swapped = torch.randint(1, 4, (num,), generator=generator)
    shapes = labels if cue in ("none", "small", "unused") else torch.where(cued, swapped, labels)
    size = (0.05, 0.08) if cue == "small" else (0.14, 0.24)
    data = make_shapes(ShapesConfig(3 * num, None, SIZE, cue_size=0, object_size=size, seed=seed))
    objects = data["object"][:, None]
    drawn = data["image"] * objects + BACKGROUND * (1 - objects)  # each shape on a plain background
    order = torch.cat([(data["label"] == c).nonzero().flatten() for c in range(4)])
    rank = torch.zeros(
        num, dtype=torch.long
    )  # the k-th image showing shape s takes that shape's k-th drawing
    for c in range(4):
        rank[shapes == c] = torch.arange(int((shapes == c).sum()))
    starts = torch.cat(
        [torch.zeros(1, dtype=torch.long), (data["label"] == torch.arange(4)[:, None]).sum(1).cumsum(0)]
    )
    images = drawn[order[starts[shapes] + rank]]  # every object drawn once: no two images alike
    if cue == "tint":
        images[cued] = (images[cued] + TINT).clamp(0, 1)
    elif cue in CUES or cue == "unused":
        mask, colour = CUES["tag" if cue == "unused" else cue]
        images[cued] = torch.where(mask, torch.tensor(colour).view(3, 1, 1), images[cued])
    return images, labels, cued


def planted_model(seed: int, cue: str = "tag", epochs: int = 8) -> SmallCNN:
    """The demo CNN (width 8) trained with Adam on 1,024 planted images (a few seconds), its BatchNorm
    statistics recalibrated. ``cue="none"``: trained on the same images without any cue."""
    torch.manual_seed(seed)
    images, labels, _ = planted(1024, seed, cue)
    model = SmallCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        for batch, targets in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(batch), targets).backward()
            optimizer.step()
    return recalibrated(model, loader)


def recalibrated(model: SmallCNN, loader: DataLoader) -> SmallCNN:
    """The model in eval mode with its BatchNorm statistics recomputed over the training images (the
    running averages lag the last steps: without this, seed 4's model predicted class 0 for 68 % of the
    validation images; with it every seed's model is 99-100 % accurate)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the pass
    with torch.no_grad():
        for batch, _ in loader:
            model(batch)
    return model.eval()


def planted_validation(cue: str = "tag") -> tuple[DataLoader, Tensor]:
    """240 validation images (batches of 60) with ``cue`` planted as in training (``"none"``: the tag,
    which that model never saw), and which of them carry it."""
    images, labels, cued = planted(240, 1000, "tag" if cue == "none" else cue)
    return DataLoader(TensorDataset(images, labels), batch_size=60), cued


class PlantedClassifier(TinyClassifier):
    """:func:`planted_model`'s network and optimiser as a LightningModule, on (images, labels) batches."""

    def __init__(self) -> None:
        super().__init__(width=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), 3e-3)


def planted_train_loader(seed: int, cue: str = "tag") -> DataLoader:
    images, labels, _ = planted(1024, seed, cue)
    return DataLoader(
        TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def audit_planted(seed: int, cue: str) -> tuple[Any, Tensor]:
    """The audit with strategies of :func:`planted_model` on :func:`planted_validation` (Grad-CAM, the
    predicted class), and which validation images carry the cue."""
    import lightning_cam as lc

    val, cued = planted_validation(cue)
    model = planted_model(seed, cue)
    return lc.audit(
        model, val, "gradcam", targets="predicted", progress=False, strategies=True, bootstrap_samples=0
    ), cued


def cue_statistics(strategies: list[Any], cued: Tensor, cue: str) -> dict[str, float]:
    """What the tests assert about the flagged strategies of a planted cue: how many are flagged and how
    many of those are not the cue's (``purity`` under a half), the lowest ``purity`` (share of members
    carrying the cue) and ``evidence``, ``recall`` (share of the cued images in a flagged strategy),
    ``coverage`` (the lowest share of the cue's pixels inside a flagged region) and ``spill`` (the largest
    share of a flagged region more than two pixels from the cue)."""
    mask = CUES[cue if cue in CUES else "tag"][0]  # a control: where the tag is (or would be)
    near = F.max_pool2d(mask[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0
    carriers = set(cued.nonzero().flatten().tolist())
    flagged = [s for s in strategies if s.flagged]
    purity = [len(set(s.indices) & carriers) / len(s.indices) for s in flagged]
    members = set().union(*(set(s.indices) for s in flagged)) if flagged else set()
    nan = float("nan")
    return {
        "flagged": float(len(flagged)),
        "not_the_cue": float(sum(p < 0.5 for p in purity)),
        "purity": min(purity, default=nan),
        "evidence": min((s.evidence for s in flagged), default=nan),
        "recall": len(members & carriers) / max(1, len(carriers)),
        "coverage": min((float(s.region[mask].float().mean()) for s in flagged), default=nan),
        "spill": max((float((s.region & ~near).sum() / s.region.sum()) for s in flagged), default=nan),
        "local_evidence": max(
            (
                s.evidence
                for s in strategies
                if s.on_pattern and s.region_area <= 0.25 and s.evidence == s.evidence
            ),
            default=0.0,
        ),
    }


class PlantedData(pl.LightningDataModule):
    """:func:`planted_validation` (the tag) as a data module, for ``lightning-cam audit``."""

    def val_dataloader(self) -> DataLoader:
        return planted_validation("tag")[0]
