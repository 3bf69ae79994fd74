"""Every model a team trains: vision transformers (torchvision and timm, prefix and register tokens,
non-square inputs), channels-last layers (Swin), and targets beyond one class logit, checked against
pytorch-grad-cam with its documented ``reshape_transform`` and its target classes."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from lit_helpers import tiny_vit
from torch import nn

import lightning_cam as lc
from lightning_cam.engine.layers import find_auto_layer
from lightning_cam.engine.layouts import infer_layout
from lightning_cam.engine.targets import segmentation

LAYER_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "scorecam",
    "ablationcam",
)


def pearson(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def grad_cam_maps(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list, transform: object
) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = [t if callable(t) else ClassifierOutputTarget(t) for t in targets]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=transform) as cam:
        return cam(input_tensor=images, targets=wrapped)


def tokens_to_grid(prefix: int, rows: int, columns: int):
    """pytorch-grad-cam's documented ViT reshape_transform."""

    def transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), rows, columns, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return transform


def channels_last_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented Swin reshape_transform (for NHWC stage outputs)."""
    return tensor.permute(0, 3, 1, 2)


def torchvision_vit() -> nn.Module:
    model = torchvision.models.vit_b_16(num_classes=10).eval()
    nn.init.normal_(
        model.heads.head.weight, std=0.02
    )  # torchvision starts with a zero head: every map is flat
    return model


def hf_swinv2() -> nn.Module:
    from transformers import Swinv2Config, Swinv2ForImageClassification

    config = Swinv2Config(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=4,
        num_labels=10,
    )
    return _Logits(Swinv2ForImageClassification(config)).eval()


class _Logits(nn.Module):
    """A Hugging Face classifier's ``logits`` (pytorch-grad-cam's targets index the output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def timm_levit() -> nn.Module:
    """timm's LeViT with every BatchNorm's weight at one and its statistics taken over random images: it
    starts its residual branches' weights at zero and its statistics at the identity, so at initialisation
    its activations are so small that every attention is uniform and every token past stage 0 alike (a
    flat map at any layer there) until training moves them."""
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the pass
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    return model.eval()


TRANSFORMERS = {
    # name: (model factory, image size, target layer name, auto layer, prefix tokens or None for NHWC, grid)
    "torchvision vit_b_16": (
        torchvision_vit,
        (224, 224),
        "encoder.layers.encoder_layer_11.ln_1",
        1,
        (14, 14),
    ),
    "timm deit distilled": (
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10).eval(),
        (224, 224),
        "blocks.11.norm1",
        2,
        (14, 14),
    ),
    "timm vit registers, 64x96": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=10, reg_tokens=4, img_size=(64, 96)
        ).eval(),
        (64, 96),
        "blocks.11.norm1",
        5,
        (4, 6),
    ),
    "timm swin": (
        lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10).eval(),
        (224, 224),
        "layers.3.blocks.1.norm1",
        None,
        (7, 7),
    ),
    "torchvision swin_t": (
        lambda: torchvision.models.swin_t(num_classes=10).eval(),
        (224, 224),
        "features.7.1.norm1",
        None,
        (7, 7),
    ),
    # a post-norm block that returns a tuple: its layernorm_before normalises the attention's output (a
    # branch, not the residual stream); "auto" took it. The stream is the final norm's input.
    "hugging face swinv2 64 px": (hf_swinv2, (64, 64), "model.swinv2.layernorm", 0, (8, 8)),
    # no norm before its attention and 16 tokens at the last stage (0 + 4x4 or 7 + 3x3 prefix tokens):
    # "auto" took stage 0's attention projection; LeViT has no token parameter, so no prefix
    "timm levit_128s": (timm_levit, (224, 224), "stages.2.blocks.3", 0, (4, 4)),
}


