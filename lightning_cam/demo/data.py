"""A procedural shortcut dataset, made with torch alone (no download).

Each image shows one shape (disk, square, triangle or cross: the class) of random position, size
and colour on a textured background, and a small coloured **cue** tag in the top-left corner.
The tag's colour names a class: in training it agrees with the label with probability
``cue_strength``, so a model can take the shortcut of reading the tag instead of the shape.
A second, decorrelated validation set draws the tag's class at random: a model that relies on
the cue loses accuracy there. Every sample carries its ``object`` and ``cue`` masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cam.demo.volumes import VolumesConfig, make_volumes

__all__ = ["CLASS_NAMES", "CUE_COLOURS", "ShapesConfig", "ShapesDataset", "make_shapes"]

CLASS_NAMES: tuple[str, ...] = ("disk", "square", "triangle", "cross")
CUE_COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.3, 1.0], [1.0, 1.0, 0.1]])


@dataclass(frozen=True)
class ShapesConfig:
    """How a shapes dataset is drawn.

    Attributes:
        num_samples: how many images.
        cue_strength: probability that the cue tag names the true class (otherwise it names one of
            the other classes, drawn uniformly); ``None`` for a tag of a uniformly random class,
            independent of the label (the decorrelated set).
        image_size: side of the square images.
        cue_size: side of the square tag in the top-left corner; 0 for no tag.
        single_shape: draw every class with the same shape (a disk), so only the cue is informative.
        object_size: the shapes' radius, drawn uniformly between these fractions of the side.
        show_cue: draw the tag; with ``False`` the ``cue`` mask still marks where it would be.
        seed: the generator's seed (the global RNGs are not touched).
    """

    num_samples: int = 1024
    cue_strength: float | None = 0.95
    image_size: int = 64
    cue_size: int = 8
    single_shape: bool = False
    object_size: tuple[float, float] = (0.14, 0.24)
    show_cue: bool = True
    seed: int = 0


def _shape_masks(labels: Tensor, dx: Tensor, dy: Tensor, radius: Tensor) -> Tensor:
    """Boolean ``[N, H, W]`` masks of each sample's shape, from offsets to its centre."""
    arm = radius / 3
    shapes = torch.stack(
        [
            dx**2 + dy**2 <= radius**2,  # disk
            (dx.abs() <= radius * 0.8) & (dy.abs() <= radius * 0.8),  # square
            (dy.abs() <= radius) & (dx.abs() <= (dy + radius) / 2),  # triangle, apex up
            ((dx.abs() <= arm) & (dy.abs() <= radius)) | ((dy.abs() <= arm) & (dx.abs() <= radius)),  # cross
        ],
        dim=1,
    )
    return shapes[torch.arange(len(labels)), labels]


def make_shapes(config: ShapesConfig) -> dict[str, Tensor]:
    """Draw a dataset: ``image`` ``[N, 3, S, S]`` in ``[0, 1]``, ``label`` ``[N]``, ``cue_label`` ``[N]``,
    ``object`` and ``cue`` masks ``[N, S, S]`` (float 0/1)."""
    generator = torch.Generator().manual_seed(config.seed)
    n, size, classes = config.num_samples, config.image_size, len(CLASS_NAMES)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    labels = torch.randint(classes, (n,), generator=generator)
    coarse = uniform(n, 3, 6, 6, low=0.15, high=0.75)
    background = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    background = (background + uniform(n, 3, size, size, low=-0.12, high=0.12)).clamp(0, 1)

    radius = uniform(n, low=size * config.object_size[0], high=size * config.object_size[1])
    margin = radius + 2
    cx = margin + uniform(n) * (size - 2 * margin)
    cy = margin + uniform(n) * (size - 2 * margin)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)
    shape_labels = torch.zeros_like(labels) if config.single_shape else labels
    objects = _shape_masks(shape_labels, dx, dy, radius.view(-1, 1, 1)).float()
    colours = uniform(n, 3, 1, 1, low=0.0, high=1.0)
    images = background * (1 - objects[:, None]) + colours * objects[:, None]

    if config.cue_strength is None:
        cue_labels = torch.randint(classes, (n,), generator=generator)
    else:
        other = (labels + torch.randint(1, classes, (n,), generator=generator)) % classes
        cue_labels = torch.where(uniform(n) < config.cue_strength, labels, other)
    cues = torch.zeros(n, size, size)
    if config.cue_size > 0:
        cues[:, 1 : 1 + config.cue_size, 1 : 1 + config.cue_size] = 1.0
        if config.show_cue:
            tag = CUE_COLOURS[cue_labels].view(n, 3, 1, 1)
            images = images * (1 - cues[:, None]) + tag * cues[:, None]
            objects = objects * (1 - cues)  # a shape under the tag is hidden there
    return {"image": images, "label": labels, "cue_label": cue_labels, "object": objects, "cue": cues}


class ShapesDataset(Dataset):
    """Samples as dicts ``{"image", "label", "mask": {"object", "cue"}}``, the form CAMMonitor reads: the
    shapes images, or the volumes of :mod:`lightning_cam.demo.volumes` for a ``VolumesConfig``."""

    def __init__(self, config: ShapesConfig | VolumesConfig) -> None:
        self.config = config
        self.data = make_shapes(config) if isinstance(config, ShapesConfig) else make_volumes(config)

    def __len__(self) -> int:
        return self.config.num_samples

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "image": self.data["image"][index],
            "label": self.data["label"][index],
            "mask": {"object": self.data["object"][index], "cue": self.data["cue"][index]},
        }
