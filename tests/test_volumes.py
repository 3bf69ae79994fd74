"""Volumes and clips [B, C, D, H, W]: every method through the same code path as images (a volume
explained equals its slices laid side by side as one image), Grad-CAM against pytorch-grad-cam's 3-D
Grad-CAM on r3d_18 and a small volume CNN, "auto" on 3-D CNNs, clear errors, chunk budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lightning_cam as lc
from lightning_cam.methods.perturbation import MEMORY_BUDGET_BYTES, default_chunk_size


def probe_net(dims: int, weight: torch.Tensor) -> nn.Sequential:
    """An identity 1x1(x1) convolution on 2 channels (the target layer ``0``), ReLU, global average
    pooling and a linear classifier with ``weight``: the 2-D and 3-D versions agree position by position."""
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(2, 2, 1, bias=False)
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
    linear = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, *([1] * dims)))
        linear.weight.copy_(weight)
        linear.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), linear).eval()


def side_by_side(volume: torch.Tensor) -> torch.Tensor:
    """``[B, C, D, H, W]`` -> ``[B, C, H, D * W]``: the depth slices next to each other."""
    return torch.cat(volume.unbind(dim=2), dim=-1)


@pytest.mark.parametrize("method", lc.METHODS)
def test_each_method_on_a_volume_equals_its_2d_definition_on_the_slices(method: str) -> None:
    torch.manual_seed(0)
    weight = torch.rand(3, 2) + 0.1  # positive: every method's map has spread
    volume = torch.randn(2, 2, 3, 4, 5)
    image = side_by_side(volume)
    volume_maps = lc.explain(probe_net(3, weight), volume, method, target_layer="0", targets=[0, 2])[method]
    image_maps = lc.explain(probe_net(2, weight), image, method, target_layer="0", targets=[0, 2])[method]
    assert volume_maps.shape == (2, 3, 4, 5)
    torch.testing.assert_close(side_by_side(volume_maps[:, None])[:, 0], image_maps, atol=1e-5, rtol=0)
    flat = volume_maps.flatten(1)
    assert torch.isfinite(flat).all() and bool((flat.amax(1) > flat.amin(1)).all())  # not flat


def test_gradcam_upsamples_trilinearly_to_the_volume() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    volume = torch.rand(1, 1, 4, 8, 8)
    maps = lc.explain(net, volume, "gradcam", target_layer="2", targets=1)["gradcam"]
    assert maps.shape == (1, 4, 8, 8)
    activations = net[:3](volume)
    with torch.enable_grad():
        probe = activations.detach().requires_grad_(True)
        score = net[3:](probe)[0, 1]
        (gradient,) = torch.autograd.grad(score, probe)
    raw = (gradient.mean(dim=(2, 3, 4), keepdim=True) * activations).sum(1).clamp(min=0)
    up = torch.nn.functional.interpolate(raw[:, None], size=(4, 8, 8), mode="trilinear", align_corners=False)[
        :, 0
    ]
    expected = (up - up.min()) / (up.max() - up.min())
    torch.testing.assert_close(maps, expected.detach(), atol=1e-5, rtol=0)


def pytorch_grad_cam_raw(
    model: nn.Module, layer: nn.Module, clip: torch.Tensor, classes: list[int]
) -> np.ndarray:
    """pytorch-grad-cam's 3-D Grad-CAM on the layer's grid (before its spline upsampling)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(c) for c in classes]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        outputs = cam.activations_and_grads(clip)
        model.zero_grad()
        sum(target(output) for target, output in zip(targets, outputs, strict=True)).backward()
        activations = cam.activations_and_grads.activations[0].cpu().numpy()
        gradients = cam.activations_and_grads.gradients[0].cpu().numpy()
        raw = cam.get_cam_image(clip, layer, targets, activations, gradients, False)
    return np.maximum(raw, 0)


def ours_on_their_grid(raw: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
    up = torch.nn.functional.interpolate(torch.from_numpy(raw)[:, None].float(), size=size, mode="trilinear")[
        :, 0
    ]
    low, high = up.flatten(1).amin(1), up.flatten(1).amax(1)
    return (up - low.view(-1, 1, 1, 1)) / (high - low).view(-1, 1, 1, 1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).numpy()


@pytest.mark.slow
def test_gradcam_on_r3d_18_and_a_volume_cnn_agrees_with_pytorch_grad_cam() -> None:
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    clip_model = r3d_18(num_classes=5).eval()
    volume_model = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()
    cases = [
        (clip_model, clip_model.layer4, torch.rand(2, 3, 16, 64, 64)),
        (volume_model, volume_model[4], torch.rand(2, 1, 8, 24, 24)),
    ]
    for model, layer, clip in cases:
        ours = lc.explain(model, clip, "gradcam", target_layer=layer, targets=[1, 2])["gradcam"]
        assert ours.shape == (2, *clip.shape[2:])
        theirs = ours_on_their_grid(pytorch_grad_cam_raw(model, layer, clip, [1, 2]), tuple(clip.shape[2:]))
        assert (pearson(ours, theirs) >= 0.99).all(), pearson(ours, theirs)


@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18", "conv3d_stack"])
def test_auto_picks_the_last_3d_stage(arch: str) -> None:
    from torchvision.models import video

    from lightning_cam.layers import resolve_target_layers

    if arch == "conv3d_stack":
        model = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(4, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        )
        clip, expected = torch.rand(1, 1, 4, 16, 16), "3"
    else:
        model, clip, expected = getattr(video, arch)(num_classes=4), torch.rand(1, 3, 8, 32, 32), "layer4"
    assert resolve_target_layers(model.eval(), "auto", clip)[0][0] == expected
    maps = lc.explain(model, clip, "gradcam")["gradcam"]
    assert maps.shape == (1, *clip.shape[2:]) and torch.isfinite(maps).all()


def test_a_volume_with_a_2d_layer_and_a_volume_without_channels_say_what_works() -> None:
    class DepthPooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv3d, self.conv2d, self.head = (
                nn.Conv3d(1, 4, 3, padding=1),
                nn.Conv2d(4, 4, 3, padding=1),
                nn.Linear(4, 2),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv2d(self.conv3d(x).mean(dim=2)).mean(dim=(2, 3)))

    model, volume = DepthPooled(), torch.rand(2, 1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"volume maps need a layer with a 5-D output \[B, K, d, h, w\]"):
        lc.explain(model, volume, "gradcam", target_layer="conv2d")
    assert lc.explain(model, volume, "gradcam", target_layer="conv3d")["gradcam"].shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"takes volumes \[B, C, D, H, W\].*unsqueeze\(1\)"):
        lc.explain(model, volume[:, 0], "gradcam", target_layer="conv3d")


def test_perturbation_chunks_fit_the_memory_budget_for_volumes() -> None:
    volume = torch.empty(1, 64, 128, 128, device="meta")  # one 64x128x128 volume: 4 MiB
    chunk = default_chunk_size(volume, rows=10_000)
    assert chunk * volume.numel() * 4 * 16 <= MEMORY_BUDGET_BYTES < (chunk + 1) * volume.numel() * 4 * 16
