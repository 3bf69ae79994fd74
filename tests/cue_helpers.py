"""A model that learns a corner cue within a few epochs, and a control that cannot: the fixtures of the
tests that act on attention scalars (EarlyStopping, ModelCheckpoint, alerts, group slices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lit_helpers import trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN

IMAGE_SIZE = 48


class CueData(Dataset):
    """Shapes as dict samples with ``cue`` and ``object`` masks and a ``group``.

    ``cue=True``: every class is drawn as the same shape and the corner tag names the class, so the
    tag is the only way to the label. ``cue=False``: the shapes name the class and no tag is drawn
    (its mask still marks the corner). ``groups``: ``"cued"`` samples as with ``cue=True`` and
    ``"plain"`` samples as with ``cue=False``, alternating.
    """

    def __init__(self, num: int, seed: int, cue: bool | None = True) -> None:
        def draw(with_cue: bool) -> dict[str, Tensor]:
            config = ShapesConfig(
                num, 1.0, IMAGE_SIZE, cue_size=6, single_shape=with_cue, show_cue=with_cue, seed=seed
            )
            return make_shapes(config)

        if cue is None:
            cued, plain = draw(True), draw(False)
            self.groups = ["cued" if i % 2 == 0 else "plain" for i in range(num)]
            self.data = {
                key: torch.where(_even(num, value), cued[key], value) for key, value in plain.items()
            }
        else:
            self.data, self.groups = draw(cue), ["cued" if cue else "plain"] * num

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        masks = {"cue": self.data["cue"][index], "object": self.data["object"][index]}
        return {
            "image": self.data["image"][index],
            "label": self.data["label"][index],
            "mask": masks,
            "group": self.groups[index],
        }


def _even(num: int, like: Tensor) -> Tensor:
    return (torch.arange(num) % 2 == 0).view(-1, *([1] * (like.dim() - 1)))


class CueClassifier(pl.LightningModule):
    """The demo CNN (width 8) with Adam, on dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(width=8)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["label"]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def cue_loaders(
    cue: bool | None, num_train: int = 256, num_val: int = 32, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """The training loader (shuffled by ``seed``) and the validation loader; the images are the same
    for every seed."""
    train = DataLoader(
        CueData(num_train, 0, cue), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return train, DataLoader(CueData(num_val, 1, cue), batch_size=32)


def cue_fit(
    tmp_path: Path,
    cue: bool | None,
    callbacks: list,
    epochs: int = 10,
    seed: int = 0,
    val: DataLoader | None = None,
    **kwargs: object,
) -> pl.Trainer:
    """Fit :class:`CueClassifier` on the cue data (``seed``: the initial weights and the shuffling),
    validating on ``val`` (default: 32 images drawn like the training set)."""
    pl.seed_everything(seed, verbose=False)
    train, default_val = cue_loaders(cue, seed=seed)
    fit = trainer(tmp_path, callbacks, max_epochs=epochs, **kwargs)
    fit.fit(CueClassifier(), train, default_val if val is None else val)
    return fit


class CueViT(pl.LightningModule):
    """A 3-block timm ViT (patches of 8 px: the 6 px corner tag sits inside one patch) with AdamW."""

    def __init__(self) -> None:
        super().__init__()
        from lit_helpers import tiny_vit

        self.net = tiny_vit(img_size=IMAGE_SIZE, depth=3)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def cue_vit(seed: int = 0) -> torch.nn.Module:
    """A ViT trained 12 epochs on 1,024 images whose corner tag is the only way to the label (about 10 s)."""
    pl.seed_everything(seed, verbose=False)
    train, _ = cue_loaders(True, num_train=1024, seed=seed)
    model = CueViT()
    fit_without_validation(model, train, epochs=12)
    return model.net.eval()


def fit_without_validation(model: pl.LightningModule, train: DataLoader, epochs: int) -> None:
    """Train ``model`` for ``epochs`` with no validation, logger, checkpoint or progress bar."""
    pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(model, train)