@pytest.fixture(scope="module", params=list(TRANSFORMERS), ids=list(TRANSFORMERS))
def transformer(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, size, *_ = TRANSFORMERS[request.param]
    return request.param, factory(), torch.rand(2, 3, *size)


def non_flat_targets(model: nn.Module, images: torch.Tensor, layer: str) -> list[int]:
    """Per image, the first class whose Grad-CAM map is not all zero (with random weights a class's
    map is often entirely negative, and ReLU leaves nothing to compare)."""
    maps = torch.stack([lc.explain(model, images, "gradcam", layer, targets=c)["gradcam"] for c in range(10)])
    present = maps.flatten(2).amax(2) > 0  # [classes, B]
    assert bool(present.any(0).all()), "some image has no class with a non-flat map"
    return present.float().argmax(0).tolist()


@pytest.mark.slow
def test_gradcam_on_transformers_equals_pytorch_grad_cam(
    transformer: tuple[str, nn.Module, torch.Tensor],
) -> None:
    name, model, images = transformer
    _, _, layer_name, prefix, grid = TRANSFORMERS[name]
    layer = dict(model.named_modules())[layer_name]
    transform = channels_last_to_grid if prefix is None else tokens_to_grid(prefix, *grid)
    targets = non_flat_targets(model, images, layer_name)
    ours = lc.explain(model, images, "gradcam", layer_name, targets=targets)["gradcam"]
    theirs = grad_cam_maps(model, layer, images, targets, transform)
    assert ours.shape == (2, *images.shape[-2:])
    correlation = pearson(ours, theirs)
    assert correlation.mean() >= 0.99, correlation


@pytest.mark.slow
def test_auto_layer_on_transformers_is_in_the_last_block(
    transformer: tuple[str, nn.Module, torch.Tensor],
) -> None:
    name, model, images = transformer
    expected = TRANSFORMERS[name][2]
    with torch.no_grad():
        chosen = find_auto_layer(model, images[:1])
    assert chosen == expected
    maps = lc.explain(model, images, "gradcam", targets=non_flat_targets(model, images, expected))["gradcam"]
    assert bool(torch.isfinite(maps).all()) and bool((maps.flatten(1).amax(1) > 0).all())


@pytest.mark.slow
def test_every_layer_method_on_a_token_layer_gives_finite_non_flat_maps() -> None:
    torch.manual_seed(0)
    model = tiny_vit(embed_dim=192, reg_tokens=1).eval()
    images = torch.rand(2, 3, 32, 32)
    for method in LAYER_METHODS:  # some class gives each image a map (random weights make some all-negative)
        options = {"topk": 16} if method == "scorecam" else {}
        maps = torch.stack(
            [lc.explain(model, images, method, "blocks.1.norm1", c, **options)[method] for c in range(4)]
        )
        assert maps.shape == (4, 2, 32, 32) and bool(torch.isfinite(maps).all()), method
        assert bool((maps.flatten(2).amax(2) > 0).any(0).all()), method


def test_ablationcam_on_tokens_zeroes_a_channel_of_the_patch_tokens() -> None:
    torch.manual_seed(0)
    model = tiny_vit(img_size=16, depth=1, embed_dim=12, num_heads=2).eval().double()
    images, layer = torch.rand(3, 3, 16, 16, dtype=torch.float64), model.blocks[0].norm1
    targets = [0, 3, 1]
    with torch.no_grad():
        logits = model(images)
        ablated = []
        for channel in range(12):

            def zero(_m: nn.Module, _i: object, out: torch.Tensor, channel: int = channel) -> torch.Tensor:
                out = out.clone()
                out[:, 1:, channel] = 0  # patch tokens only; the class token stays
                return out

            handle = layer.register_forward_hook(zero)
            ablated.append(model(images)[torch.arange(3), targets])
            handle.remove()
        score = logits[torch.arange(3), targets]
        weights = (score[:, None] - torch.stack(ablated, 1)) / score[:, None]
        tokens = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: tokens.setdefault("a", out))
        model(images)
        handle.remove()
    grid = tokens["a"][:, 1:].transpose(1, 2).reshape(3, 12, 2, 2)
    raw = torch.einsum("bk,bkhw->bhw", weights, grid)
    expected = lc.engine.normalize_maps(raw, (16, 16))
    maps = lc.explain(model, images, "ablationcam", "blocks.0.norm1", targets)["ablationcam"]
    torch.testing.assert_close(maps.double(), expected, atol=1e-5, rtol=0)


