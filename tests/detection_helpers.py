"""Small torchvision detectors with random weights (no download), for the detection tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

NUM_CLASSES = 4


def faster_rcnn(seed: int = 0, min_size: int = 160, max_size: int = 256) -> FasterRCNN:
    """Faster R-CNN on a ResNet-18 FPN, every detection kept (``box_score_thresh=0``), in eval mode."""
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return FasterRCNN(
        backbone, num_classes=NUM_CLASSES, min_size=min_size, max_size=max_size, box_score_thresh=0.0
    ).eval()


def retinanet(seed: int = 0, min_size: int = 160, max_size: int = 256) -> RetinaNet:
    """RetinaNet on a ResNet-18 FPN with P6/P7 from C5, every detection kept, in eval mode."""
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(512, 256),
    )
    return RetinaNet(
        backbone, num_classes=NUM_CLASSES, min_size=min_size, max_size=max_size, score_thresh=0.0
    ).eval()


def own_detections(detector: torch.nn.Module, images: object, count: int = 3) -> tuple[list, list]:
    """Each image's ``count`` top detections (boxes, labels): targets that always match."""
    with torch.no_grad():
        outputs = detector(images)
    return [o["boxes"][:count] for o in outputs], [o["labels"][:count] for o in outputs]


def shapes_with_boxes(count: int, seed: int, size: int = 64) -> list[tuple[torch.Tensor, dict]]:
    """Noisy grey images, each with one bright square (label 1) or dark square (label 2) and its box."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        image = 0.5 + 0.1 * torch.randn(3, size, size, generator=generator)
        side = int(torch.randint(12, 24, (1,), generator=generator))
        x, y = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
        label = 1 + index % 2
        image[:, y : y + side, x : x + side] = 0.95 if label == 1 else 0.05
        box = torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32)
        samples.append((image.clamp(0, 1), {"boxes": box, "labels": torch.tensor([label])}))
    return samples


def collate_detection(batch: list) -> tuple[list, list]:
    """torchvision's detection collate: a list of images and a list of targets."""
    return [image for image, _ in batch], [target for _, target in batch]


class DetectorModule(pl.LightningModule):
    """A Faster R-CNN trained by Lightning; built in train mode, as Lightning keeps a submodule's mode."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = faster_rcnn(min_size=96, max_size=96).train()

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.detector(images)

    def training_step(self, batch: tuple[list, list], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        return sum(self.detector(images, targets).values())

    def validation_step(self, batch: tuple[list, list], batch_idx: int) -> None:
        self.detector(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.005, momentum=0.9)


def detection_loaders(batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(shapes_with_boxes(8, 0), batch_size=batch_size, collate_fn=collate_detection)
    val = DataLoader(shapes_with_boxes(4, 1), batch_size=batch_size, collate_fn=collate_detection)
    return train, val
