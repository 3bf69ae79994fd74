"""Saliency, guided backprop and Guided Grad-CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

import lightning_cam as lc


class TinyReLUNet(nn.Module):
    """1-channel 1x2 images -> 1x1 conv (1 -> 2) -> in-place ReLU module -> 1x1 conv (2 -> 2) ->
    functional ReLU -> global average pool -> linear (2 -> 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv1.bias.zero_()
            self.conv2.weight.copy_(torch.tensor([[1.0, 2.0], [-3.0, 1.0]]).view(2, 2, 1, 1))
            self.conv2.bias.copy_(torch.tensor([0.0, 0.5]))
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


# x = [2, -1]. By hand, with y = mean(s1) - 2 mean(s2), dy/ds = (0.5, -1) at each pixel:
#   plain:  pixel 0: dz = (0.5, 0), dr = (0.5, 1.0), dh = (0.5, 0)  -> dx = 0.5
#           pixel 1: dz = (0.5, -1), dr = (3.5, 0), dh = (0, 0)    -> dx = 0
#   guided: pixel 0: dz = (0.5, 0), dr = (0.5, 1.0), dh = (0.5, 0) -> dx = 0.5
#           pixel 1: dz = (0.5, 0), dr = (0.5, 1.0), dh = (0, 1.0) -> dx = -1.0
IMAGE = torch.tensor([[[[2.0, -1.0]]]])


def test_saliency_and_guided_backprop_match_hand_computed_gradients() -> None:
    model = TinyReLUNet()
    maps = lc.explain(model, IMAGE, ("saliency", "guided_backprop"), targets=0)
    torch.testing.assert_close(maps["saliency"][0], torch.tensor([[1.0, 0.0]]))  # |0.5|, |0|
    torch.testing.assert_close(maps["guided_backprop"][0], torch.tensor([[0.0, 1.0]]))  # |0.5|, |-1.0|


def test_guided_relus_clamp_only_while_switched_on() -> None:
    from lightning_cam.engine.methods import guided_relus

    model = TinyReLUNet()
    image = IMAGE.clone().requires_grad_(True)
    with guided_relus() as switch:
        output = model(image)
    (plain,) = torch.autograd.grad(output.sum(), image, retain_graph=True)
    switch.guided = True
    (guided,) = torch.autograd.grad(output.sum(), image)
    torch.testing.assert_close(plain[0, 0, 0], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(guided[0, 0, 0], torch.tensor([0.5, -1.0]))


def test_guided_backprop_leaves_modules_and_inplace_flags_as_they_were() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    modules_before = [(name, id(m), type(m)) for name, m in model.named_modules()]
    inplace_before = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    assert all(inplace_before)  # torchvision's ResNet: shared, in-place ReLU modules
    images = torch.rand(3, 3, 32, 32)
    batch = lc.explain(model, images, ("guided_backprop", "guided_gradcam", "saliency"))
    assert [(name, id(m), type(m)) for name, m in model.named_modules()] == modules_before
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace_before
    for index in range(3):  # batches of any size: each image as if alone
        alone = lc.explain(
            model, images[index : index + 1], ("guided_backprop", "guided_gradcam", "saliency")
        )
        for name, value in alone.items():
            torch.testing.assert_close(batch[name][index], value[0], atol=1e-5, rtol=0)


def test_guided_gradcam_is_the_product_of_its_parts() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    maps = lc.explain(model, torch.rand(2, 3, 32, 32), ("guided_gradcam", "guided_backprop", "gradcam"))
    product = (maps["guided_backprop"] * maps["gradcam"]).reshape(2, -1)
    low, high = product.min(1, keepdim=True).values, product.max(1, keepdim=True).values
    torch.testing.assert_close(maps["guided_gradcam"], ((product - low) / (high - low)).reshape(2, 32, 32))


def test_guided_backprop_warns_for_other_activations() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.GELU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with pytest.warns(
        RuntimeWarning, match="guided backprop is defined for ReLU networks; this model also uses gelu"
    ):
        lc.explain(model, torch.rand(1, 3, 8, 8), "guided_backprop")
