"""explain(): the gradient family, CAM and Eigen-CAM against hand-computed values, and the pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import CNN_METHODS, SmallCNN, TwoByTwoNet
from torch import nn

import lightning_cam as lc

# A = the input (identity 1x1 conv); then ReLU, global average pool, linear with W[0] = [1, -1].
# With 2x2 maps there is no upsampling, so the expected values are exact.
A0 = [[1.0, 2.0], [3.0, -4.0]]
A1 = [[4.0, 0.0], [-1.0, 0.0]]
# G = d y0 / dA = W[0, k] / 4 * [A > 0]:  G0 = 0.25 * [[1, 1], [1, 0]],  G1 = -0.25 * [[1, 0], [0, 0]].
EXPECTED = {
    # w = mean(G) = (0.1875, -0.0625); 0.1875 A0 - 0.0625 A1 = [[-0.0625, 0.375], [0.625, -0.75]]
    "gradcam": [[0.0, 0.6], [1.0, 0.0]],
    # W[0] . A = A0 - A1 = [[-3, 2], [4, -4]]
    "cam": [[0.0, 0.5], [1.0, 0.0]],
    # relu(G0) * A0 + relu(G1) * A1 = 0.25 * [[1, 2], [3, 0]]
    "layercam": [[1 / 3, 2 / 3], [1.0, 0.0]],
    # G0 * A0 + G1 * A1 = [[-0.75, 0.5], [0.75, 0]]
    "hirescam": [[0.0, 2 / 3], [1.0, 0.0]],
    # w0 = 0.25 * 6 / 2 = 0.75, w1 = -0.25 * 4 / 3 = -1/3: [[-0.583, 1.5], [2.583, -3]]
    "xgradcam": [[0.0, 1.5 / (2.25 + 1 / 3)], [1.0, 0.0]],
    # channel 0: alpha = (1/16) / (2/16 + 2 * 1/64) = 0.4 where G > 0 (0 where G = 0, the denominator
    # is 0 there), w0 = 3 * 0.4 * 0.25 = 0.3; channel 1: relu(G1) = 0, w1 = 0. Map 0.3 * A0.
    "gradcam++": [[1 / 3, 2 / 3], [1.0, 0.0]],
}


ONE_PASS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "saliency")


def hand_model_inputs() -> tuple[TwoByTwoNet, torch.Tensor]:
    model = TwoByTwoNet(weight=[[1.0, -1.0], [0.5, 0.5]])
    images = torch.tensor([[A0, A1]])
    return model, images


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_method_matches_hand_computed_map(method: str) -> None:
    model, images = hand_model_inputs()
    maps = lc.explain(model, images, method, target_layer="features", targets=0)
    torch.testing.assert_close(maps[method][0], torch.tensor(EXPECTED[method]), atol=1e-6, rtol=0)


def test_eigencam_is_first_principal_component_projection() -> None:
    model, images = hand_model_inputs()
    positions = np.array([[1.0, 4.0], [2.0, 0.0], [3.0, -1.0], [-4.0, 0.0]])  # (i, j) rows x channels
    centred = positions - positions.mean(axis=0)
    _, _, vt = np.linalg.svd(centred)
    projection = centred @ vt[0]
    projection *= np.sign(projection[np.abs(projection).argmax()])  # largest magnitude positive
    projection = np.maximum(projection, 0)
    expected = (projection - projection.min()) / (projection.max() - projection.min())
    maps = lc.explain(model, images, "eigencam", target_layer="features")
    np.testing.assert_allclose(maps["eigencam"][0].reshape(-1).numpy(), expected, atol=1e-5)


def test_gradcam_equals_cam_on_global_average_pool_linear_model() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    images = torch.rand(3, 3, 64, 64)
    maps = lc.explain(model, images, ("gradcam", "cam"), target_layer="layer4")
    assert maps["gradcam"].std() > 0.1
    torch.testing.assert_close(maps["gradcam"], maps["cam"], atol=1e-5, rtol=0)


def test_maps_are_float32_in_unit_range_upsampled_to_input() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    maps = lc.explain(model, torch.rand(2, 3, 20, 24), CNN_METHODS)
    assert set(maps) == set(CNN_METHODS)
    for name, value in maps.items():
        assert value.shape == (2, 20, 24), name
        assert value.dtype == torch.float32
        assert float(value.min()) == 0.0 and float(value.max()) == pytest.approx(1.0), name


def test_low_resolution_map_is_relu_then_bilinear_upsampling_then_min_max() -> None:
    model = TwoByTwoNet(weight=[[1.0, -1.0], [0.5, 0.5]])
    model.features.stride = (2, 2)  # 4x4 images -> 2x2 activations: A = images[..., ::2, ::2]
    images = torch.zeros(1, 2, 4, 4)
    images[0, :, ::2, ::2] = torch.tensor([A0, A1])
    maps = lc.explain(model, images, "cam", target_layer="features", targets=0)
    low = torch.tensor([[0.0, 2.0], [4.0, 0.0]])  # relu(A0 - A1)
    up = torch.nn.functional.interpolate(low[None, None], size=(4, 4), mode="bilinear", align_corners=False)[
        0, 0
    ]
    torch.testing.assert_close(maps["cam"][0], (up - up.min()) / (up.max() - up.min()))
    assert maps["cam"][0, 3, 0] == 1.0 and maps["cam"][0, 0, 3] == 0.5  # not flipped: peak stays bottom-left


def test_batch_equals_each_image_alone() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    images = torch.rand(5, 3, 16, 16)
    batch = lc.explain(model, images, CNN_METHODS)
    for index in range(5):
        alone = lc.explain(model, images[index : index + 1], CNN_METHODS)
        for name in CNN_METHODS:
            torch.testing.assert_close(batch[name][index], alone[name][0], atol=1e-5, rtol=0, msg=name)


def test_targets_int_sequence_tensor_and_predicted() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4)
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    default = lc.explain(model, images, "gradcam")["gradcam"]
    explicit = lc.explain(model, images, "gradcam", targets=predicted)["gradcam"]
    torch.testing.assert_close(default, explicit)
    as_list = lc.explain(model, images, "gradcam", targets=[2, 2, 2])["gradcam"]
    as_int = lc.explain(model, images, "gradcam", targets=2)["gradcam"]
    torch.testing.assert_close(as_list, as_int)
    per_class = [lc.explain(model, images, "cam", targets=c)["cam"] for c in range(2)]
    assert not torch.allclose(per_class[0], per_class[1])


def test_one_forward_and_one_gradient_call_for_all_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(2, 3, 16, 16)
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    grad_calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args: object, **kwargs: object) -> object:
        grad_calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        lc.explain(model, images, ONE_PASS, target_layer="features.5")
        assert (len(forwards), len(grad_calls)) == (1, 1)
        forwards.clear()
        grad_calls.clear()
        # Guided backprop differentiates the same graph a second time, with guided ReLUs.
        lc.explain(model, images, (*ONE_PASS, "guided_backprop", "guided_gradcam"), target_layer="features.5")
        assert (len(forwards), len(grad_calls)) == (1, 2)
        forwards.clear()
        grad_calls.clear()
        lc.explain(model, images, ("cam", "eigencam"), target_layer="features.5")
        assert (len(forwards), len(grad_calls)) == (1, 0)
        # "auto" probes one image the first time, then remembers the layer for this model.
        lc.explain(model, images, "gradcam")
        forwards.clear()
        lc.explain(model, images, ONE_PASS)
        assert len(forwards) == 1
    finally:
        handle.remove()


def test_explain_batch_times_the_pass_and_each_method() -> None:
    torch.manual_seed(0)
    result = lc.explain_batch(SmallCNN(), torch.rand(2, 3, 16, 16), ("gradcam", "scorecam", "guided_gradcam"))
    assert set(result.seconds) == {"pass", "gradcam", "scorecam", "guided_backprop", "guided_gradcam"}
    assert all(value > 0 for value in result.seconds.values())
    assert result.seconds["scorecam"] > result.seconds["gradcam"]  # its masked forwards are its own work


def test_backward_stops_at_the_target_layer() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    first_conv_grads = []
    handle = model.features[0].register_full_backward_hook(lambda *_: first_conv_grads.append(1))
    try:
        lc.explain(model, torch.rand(2, 3, 16, 16), "gradcam", target_layer="features.4")
    finally:
        handle.remove()
    assert first_conv_grads == []


def test_auto_layer_on_torchvision_models() -> None:
    from lightning_cam.engine.layers import find_auto_layer

    images = torch.rand(1, 3, 112, 112)
    assert find_auto_layer(torchvision.models.resnet18(num_classes=3), images) == "layer4"
    vgg = torchvision.models.vgg11(num_classes=3)
    name = find_auto_layer(vgg, images)
    assert name == f"features.{len(vgg.features) - 2}"  # the last ReLU, before the final max-pool


def test_target_layer_as_module_and_list_fuses_normalised_maps() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(2, 3, 16, 16)
    by_name = lc.explain(model, images, "gradcam", target_layer="features.4")["gradcam"]
    by_module = lc.explain(model, images, "gradcam", target_layer=model.features[4])["gradcam"]
    torch.testing.assert_close(by_name, by_module)
    other = lc.explain(model, images, "gradcam", target_layer="features.0")["gradcam"]
    fused = lc.explain(model, images, "gradcam", target_layer=["features.4", "features.0"])["gradcam"]
    mean = (by_name + other) / 2
    flat = mean.reshape(2, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    torch.testing.assert_close(fused, ((flat - low) / (high - low)).reshape_as(mean), atol=1e-6, rtol=0)


def test_a_one_pixel_map_upsampled_is_flat_not_rounding_noise() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    maps = lc.explain(model, torch.rand(2, 3, 32, 32), ("gradcam", "cam"), "layer4")  # layer4 is 1x1 here
    for value in maps.values():
        assert torch.equal(value, torch.zeros(2, 32, 32))


def test_flat_and_non_finite_maps_are_zero_never_nan() -> None:
    model = TwoByTwoNet(weight=[[1.0, -1.0], [0.5, 0.5]])
    flat = torch.ones(1, 2, 2, 2)
    maps = lc.explain(model, flat, ("gradcam", "cam", "eigencam"), target_layer="features", targets=0)
    for value in maps.values():
        assert torch.equal(value, torch.zeros(1, 2, 2))
    images = torch.tensor([[A0, A1], [A0, A1]])
    images[1, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"non-finite .*image\(s\) \[1\]"):
        maps = lc.explain(model, images, CNN_METHODS, target_layer="features", targets=0)
    for name, value in maps.items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value[1], torch.zeros(2, 2)), name
    torch.testing.assert_close(maps["gradcam"][0], torch.tensor(EXPECTED["gradcam"]))


def test_channels_last_and_float64_models() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(2, 3, 16, 16)
    reference = lc.explain(model, images, CNN_METHODS)
    last = lc.explain(
        model.to(memory_format=torch.channels_last), images.to(memory_format=torch.channels_last), CNN_METHODS
    )
    for name in CNN_METHODS:
        torch.testing.assert_close(last[name], reference[name], atol=1e-5, rtol=0)
    double = lc.explain(model.double(), images, CNN_METHODS)
    for name in CNN_METHODS:
        assert double[name].dtype == torch.float32
        torch.testing.assert_close(double[name], reference[name], atol=1e-4, rtol=0)


def test_models_returning_tuples_and_dicts() -> None:
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"embedding": x.mean((2, 3)), "scores": self.net(x)}

    torch.manual_seed(0)
    model = DictModel()
    images = torch.rand(2, 3, 16, 16)
    reference = lc.explain(model.net, images, "gradcam")["gradcam"]
    torch.testing.assert_close(
        lc.explain(model, images, "gradcam", output_key="scores")["gradcam"], reference
    )
    picked = lc.explain(model, images, "gradcam", output_key=lambda out: out["scores"])["gradcam"]
    torch.testing.assert_close(picked, reference)
    with pytest.raises(ValueError, match="output_key"):
        lc.explain(model, images, "gradcam")
