"""The state guard: explaining leaves the model, its gradients and the global RNGs as they were."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CNN_METHODS, SmallCNN
from torch import nn

import lightning_cam as lc


@dataclass
class Snapshot:
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, tuple[int, torch.Tensor] | None]
    tensors: dict[str, torch.Tensor]
    hooks: int
    rng: tuple[Any, ...]
    grad_enabled: bool


def count_hooks(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(module._backward_pre_hooks)
    for tensor in model.parameters():
        total += len(tensor._backward_hooks or {})
    return total


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        training={name: m.training for name, m in model.named_modules()},
        requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
        grads={
            name: None if p.grad is None else (id(p.grad), p.grad.clone())
            for name, p in model.named_parameters()
        },
        tensors={name: t.detach().clone() for name, t in model.state_dict().items()},
        hooks=count_hooks(model),
        rng=(torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
        grad_enabled=torch.is_grad_enabled(),
    )


def assert_same(before: Snapshot, after: Snapshot) -> None:
    assert after.training == before.training
    assert after.requires_grad == before.requires_grad
    assert after.hooks == before.hooks
    assert after.grad_enabled == before.grad_enabled
    for name, grad in before.grads.items():
        if grad is None:
            assert after.grads[name] is None, name
        else:
            assert after.grads[name] is not None and after.grads[name][0] == grad[0], f"{name}.grad replaced"
            assert torch.equal(after.grads[name][1], grad[1]), f"{name}.grad changed"
    for name, tensor in before.tensors.items():
        assert torch.equal(after.tensors[name], tensor), f"{name} changed"
    assert torch.equal(after.rng[0], before.rng[0])
    assert np.array_equal(after.rng[1], before.rng[1])
    assert after.rng[2] == before.rng[2]


def model_mid_training() -> SmallCNN:
    """A model in train mode, with dropout, BatchNorm and accumulated .grad tensors."""
    torch.manual_seed(0)
    model = SmallCNN().train()
    model(torch.rand(4, 3, 16, 16)).sum().backward()
    return model


def test_train_mode_model_with_dropout_batchnorm_and_grads_is_unchanged() -> None:
    model = model_mid_training()
    images = torch.rand(3, 3, 16, 16)
    before = snapshot(model)
    maps = lc.explain(model, images, CNN_METHODS)
    assert_same(before, snapshot(model))
    # The pass ran in eval mode: dropout off, so two calls agree exactly.
    again = lc.explain(model, images, CNN_METHODS)
    for name in CNN_METHODS:
        assert torch.equal(maps[name], again[name])


def test_inside_inference_mode_and_no_grad() -> None:
    model = model_mid_training()
    with torch.inference_mode():
        images = torch.rand(2, 3, 16, 16)  # an inference tensor, as Lightning's validation batches are
        before = snapshot(model)
        maps = lc.explain(model, images, CNN_METHODS)
        assert torch.is_inference_mode_enabled()
        after = snapshot(model)
    assert_same(before, after)
    reference = lc.explain(model, images.clone(), CNN_METHODS)
    for name in CNN_METHODS:
        torch.testing.assert_close(maps[name], reference[name])
    with torch.no_grad():
        before = snapshot(model)
        lc.explain(model, images.clone(), CNN_METHODS)
        after = snapshot(model)
    assert_same(before, after)


def test_frozen_backbone() -> None:
    model = model_mid_training()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    images = torch.rand(2, 3, 16, 16)
    before = snapshot(model)
    maps = lc.explain(model, images, CNN_METHODS)
    assert_same(before, snapshot(model))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    unfrozen = lc.explain(model, images, CNN_METHODS)
    for name in CNN_METHODS:
        torch.testing.assert_close(maps[name], unfrozen[name])


def test_in_place_relu_after_the_target_layer_does_not_change_the_captured_activations() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.rand(2, 3, 16, 16)
    # features.5 is a BatchNorm followed by ReLU(inplace=True): its output has negative values.
    maps = lc.explain(model, images, "hirescam", target_layer="features.5")["hirescam"]
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    reference = lc.explain(model, images, "hirescam", target_layer="features.5")["hirescam"]
    torch.testing.assert_close(maps, reference)
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_channels_last_model_state_is_unchanged() -> None:
    model = model_mid_training().to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 16, 16).to(memory_format=torch.channels_last)
    before = snapshot(model)
    lc.explain(model, images, CNN_METHODS)
    assert_same(before, snapshot(model))
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_model_that_draws_random_numbers_does_not_move_the_global_rngs() -> None:
    class Noisy(SmallCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            random.random()
            np.random.rand()
            return super().forward(x + 0 * torch.rand_like(x))

    torch.manual_seed(0)
    model = Noisy()
    images = torch.rand(2, 3, 16, 16)
    before = snapshot(model)
    lc.explain(model, images, "gradcam")
    assert_same(before, snapshot(model))


def test_everything_is_released_when_the_pass_raises() -> None:
    model = model_mid_training()
    images = torch.rand(2, 3, 16, 16)
    before = snapshot(model)
    with pytest.raises(ValueError, match="targets"):
        lc.explain(model, images, CNN_METHODS, targets=99)
    assert_same(before, snapshot(model))

    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.net(x)
            raise RuntimeError("boom")

    failing = Failing().train()
    images = torch.rand(1, 3, 16, 16)
    before = snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):
        lc.explain(failing, images, "gradcam", target_layer="net.features.4")
    assert_same(before, snapshot(failing))
