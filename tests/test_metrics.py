"""Attention metrics on hand-made maps, on a tiny model, and on models that learned a known shortcut."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import lightning_cam as lc
from lightning_cam import metrics
from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN


def test_uniform_map_has_enrichment_one_and_mass_equal_to_the_area() -> None:
    maps = torch.ones(2, 4, 4)
    masks = torch.zeros(2, 4, 4)
    masks[0, :2, :2] = 1  # a quarter of the image
    masks[1, 0, 0] = 1  # one pixel of 16
    torch.testing.assert_close(metrics.mass_in_mask(maps, masks), torch.tensor([0.25, 1 / 16]))
    torch.testing.assert_close(metrics.enrichment(maps, masks), torch.tensor([1.0, 1.0]))


def test_map_inside_the_mask_has_mass_one_and_points_inside() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1], maps[0, 1, 2] = 1.0, 0.5
    masks = torch.zeros(1, 4, 4)
    masks[0, 1, 1:3] = 1
    assert metrics.mass_in_mask(maps, masks).item() == 1.0
    assert metrics.enrichment(maps, masks).item() == 8.0  # all the mass on 2/16 of the image
    assert metrics.pointing_game(maps, masks).item() == 1.0
    outside = torch.zeros(1, 4, 4)
    outside[0, 3, 3] = 1.0
    assert metrics.mass_in_mask(outside, masks).item() == 0.0
    assert metrics.pointing_game(outside, masks).item() == 0.0


def test_hand_computed_mass_with_partial_overlap() -> None:
    maps = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])  # sum 8
    masks = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # right column
    assert metrics.mass_in_mask(maps, masks).item() == pytest.approx(7 / 8)
    assert metrics.enrichment(maps, masks).item() == pytest.approx((7 / 8) / 0.5)


def test_empty_mask_and_zero_map() -> None:
    maps = torch.zeros(1, 2, 2)
    empty = torch.zeros(1, 2, 2)
    assert math.isnan(metrics.mass_in_mask(torch.ones(1, 2, 2), empty).item())
    assert math.isnan(metrics.pointing_game(maps, torch.ones(1, 2, 2)).item())  # a zero map points nowhere
    half = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # A zero map is no evidence (issue "Nothing silent"): NaN, never the uniform map's 0.5 mass / 1.0x.
    assert math.isnan(metrics.mass_in_mask(maps, half).item()) and math.isnan(
        metrics.enrichment(maps, half).item()
    )
    assert math.isnan(metrics.drift(maps, half).item()) and metrics.flat_maps(
        torch.stack([maps[0], half[0]])
    ).tolist() == [True, False]
    mixed = torch.stack([maps[0], half[0]])  # one flat map, one on the mask: the flat one is left out
    assert metrics.nanmean(metrics.enrichment(mixed, torch.stack([half[0], half[0]]))).item() == 2.0
    assert math.isnan(metrics.nanmean(torch.tensor([float("nan")])).item())
    assert metrics.nanmean(torch.tensor([1.0, float("nan"), 3.0])).item() == 2.0


def test_drift() -> None:
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.2]]])
    assert metrics.drift(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.drift(a, 1 - a).item() == pytest.approx(2.0)  # the opposite attention
    b = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = 1 - torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert metrics.drift(a, b).item() == pytest.approx(expected.item())
    flat = torch.zeros(1, 2, 2)
    assert math.isnan(metrics.drift(flat, flat).item()) and math.isnan(metrics.drift(a, flat).item())
    assert math.isnan(metrics.drift(flat, a).item())  # a flat map is no attention to compare
    assert metrics.drift(a.clamp(max=0.5) * 0 + 0.5, a).item() == 1.0  # a constant map: no correlation


def test_average_drop_and_increase_in_confidence_by_hand() -> None:
    confidence = torch.tensor([0.5, 0.8, 0.4])
    masked = torch.tensor([0.25, 0.9, 0.4])
    torch.testing.assert_close(metrics.average_drop(confidence, masked), torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(
        metrics.increase_in_confidence(confidence, masked), torch.tensor([0.0, 1.0, 0.0])
    )


def test_masked_confidence_is_one_batched_forward_equal_to_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = SmallCNN(width=4).train()
    images = torch.rand(3, 3, 16, 16)
    maps = {"a": torch.rand(3, 16, 16), "b": torch.rand(3, 16, 16)}
    targets = torch.tensor([0, 2, 1])
    forwards = []
    handle = model.register_forward_hook(lambda _m, inputs, _o: forwards.append(len(inputs[0])))
    try:
        result = metrics.masked_confidence(model, images, maps, targets)
    finally:
        handle.remove()
    assert forwards == [6] and model.training
    with torch.no_grad():
        model.eval()
        for name, value in maps.items():
            direct = F.softmax(model(images * value[:, None]), dim=1)[torch.arange(3), targets]
            torch.testing.assert_close(result[name], direct)


def test_class_mean_maps() -> None:
    maps = torch.stack([torch.full((2, 2), v) for v in (0.0, 1.0, 0.5, 0.25)])
    labels = torch.tensor([0, 0, 2, 2])
    means, present = metrics.class_mean_maps(maps, labels, 3)
    torch.testing.assert_close(means[:, 0, 0], torch.tensor([0.5, 0.0, 0.375]))
    assert present.tolist() == [True, False, True]


def train_on_shapes(config: ShapesConfig, epochs: int = 4) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A small CNN trained for a few seconds with a plain loop (seeded)."""
    torch.manual_seed(0)
    data = make_shapes(config)
    model = SmallCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data["label"]), generator=torch.Generator().manual_seed(1))
        for batch in order.split(64):
            loss = F.cross_entropy(model(data["image"][batch]), data["label"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test = make_shapes(ShapesConfig(**{**config.__dict__, "num_samples": 128, "seed": 99}))
    return model.eval(), test


@pytest.mark.slow
def test_a_model_that_can_only_read_the_cue_puts_its_attention_there() -> None:
    config = ShapesConfig(num_samples=1024, cue_strength=1.0, image_size=64, cue_size=8, single_shape=True)
    model, test = train_on_shapes(config)
    with torch.no_grad():
        accuracy = (model(test["image"]).argmax(1) == test["label"]).float().mean()
    assert accuracy > 0.9  # it learned the cue: the shape is the same for every class
    maps = lc.explain(model, test["image"], "gradcam", "features")["gradcam"]
    assert metrics.nanmean(metrics.enrichment(maps, test["cue"])).item() > 5


@pytest.mark.slow
def test_a_model_trained_without_a_cue_looks_at_the_object() -> None:
    config = ShapesConfig(num_samples=1024, image_size=64, cue_size=8, show_cue=False)
    model, test = train_on_shapes(config)
    maps = lc.explain(model, test["image"], "gradcam", "features")["gradcam"]
    object_mass = metrics.nanmean(metrics.mass_in_mask(maps, test["object"])).item()
    cue_mass = metrics.nanmean(metrics.mass_in_mask(maps, test["cue"])).item()
    assert object_mass > cue_mass
    assert metrics.nanmean(metrics.enrichment(maps, test["object"])).item() > 1
