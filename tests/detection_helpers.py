"""Small torchvision detectors with random weights (no download), for the detection tests."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_cam.demo.detection import collate_detection, make_detection_shapes

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


def detection_loaders(batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    """The detection demo's shapes: 8 to train on, 4 to validate (their tag at random)."""
    train = DataLoader(make_detection_shapes(8, 0), batch_size=batch_size, collate_fn=collate_detection)
    val = DataLoader(make_detection_shapes(4, 1, None), batch_size=batch_size, collate_fn=collate_detection)
    return train, val
