"""The detection demo: squares to detect on noise, with a shortcut in their context, and a small
Faster R-CNN trained by Lightning with CAMMonitor attached.

Each 64x64 image holds one square, bright (class 1, "bright") or dark (class 2, "dark"), whose box is
the ground truth, and a coloured tag in the top-left corner, red for "bright" and blue for "dark" on
``cue_strength`` of the training images (the other colour on the rest): a model may read the class off
the tag, outside every box. The monitor's mask ``boxes`` (the objects) and mask ``cue`` (the tag) say
where its attention sits. The validation images draw the tag's colour at random.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from lightning_cam.monitor import CAMMonitor

__all__ = [
    "DETECTION_CLASSES",
    "DetectionDemoResult",
    "ShapesDetector",
    "collate_detection",
    "make_detection_shapes",
    "run_detection_demo",
    "small_faster_rcnn",
]

DETECTION_CLASSES = ["background", "bright", "dark"]
TAG = 8  # the tag's side, in pixels
TAG_COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.1, 0.9)}


def small_faster_rcnn(num_classes: int = 3, size: int = 64, box_score_thresh: float = 0.05) -> FasterRCNN:
    """Faster R-CNN on a ResNet-18 FPN with random weights, taking images at ``size`` pixels, with few
    proposals (one object per image; a CPU trains it in minutes), in train mode (Lightning keeps a
    submodule's mode: one built in eval mode would stay so)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return FasterRCNN(
        backbone,
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        box_score_thresh=box_score_thresh,
        rpn_pre_nms_top_n_train=256,
        rpn_post_nms_top_n_train=128,
        rpn_pre_nms_top_n_test=128,
        rpn_post_nms_top_n_test=64,
        box_batch_size_per_image=64,
    ).train()


def make_detection_shapes(
    count: int, seed: int, cue_strength: float | None = 0.95, size: int = 64
) -> list[tuple[Tensor, dict[str, Tensor], Tensor]]:
    """``count`` samples ``(image [3, size, size], {"boxes" [1, 4], "labels" [1]}, cue mask [size, size])``;
    the tag agrees with the class on ``cue_strength`` of them (``None``: a random colour)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        label = 1 + index % 2
        image = 0.5 + 0.08 * torch.randn(3, size, size, generator=generator)
        side = int(torch.randint(14, 26, (1,), generator=generator))
        x, y = (int(v) for v in torch.randint(TAG + 2, size - side, (2,), generator=generator))
        image[:, y : y + side, x : x + side] = 0.9 if label == 1 else 0.1
        agrees = float(torch.rand(1, generator=generator)) < (0.5 if cue_strength is None else cue_strength)
        colour = TAG_COLOURS[label if agrees else 3 - label]
        image[:, :TAG, :TAG] = torch.tensor(colour).view(3, 1, 1)
        cue = torch.zeros(size, size)
        cue[:TAG, :TAG] = 1
        box = torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32)
        samples.append((image.clamp(0, 1), {"boxes": box, "labels": torch.tensor([label])}, cue))
    return samples


def collate_detection(batch: list[tuple[Tensor, dict, Tensor]]) -> tuple[list, list, dict[str, Tensor]]:
    """torchvision's detection batches (a list of images, a list of targets), with the masks stacked."""
    return (
        [item[0] for item in batch],
        [item[1] for item in batch],
        {"cue": torch.stack([i[2] for i in batch])},
    )


class ShapesDetector(pl.LightningModule):
    """A Faster R-CNN trained by Lightning on detection batches (SGD with momentum); it reports the
    detections scoring at least ``box_score_thresh``."""

    def __init__(self, lr: float = 0.01, box_score_thresh: float = 0.05) -> None:
        super().__init__()
        self.detector, self.lr = small_faster_rcnn(box_score_thresh=box_score_thresh), lr

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.detector(images)

    def training_step(self, batch: tuple[list, list, dict], batch_idx: int) -> Tensor:
        losses = self.detector(batch[0], batch[1])
        loss = sum(losses.values())
        self.log("train_loss", loss, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[list, list, dict], batch_idx: int) -> None:
        self.detector(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)


@dataclass(frozen=True)
class DetectionDemoResult:
    """Where the logs are, how long it took, and the last check's attention per method: the mean share
    of each map on the objects' boxes and on the tag (``nan`` where every map was flat)."""

    log_dir: Path
    seconds: float
    mass: dict[str, dict[str, float]]


def run_detection_demo(
    epochs: int = 5,
    out: str | Path = "lightning_cam_detection_demo",
    num_train: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> DetectionDemoResult:
    """Train :class:`ShapesDetector` on ``num_train`` images with the tag agreeing on 95 % of them, with
    CAMMonitor explaining 8 validation images (the tag at random) each epoch: Grad-CAM and LayerCAM of the
    detections scoring at least 0.5 (``predicted``, the first choice: ``cam/<method>/...``, and the
    result's ``mass``) and of the ground-truth boxes (``label``: ``cam/label/<method>/...``)."""
    pl.seed_everything(seed, verbose=False)
    train = DataLoader(
        make_detection_shapes(num_train, seed), batch_size=8, shuffle=True, collate_fn=collate_detection
    )
    val = DataLoader(make_detection_shapes(16, seed + 1, None), batch_size=8, collate_fn=collate_detection)
    monitor = CAMMonitor(
        methods=("gradcam", "layercam"),
        targets=("predicted", "label"),
        num_samples=8,
        class_names=DETECTION_CLASSES,
        report=False,
    )
    logger = pl.loggers.TensorBoardLogger(str(out), name="detection")
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=4,
    )
    start = time.perf_counter()
    trainer.fit(ShapesDetector(), train, val)
    last = monitor.history.last
    mass = {
        method: {
            mask: last.get(f"{method}/{mask}/all", {}).get("mass", float("nan")) for mask in ("boxes", "cue")
        }
        for method in monitor.config.methods
    }
    return DetectionDemoResult(Path(logger.log_dir), time.perf_counter() - start, mass)
