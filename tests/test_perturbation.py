"""Score-CAM and Ablation-CAM against plain per-image, per-channel loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from conftest import SmallCNN
from torch import nn

import lightning_cam as lc


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """ReLU and min-max per image; a flat map is all zeros."""
    flat = maps.clamp(min=0).reshape(len(maps), -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.nan_to_num((flat - low) / (high - low)).reshape(maps.shape)


def layer_output(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return captured[0]


def scorecam_reference(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list[int], topk: int | None = None
) -> torch.Tensor:
    """Score-CAM as its authors' code runs it: one image, one channel at a time. With ``topk``, only
    the channels of largest variance are scored; the others get the mean of those weights."""
    model.eval()
    maps = []
    for index, image in enumerate(images):
        activations = layer_output(model, layer, image[None])[0]
        chosen = activations.flatten(1).var(1).argsort(descending=True)[: topk or len(activations)].tolist()
        weights, upsampled_maps = {}, {}
        for number, channel in enumerate(activations):
            upsampled = F.interpolate(
                channel[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False
            )
            if upsampled.max() == upsampled.min():
                continue
            upsampled_maps[number] = upsampled[0, 0]
            if number not in chosen:
                continue
            mask = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
            with torch.no_grad():
                weights[number] = F.softmax(model(image[None] * mask), dim=1)[0, targets[index]]
        mean_weight = sum(weights.values()) / len(weights)
        total = sum(weights.get(number, mean_weight) * up for number, up in upsampled_maps.items())
        maps.append(total)
    return min_max(torch.stack(maps))


def ablationcam_reference(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list[int]
) -> torch.Tensor:
    """Ablation-CAM re-running the whole model with one channel of the layer zeroed each time."""
    model.eval()
    maps = []
    for index, image in enumerate(images):
        activations = layer_output(model, layer, image[None])[0]
        with torch.no_grad():
            score = model(image[None])[0, targets[index]]
        weights = []
        for channel in range(len(activations)):

            def zero_channel(
                _m: nn.Module, _i: object, out: torch.Tensor, channel: int = channel
            ) -> torch.Tensor:
                out = out.clone()
                out[:, channel] = 0
                return out

            handle = layer.register_forward_hook(zero_channel)
            try:
                with torch.no_grad():
                    ablated = model(image[None])[0, targets[index]]
            finally:
                handle.remove()
            weights.append((score - ablated) / score)
        low = torch.einsum("k,khw->hw", torch.stack(weights), activations).clamp(min=0)  # ReLU, then upsample
        maps.append(
            F.interpolate(low[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        )
    return min_max(torch.stack(maps))


@pytest.fixture
def model_with_flat_channel() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(channels=4).double()
    with torch.no_grad():
        model.features[4].weight[3].zero_()  # channel 3 of the target conv is 0 everywhere: flat
        model.features[4].bias[3] = 0.0
    return model


@pytest.mark.parametrize("chunk_size", [1, 7, 8 * 3])
def test_scorecam_equals_per_image_per_channel_loop(
    model_with_flat_channel: SmallCNN, chunk_size: int
) -> None:
    model = model_with_flat_channel
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    targets = [0, 2, 3]
    reference = scorecam_reference(model, model.features[4], images, targets)
    maps = lc.explain(model, images, "scorecam", "features.4", targets, chunk_size=chunk_size)["scorecam"]
    assert torch.isfinite(maps).all()
    assert (maps.double() - reference).abs().max() <= 1e-5


def test_scorecam_topk_of_all_channels_is_exact_and_fewer_channels_run_fewer_forwards(
    model_with_flat_channel: SmallCNN,
) -> None:
    model = model_with_flat_channel
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    exact = lc.explain(model, images, "scorecam", "features.4", chunk_size=1)["scorecam"]
    all_k = lc.explain(model, images, "scorecam", "features.4", chunk_size=1, topk=8)["scorecam"]
    torch.testing.assert_close(all_k, exact)
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        lc.explain(model, images, "scorecam", "features.4", chunk_size=1, topk=2)
    finally:
        handle.remove()
    assert len(forwards) == 1 + 2 * 2  # the pass, then 2 channels x 2 images


def test_scorecam_topk_scores_the_channels_of_largest_variance(model_with_flat_channel: SmallCNN) -> None:
    model = model_with_flat_channel
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    targets = [0, 2, 3]
    reference = scorecam_reference(model, model.features[4], images, targets, topk=3)
    maps = lc.explain(model, images, "scorecam", "features.4", targets, topk=3)["scorecam"]
    assert (maps.double() - reference).abs().max() <= 1e-5
    exact = lc.explain(model, images, "scorecam", "features.4", targets)["scorecam"]
    assert (maps - exact).abs().max() > 1e-3  # not the exact map: fewer channels were scored


def test_scorecam_no_hooks_active_during_masked_forwards(model_with_flat_channel: SmallCNN) -> None:
    model = model_with_flat_channel
    hooks_seen = []

    def count_hooks(_m: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if torch.is_inference_mode_enabled():  # the masked forwards
            hooks_seen.append(sum(len(m._forward_hooks) for m in model.modules()))

    handle = model.register_forward_pre_hook(count_hooks)
    try:
        lc.explain(model, torch.rand(2, 3, 16, 16, dtype=torch.float64), "scorecam", "features.4")
    finally:
        handle.remove()
    assert hooks_seen and set(hooks_seen) == {0}


def test_scorecam_halves_the_chunk_on_out_of_memory(model_with_flat_channel: SmallCNN) -> None:
    class SmallMemory(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.batches: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.batches.append(len(x))
            if len(x) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.net(x)

    model = SmallMemory(model_with_flat_channel)
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    expected = lc.explain(model, images, "scorecam", "net.features.4", chunk_size=4)["scorecam"]
    with pytest.warns(RuntimeWarning, match="out of memory; retrying with chunk_size=8") as record:
        maps = lc.explain(model, images, "scorecam", "net.features.4", chunk_size=16)["scorecam"]
    assert any("chunk_size=4" in str(w.message) for w in record)
    torch.testing.assert_close(maps, expected)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_ablationcam_equals_whole_model_loop(
    model_with_flat_channel: SmallCNN, chunk_size: int | None
) -> None:
    model = model_with_flat_channel
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    targets = [1, 0, 3]
    reference = ablationcam_reference(model, model.features[4], images, targets)
    maps = lc.explain(model, images, "ablationcam", "features.4", targets, chunk_size=chunk_size)[
        "ablationcam"
    ]
    assert (maps.double() - reference).abs().max() <= 1e-5


def test_ablationcam_inside_a_residual_block_matches_the_loop() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double()
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    layer = model.layer2[0].conv1  # its block adds an identity computed before it
    targets = [1, 3]
    reference = ablationcam_reference(model, layer, images, targets)
    maps = lc.explain(model, images, "ablationcam", "layer2.0.conv1", targets)["ablationcam"]
    assert (maps.double() - reference).abs().max() <= 1e-5


def test_ablationcam_says_when_the_model_cannot_batch_ablated_copies() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 14 * 14, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).reshape(x.shape[0], -1))  # the input's batch size

    torch.manual_seed(0)
    with pytest.raises(
        ValueError, match=r"ablationcam runs the layers after 'conv' on a batch of 5 ablated copies.*scorecam"
    ):
        lc.explain(FixedBatch(), torch.rand(2, 3, 16, 16), "ablationcam", "conv")


def test_unknown_options_are_rejected_with_the_valid_ones() -> None:
    model = SmallCNN()
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) top_k.*scorecam: chunk_size, autocast_dtype, topk"
    ):
        lc.explain(model, images, "scorecam", top_k=3)
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) chunk_size for methods \['gradcam'\]; valid: none"
    ):
        lc.explain(model, images, "gradcam", chunk_size=3)
    with pytest.raises(ValueError, match="gradcam has no option"):
        lc.explain_batch(model, images, "gradcam", method_options={"gradcam": {"topk": 1}})


def test_perturbation_forwards_under_autocast() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(2, 3, 16, 16)
    exact = lc.explain(model, images, ("scorecam", "ablationcam"), "features.4")
    fast = lc.explain(model, images, ("scorecam", "ablationcam"), "features.4", autocast_dtype=torch.bfloat16)
    for name in exact:
        assert fast[name].dtype == torch.float32 and torch.isfinite(fast[name]).all()
        assert (fast[name] - exact[name]).abs().mean() < 0.05


def test_ablationcam_batches_the_rows_of_all_images_in_its_forwards() -> None:
    torch.manual_seed(0)
    model = SmallCNN().double().eval()  # features.4 has K = 16 channels: 17 rows per image
    images = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    forwards: list[int] = []
    handle = model.features[0].register_forward_pre_hook(lambda _m, args: forwards.append(args[0].shape[0]))
    try:
        maps = lc.explain(model, images, "ablationcam", "features.4", chunk_size=30)["ablationcam"]
    finally:
        handle.remove()
    # The shared pass (4 images), then ceil(68 / 30) = 3 chunks that mix images: rows 0-29 span
    # images 0-1, rows 30-59 images 1-3, rows 60-67 image 3.
    assert forwards == [4, 2, 3, 1]
    predicted = model(images).argmax(1).tolist()
    reference = ablationcam_reference(model, model.features[4], images, predicted)
    assert (maps.double() - reference).abs().max() <= 1e-5
