"""explain(): every bad input raises ValueError saying what is wrong and what would be right."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import SmallCNN
from torch import nn

import lightning_cam as lc


class NoClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class SpatialOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


IMAGES = torch.rand(2, 3, 16, 16)

CASES = [
    (
        "unknown method",
        {"methods": "gradcampp"},
        SmallCNN,
        IMAGES,
        r"unknown CAM method 'gradcampp'.*closest first\): gradcam, xgradcam, gradcam\+\+",
    ),
    ("empty methods", {"methods": []}, SmallCNN, IMAGES, r"methods is empty; choose one or more of gradcam"),
    (
        "unknown layer",
        {"target_layer": "feature.4"},
        SmallCNN,
        IMAGES,
        r"'feature.4' is not a module.*Closest names: features.4.*last convolution layers are: features.0, features.4",
    ),
    (
        "layer of another model",
        {"target_layer": nn.Conv2d(1, 1, 1)},
        SmallCNN,
        IMAGES,
        r"not part of SmallCNN",
    ),
    (
        "layer not 4-D",
        {"target_layer": "fc"},
        SmallCNN,
        IMAGES,
        r"'fc' outputs shape \[2, 4\] for an input of spatial size \[16, 16\]; CAM methods need \[B, K, h, w\]",
    ),
    ("not a tensor", {}, SmallCNN, [[0.0]], r"images must be a float tensor \[B, C, H, W\]; got list"),
    (
        "3-D images",
        {},
        SmallCNN,
        torch.rand(3, 16, 16),
        r"float tensor \[B, C, H, W\] \(or \[B, C, D, H, W\] for volumes\); got shape \[3, 16, 16\].*unsqueeze\(0\)",
    ),
    (
        "integer images",
        {},
        SmallCNN,
        torch.zeros(1, 3, 16, 16, dtype=torch.int64),
        r"floating-point or uint8.*torch.int64.*images.float\(\)",
    ),
    (
        "uint8 images for a method that differentiates the images",
        {"methods": ["gradcam", "guided_backprop"]},
        SmallCNN,
        torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
        r"guided_backprop need\(s\) floating-point images.*got uint8.*layer methods",
    ),
    (
        "targets wrong length",
        {"targets": [0, 1, 2]},
        SmallCNN,
        IMAGES,
        r"one integer class index per image \(2\)",
    ),
    (
        "targets out of range",
        {"targets": 4},
        SmallCNN,
        IMAGES,
        r"class indices in \[0, 3\] \(the model has 4 classes\)",
    ),
    ("negative target", {"targets": [0, -1]}, SmallCNN, IMAGES, r"class indices in \[0, 3\]"),
    (
        "float targets",
        {"targets": torch.tensor([0.5, 1.0])},
        SmallCNN,
        IMAGES,
        r"one integer class index per image",
    ),
    (
        "output not logits",
        {"target_layer": "conv"},
        SpatialOutput,
        IMAGES,
        r"output has shape \[2, 4, 14, 14\]; class targets need logits \[B, num_classes\].*segmentation\(class_index\)",
    ),
    (
        "cam without classifier",
        {"methods": "cam", "target_layer": "conv"},
        NoClassifier,
        IMAGES,
        r"'cam' needs a linear classifier.*linear layers are: none.*'gradcam'",
    ),
]


@pytest.mark.parametrize(
    ("case", "options", "model_class", "images", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_raises_value_error_with_guidance(
    case: str, options: dict, model_class: type[nn.Module], images: object, message: str
) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        lc.explain(model_class(), images, **({"methods": "gradcam"} | options))


class TakesUint8(nn.Module):
    """A model that scales uint8 images itself, as a deployed model often does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255)


def test_uint8_images_are_explained_as_the_model_takes_them() -> None:
    torch.manual_seed(0)
    model = TakesUint8().eval()
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    methods = ["gradcam", "layercam", "eigencam", "ablationcam"]
    non_flat = set()
    for target in range(4):  # random weights leave some classes' maps all zero: compare every class
        ours = lc.explain(model, pixels, methods, target_layer="net.features.4", targets=target)
        scaled = lc.explain(
            model.net, pixels.float() / 255, methods, target_layer="features.4", targets=target
        )
        for method in methods:
            torch.testing.assert_close(ours[method], scaled[method])
            non_flat |= {method} if bool((ours[method].flatten(1).amax(1) > 0).all()) else set()
    assert non_flat == set(methods)


def test_auto_layer_without_spatial_output_says_to_name_the_layer() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with pytest.raises(ValueError, match=re.escape("target_layer='auto' found no layer")):
        lc.explain(model, torch.rand(1, 3, 4, 4))


def test_a_dict_output_without_output_key_names_its_keys_and_the_key_to_pass() -> None:
    class DictSegmenter(nn.Module):  # torchvision's segmentation models return {"out": ..., "aux": ...}
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.conv(x)
            return {"out": logits, "aux": logits.detach()}

    model, images = DictSegmenter().eval(), torch.rand(2, 3, 8, 8)
    for targets in (lc.targets.segmentation(1), None):
        with pytest.raises(ValueError, match=r"keys \['out', 'aux'\]; pass output_key='out'"):
            lc.explain(model, images, "gradcam", "conv", targets=targets)
    region = lc.targets.segmentation(1, mask=torch.ones(8, 8))
    maps = lc.explain(model, images, "gradcam", "conv", targets=region, output_key="out")
    assert maps["gradcam"].shape == (2, 8, 8)


def test_cam_monitor_targets_are_plain_choices_and_say_where_a_function_goes() -> None:
    from lightning_cam import CAMMonitor

    with pytest.raises(ValueError, match="output_key=a function output -> logits"):
        CAMMonitor(targets=lambda output: output[:, 0])
