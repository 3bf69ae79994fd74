"""Shared tiny models and helpers for the tests."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import lightning_cam as lc
from lightning_cam.engine.methods import REGISTRY

CNN_METHODS = tuple(name for name in lc.METHODS if REGISTRY[name].kind != "attention")
"""Every method that explains a CNN (rollout and grad_rollout need self-attention blocks)."""

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


class TwoByTwoNet(nn.Module):
    """1x1 identity conv (the target layer) -> ReLU -> global average pool -> linear.

    With 2 input channels and 2x2 images the activations are the input itself, so every map can
    be worked out by hand.
    """

    def __init__(self, weight: list[list[float]], relu: bool = True) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 2, kernel_size=1, bias=False)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, len(weight))
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor(weight))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.features(x))).flatten(1))


class SmallCNN(nn.Module):
    """A small CNN with BatchNorm, dropout and in-place ReLUs, as users write them."""

    def __init__(self, num_classes: int = 4, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def small_cnn(seeded: None) -> SmallCNN:
    return SmallCNN()