def test_token_and_channels_last_layouts_by_hand() -> None:
    model = nn.Identity()
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix token, 2x3 patches
    layout = infer_layout(tokens, (20, 30), model, model, "x")
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", 1, (2, 3))
    grid = layout.to_grid(tokens)
    assert grid.shape == (2, 3, 2, 3) and torch.equal(grid[1, 2, 1, 0], tokens[1, 1 + 3, 2])
    assert torch.equal(layout.from_grid(grid, tokens, torch.tensor([0, 1])), tokens)
    nhwc = torch.rand(2, 7, 7, 96)
    layout = infer_layout(nhwc, (224, 224), model, nn.LayerNorm(96), "x")
    assert layout.kind == "channels_last" and torch.equal(layout.to_grid(nhwc), nhwc.permute(0, 3, 1, 2))


AMBIGUOUS = [
    (
        "tokens with two readings",
        torch.rand(1, 17, 8),
        (10, 10),
        nn.Identity(),
        r"tokens \[1, 17, 8\].*1 prefix \+ 4x4 patches, 8 prefix \+ 3x3 patches.*reshape_transform",
    ),
    (
        "no grid",
        torch.rand(1, 7, 8),
        (10, 10),
        nn.Identity(),
        r"do not read as one grid.*reshape_transform.*t\[:, P:\].*P the number of prefix tokens \(class, "
        r"distillation, register; 0 without\)",  # the example drops no token it does not know of
    ),
    (
        "channels first or last",
        torch.rand(1, 8, 8, 8),
        (16, 16),
        nn.ReLU(),
        r"reads as channels first \[B, K, \*grid\] and as channels last.*reshape_transform=lambda t: t",
    ),
    (
        "a vector",
        torch.rand(1, 8),
        (16, 16),
        nn.Identity(),
        r"CAM methods need \[B, K, h, w\].*reshape_transform",
    ),
]


@pytest.mark.parametrize(
    ("case", "output", "size", "layer", "message"), AMBIGUOUS, ids=[a[0] for a in AMBIGUOUS]
)
def test_ambiguous_or_unsupported_layer_outputs_raise(
    case: str, output: torch.Tensor, size: tuple, layer: nn.Module, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        infer_layout(output, size, nn.Sequential(layer), layer, "x")


class Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_segmentation_target_equals_semantic_segmentation_target() -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model, images = Segmenter().eval(), torch.rand(2, 3, 16, 16)
    mask = (torch.rand(16, 16) > 0.5).float()
    ours = lc.explain(model, images, "gradcam", "features.2", targets=segmentation(2, mask))["gradcam"]
    theirs = grad_cam_maps(
        model, model.features[2], images, [SemanticSegmentationTarget(2, mask.numpy())] * 2, None
    )
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)
    predicted = lc.explain(model, images, "gradcam", "features.2", targets=segmentation(2))["gradcam"]
    region = (model(images).argmax(1) == 2).float()
    expected = [
        grad_cam_maps(
            model,
            model.features[2],
            images[i : i + 1],
            [SemanticSegmentationTarget(2, region[i].numpy())],
            None,
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(predicted.numpy(), np.concatenate(expected), atol=1e-4)


def test_binary_rule_equals_binary_classifier_output_target() -> None:
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)
    )
    images = torch.rand(4, 3, 16, 16)
    targets = [0, 1, 0, 1]
    ours = lc.explain(model, images, ("gradcam", "cam", "scorecam"), "1", targets=targets)
    theirs = grad_cam_maps(model, model[1], images, [BinaryClassifierOutputTarget(t) for t in targets], None)
    np.testing.assert_allclose(ours["gradcam"].numpy(), theirs, atol=1e-4)
    np.testing.assert_allclose(ours["cam"].numpy(), ours["gradcam"].numpy(), atol=1e-4)  # CAM = Grad-CAM here
    predicted = lc.explain_batch(model, images, "gradcam", "1")
    assert torch.equal(predicted.targets, (model(images).squeeze(1) > 0).long())


def test_a_callable_target_equal_to_a_class_gives_the_same_maps() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    images = torch.rand(2, 3, 64, 64)
    by_index = lc.explain(
        model, images, ("gradcam", "gradcam++", "scorecam"), "layer4", targets=3, chunk_size=64
    )
    by_callable = lc.explain(
        model, images, ("gradcam", "gradcam++"), "layer4", targets=lambda output: output[:, 3]
    )
    for method, value in by_callable.items():
        torch.testing.assert_close(value, by_index[method])


