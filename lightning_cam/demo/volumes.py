"""A procedural shortcut set of volumes (a CT/MRI stand-in), made with torch alone: one ball, plate or
rod (the class) of random position and size in a noisy volume, and a small **cue** blob in a corner
whose brightness names a class, agreeing with the label with probability ``cue_strength`` (the biased
variant; ``None``: a blob of a random class, the decorrelated set). Every volume carries its
``object`` and ``cue`` masks ``[D, H, W]``; volumes are ``[1, D, H, W]`` (one channel)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["VOLUME_CLASSES", "VolumeCNN", "VolumesConfig", "make_volumes"]

VOLUME_CLASSES: tuple[str, ...] = ("ball", "plate", "rod")
CUE_LEVELS = torch.tensor([0.0, 0.7, 1.4])  # the blob's brightness per class


@dataclass(frozen=True)
class VolumesConfig:
    """How a volumes set is drawn (see :class:`~lightning_cam.demo.data.ShapesConfig` for the cue)."""

    num_samples: int = 512
    cue_strength: float | None = 0.95
    size: int = 24
    cue_size: int = 6
    seed: int = 0


def _objects(labels: Tensor, offsets: Tensor, radius: Tensor) -> Tensor:
    """Boolean ``[N, S, S, S]`` masks by label: a ball, a plate (thin along depth), or a rod (along depth)."""
    dz, dy, dx = offsets.unbind(dim=1)
    r = radius.view(-1, 1, 1, 1)
    across = dy**2 + dx**2
    shapes = torch.stack(
        [
            dz**2 + across <= r**2,
            (dz.abs() <= r / 3) & (across <= (1.2 * r) ** 2),
            (dz.abs() <= 1.4 * r) & (across <= (r / 2.5) ** 2),
        ],
        dim=1,
    )
    return shapes[torch.arange(len(labels)), labels]


def make_volumes(config: VolumesConfig) -> dict[str, Tensor]:
    """``image`` ``[N, 1, S, S, S]``, ``label`` ``[N]``, ``cue_label`` ``[N]``, ``object`` and ``cue``
    masks ``[N, S, S, S]`` (float 0/1)."""
    generator = torch.Generator().manual_seed(config.seed)
    n, size, classes = config.num_samples, config.size, len(VOLUME_CLASSES)
    labels = torch.randint(classes, (n,), generator=generator)
    radius = 3.5 + 2.0 * torch.rand(n, generator=generator)
    centres = (
        1.4 * radius.view(-1, 1)
        + 4
        + torch.rand(n, 3, generator=generator) * (size - 2.8 * radius.view(-1, 1) - 5)
    )
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))  # [3, S, S, S]
    offsets = grid[None] - centres.view(n, 3, 1, 1, 1)
    objects = _objects(labels, offsets, radius).float()
    brightness = 0.5 + 0.25 * torch.rand(n, 1, 1, 1, generator=generator)
    volumes = 0.25 + 0.12 * torch.randn(n, size, size, size, generator=generator)
    volumes = volumes * (1 - objects) + brightness * objects
    if config.cue_strength is None:
        cue_labels = torch.randint(classes, (n,), generator=generator)
    else:
        other = (labels + torch.randint(1, classes, (n,), generator=generator)) % classes
        cue_labels = torch.where(torch.rand(n, generator=generator) < config.cue_strength, labels, other)
    cues = torch.zeros(n, size, size, size)
    cues[:, 1 : 1 + config.cue_size, 1 : 1 + config.cue_size, 1 : 1 + config.cue_size] = 1.0
    volumes = volumes * (1 - cues) + CUE_LEVELS[cue_labels].view(n, 1, 1, 1) * cues
    objects = objects * (1 - cues)
    return {
        "image": volumes[:, None],
        "label": labels,
        "cue_label": cue_labels,
        "object": objects,
        "cue": cues,
    }


class VolumeCNN(nn.Module):
    """Three Conv3d blocks (the last at 1/4 of the volume's size), global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = len(VOLUME_CLASSES), width: int = 8) -> None:
        super().__init__()

        def block(channels_in: int, channels_out: int) -> list[nn.Module]:
            return [nn.Conv3d(channels_in, channels_out, 3, padding=1), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width),
            nn.MaxPool3d(2),
            *block(width, 2 * width),
            nn.MaxPool3d(2),
            *block(2 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, volumes: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(volumes)).flatten(1))
