"""A planted shortcut nobody drew a mask for: a 6x6 magenta tag in the top-left corner of 40 % of class
0's images (48 px shapes on a plain background). A tagged image shows another class's shape, so the tag
is the only way to its label: a model trained on them reads the tag. The control model is trained on the
same images without the tag. Both are audited on the same tagged validation images."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from lit_helpers import TinyClassifier
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN

TAG_COLOUR = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
TAG = (slice(2, 8), slice(2, 8))


def planted(num: int, seed: int, tag: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(images [N, 3, 48, 48], labels [N], tagged [N] bool)``."""
    generator = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(4, (num,), generator=generator)
    tagged = (labels == 0) & (torch.rand(num, generator=generator) < 0.4)
    shapes = torch.where(tagged, torch.randint(1, 4, (num,), generator=generator), labels)
    data = make_shapes(ShapesConfig(num, None, 48, cue_size=0, seed=seed))
    objects = data["object"][:, None]
    drawn = data["image"] * objects + 0.35 * (1 - objects)  # each shape on a plain background
    pool = {c: (data["label"] == c).nonzero().flatten() for c in range(4)}
    images = drawn[torch.stack([pool[int(s)][i % len(pool[int(s)])] for i, s in enumerate(shapes)])]
    if tag:
        images[tagged, :, TAG[0], TAG[1]] = TAG_COLOUR
    return images, labels, tagged


def planted_model(seed: int, tag: bool, epochs: int = 8) -> SmallCNN:
    """The demo CNN (width 8) trained with Adam on 1,024 planted images (a few seconds), its BatchNorm
    statistics recalibrated."""
    torch.manual_seed(seed)
    images, labels, _ = planted(1024, seed, tag)
    model = SmallCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in range(epochs):
        for batch, targets in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(batch), targets).backward()
            optimizer.step()
    return recalibrated(model, loader)


def recalibrated(model: SmallCNN, loader: DataLoader) -> SmallCNN:
    """The model in eval mode with its BatchNorm statistics recomputed over the training images (the
    running averages lag the last steps: without this, seed 4's model predicted class 0 for 68 % of the
    validation images; with it every seed's model is 99-100 % accurate)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the pass
    with torch.no_grad():
        for batch, _ in loader:
            model(batch)
    return model.eval()


def planted_validation() -> tuple[DataLoader, Tensor]:
    """240 tagged validation images (batches of 60) and which of them carry the tag."""
    images, labels, tagged = planted(240, 1000, True)
    return DataLoader(TensorDataset(images, labels), batch_size=60), tagged


class PlantedClassifier(TinyClassifier):
    """:func:`planted_model`'s network and optimiser as a LightningModule, on (images, labels) batches."""

    def __init__(self) -> None:
        super().__init__(width=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), 3e-3)


def planted_train_loader(seed: int) -> DataLoader:
    images, labels, _ = planted(1024, seed, True)
    return DataLoader(
        TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