def test_outputs_without_a_target_say_what_would_work() -> None:
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            features = self.conv(x)
            return [{"scores": f.mean((1, 2)), "boxes": f[:2, :2, :2].flatten()} for f in features]

    model, images = Detector(), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"returned list.*targets=a callable output -> \[B\] scores"):
        lc.explain(model, images, "gradcam", "conv")
    maps = lc.explain(
        model, images, "gradcam", "conv", targets=lambda out: torch.stack([d["scores"][0] for d in out])
    )
    assert maps["gradcam"].shape == (2, 16, 16)
    with pytest.raises(ValueError, match=r"callable target must return one score per image \[2\]"):
        lc.explain(model, images, "gradcam", "conv", targets=lambda out: out[0]["scores"])


def hf_swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=4
    )
    return SwinForImageClassification(config.__class__(**config.to_dict() | {"num_labels": 10})).eval()


def hf_convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=10)
    return ConvNextForImageClassification(config).eval()


AUTO_CASES = {
    # name: (factory, image size, expected "auto" layer); each was wrong before "auto" verified its pick
    "hugging face swin 64 px": (
        hf_swin,
        64,
        "swin.encoder.layers.2.blocks.1.layernorm_before",
    ),  # was swin.pooler
    "hugging face convnext 32 px": (  # was a 1x1 Linear inside the last block (every map zero)
        hf_convnext,
        32,
        "convnext.encoder.stages.3.downsampling_layer.0",  # stage 2's output (2x2), normalised
    ),
    "timm swin, one block per stage": (  # was the end of stage 0
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            depths=(1, 1, 1, 1),
            embed_dim=16,
            num_heads=(1, 1, 2, 2),
            num_classes=10,
            img_size=64,
            window_size=4,
        ).eval(),
        64,
        "layers.3.blocks.0.norm1",
    ),
}


@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_verifies_its_pick_and_gives_image_specific_maps(case: str) -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    factory, size, expected = AUTO_CASES[case]
    model = factory()
    images = torch.rand(2, 3, size, size)
    assert find_auto_layer(model, images[:1]) == expected
    maps = lc.explain(model, images, "gradcam", targets=non_flat_targets(model, images, expected))["gradcam"]
    assert maps.shape == (2, size, size) and bool((maps.flatten(1).amax(1) > 0).all())
    assert not torch.allclose(maps[0], maps[1], atol=0.05)  # not the same blob on every image


def test_auto_on_deeplab_is_before_the_logits() -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    assert (
        find_auto_layer(model, torch.rand(1, 3, 64, 64), output_key="out") == "classifier.3"
    )  # was classifier


