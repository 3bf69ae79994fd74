"""Box explanations on a detector: lightning-cam's five gradient methods for a batch of boxes, against
one detector forward of the same images and against pytorch-grad-cam's per-image loop on the same
boxes.

Faster R-CNN with a ResNet-18 FPN backbone (random weights, ``box_score_thresh=0``), 4 images of
160x160 resized by the detector to 320x320, each image's top 3 detections as the boxes to explain,
target layer ``backbone.body.layer4``. Medians after a warm-up, contenders timed in turn.

    pip install grad-cam==1.5.7
    python benchmarks/bench_detection.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import interleaved_medians, pearson_per_image
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import lightning_cam as lc

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
PEER_METHODS = ("GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM")


def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return FasterRCNN(backbone, num_classes=4, min_size=320, max_size=320, box_score_thresh=0.0).eval()


def peer_loop(model: torch.nn.Module, images: torch.Tensor, references: list, labels: list) -> dict:
    """pytorch-grad-cam: one CAM object per method, one image at a time (its detection tutorial's loop)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    maps = {}
    for name in PEER_METHODS:
        with getattr(pytorch_grad_cam, name)(model, [model.backbone.body.layer4]) as cam:
            maps[name] = np.concatenate(
                [
                    cam(image[None], targets=[FasterRCNNBoxScoreTarget(label.tolist(), box.numpy())])
                    for image, box, label in zip(images, references, labels, strict=True)
                ]
            )
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model, images = detector(), torch.rand(4, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(images)
    references, labels = [o["boxes"][:3] for o in outputs], [o["labels"][:3] for o in outputs]
    target = lc.targets.boxes(references, labels)

    def ours() -> dict:
        return lc.explain(model, images, METHODS, "backbone.body.layer4", targets=target)

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    agreement = pearson_per_image(ours()["gradcam"], peer_loop(model, images, references, labels)["GradCAM"])
    times = interleaved_medians(
        {
            "one detector forward": forward,
            "lightning-cam, 5 methods": ours,
            "pytorch-grad-cam loop, 5 methods": lambda: peer_loop(model, images, references, labels),
        },
        args.repeats,
    )
    base = times["one detector forward"]
    print(f"4 images, 3 boxes each (Grad-CAM Pearson with pytorch-grad-cam: min {agreement.min():.4f}):")
    for name, seconds in times.items():
        print(f"  {name:34s} {seconds * 1e3:8.1f} ms  {seconds / base:5.1f}x one forward")
    ratio = times["pytorch-grad-cam loop, 5 methods"] / times["lightning-cam, 5 methods"]
    print(f"  lightning-cam is {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