class SideBranch(nn.Module):
    """A spatial convolution the prediction never reads, and one that pools to a single position."""

    def __init__(self) -> None:
        super().__init__()
        self.unused, self.whole = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 8)
        self.head = nn.Linear(4, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.unused(images)
        return self.head(self.whole(images).flatten(1))


def test_auto_that_cannot_verify_any_layer_says_what_it_tried() -> None:
    with pytest.raises(ValueError, match="found no layer") as raised:
        find_auto_layer(SideBranch().requires_grad_(False), torch.rand(1, 3, 8, 8))  # frozen: still probed
    assert "unused (the score does not depend on it)" in str(raised.value)
    assert "whole (it has a single spatial position at this input size)" in str(raised.value)


@pytest.mark.slow
def test_auto_on_timm_efficientnet_takes_the_final_batchnorm_and_activation() -> None:
    """timm's BatchNormAct2d holds an nn.Identity and an in-place SiLU that returns its input: read as
    pooling, they stopped "auto" at conv_head, before the final BatchNorm and activation."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=5).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity
        model.bn2.running_mean.uniform_(-1, 1)
        model.bn2.running_var.uniform_(0.5, 2)
    images = torch.rand(2, 3, 96, 96)
    chosen = lc.explain_batch(model, images, "gradcam")
    assert chosen.target_layers == ["bn2"]
    torch.testing.assert_close(chosen.maps["gradcam"], lc.explain(model, images, "gradcam", "bn2")["gradcam"])
    before = lc.explain(model, images, "gradcam", "conv_head")["gradcam"]
    assert not torch.allclose(before, chosen.maps["gradcam"], atol=1e-3)  # the old pick explained another map


@pytest.mark.slow
def test_auto_refuses_a_window_partitioned_layer() -> None:
    """torchvision's maxvit_t: "auto" took a grid-attention layer whose output [B, 1, 49, 512] holds
    windows, not the image's grid, and read it as a 1x49 strip (every column of the map constant)."""
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t(num_classes=5).eval()
    images = torch.rand(2, 3, 224, 224)
    chosen = lc.explain_batch(model, images, "gradcam")
    assert chosen.target_layers == ["blocks.3"]  # the last stage's [B, 512, 7, 7]
    maps = chosen.maps["gradcam"]
    assert float(maps.std(dim=1).mean()) > 0.05 and float(maps.std(dim=2).mean()) > 0.05
    theirs = grad_cam_maps(model, model.blocks[3], images, chosen.targets.tolist(), None)
    assert pearson(maps, theirs).min() >= 0.99  # the reference at the layer the README names
    wide = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=32, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    assert lc.explain_batch(wide.eval(), torch.rand(1, 3, 224, 100), "gradcam").target_layers == [
        "0"
    ]  # 7x4: rounding
    strided = torch.nn.Sequential(  # other strides per axis (a spectrogram's): no window count, kept
        torch.nn.Conv2d(3, 4, 3, stride=(2, 4), padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    assert lc.explain_batch(strided.eval(), torch.rand(1, 3, 64, 64), "gradcam").target_layers == ["1"]


class _Windows(torch.nn.Module):
    """``[B, K, 8, 8]`` -> ``[B, 4, 16, K]``: four 4x4 windows of channels-last cells (MaxViT's layout)."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        batch, channels = grid.shape[:2]
        return (
            grid.view(batch, channels, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(batch, 4, 16, channels)
        )


def _unwindowed(windows: torch.Tensor) -> torch.Tensor:
    batch, channels = windows.shape[0], windows.shape[-1]
    return windows.view(batch, 2, 2, 4, 4, channels).permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, 8, 8)


def test_a_named_window_partitioned_layer_is_refused_and_unpartitioned_by_a_transform() -> None:
    """A layer whose output holds the image's grid in windows ([B, 4, 16, K] for an 8x8 grid) read as a 4x16
    grid gave a map of window strips without a word; "auto" already refused it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(3, 8, 4, stride=4))
    model.add_module("part", torch.nn.Sequential(_Windows(), torch.nn.LayerNorm(8)))
    model.add_module("pool", torch.nn.Flatten(1, 2))
    model.add_module("head", torch.nn.Sequential(torch.nn.Linear(8, 3)))
    model = _MeanTokens(model).eval()
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(
        _unwindowed(_Windows()(torch.arange(64.0).view(1, 1, 8, 8))), torch.arange(64.0).view(1, 1, 8, 8)
    )
    with pytest.raises(
        ValueError, match=r"'network.part' outputs \[2, 4, 16, 8\].*windows.*reshape_transform"
    ):
        lc.explain(model, images, "gradcam", "network.part")
    unpartitioned = lc.explain(model, images, "gradcam", "network.part", reshape_transform=_unwindowed)[
        "gradcam"
    ]
    assert float(unpartitioned.std(dim=1).mean()) > 0.01 and float(unpartitioned.std(dim=2).mean()) > 0.01
    assert lc.explain_batch(model, images, "gradcam").target_layers == ["network.conv"]


class _MeanTokens(torch.nn.Module):
    """The network's tokens averaged before its head."""

    def __init__(self, network: torch.nn.Sequential) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.network.pool(self.network.part(self.network.conv(images)))
        return self.network.head(tokens.mean(dim=1))


def test_tokens_of_a_model_without_token_parameters_have_no_prefix() -> None:
    """16 tokens for a 224x224 input read as 0 + 4x4 or 7 + 3x3: a model with no class, distillation or
    register token (LeViT) has no prefix; one with a token parameter stays ambiguous."""
    tokens = torch.rand(1, 16, 8)
    layout = infer_layout(tokens, (224, 224), nn.Identity(), nn.Identity(), "x")
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", 0, (4, 4))
    with_token = nn.Module()
    with_token.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match=r"0 prefix \+ 4x4 patches, 7 prefix \+ 3x3 patches"):
        infer_layout(tokens, (224, 224), with_token, nn.Identity(), "x")
