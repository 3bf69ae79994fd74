"""The demo's small CNN, its LightningModule and the shapes DataModule."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_cam.demo.data import CLASS_NAMES, ShapesConfig, ShapesDataset
from lightning_cam.demo.volumes import VOLUME_CLASSES, VolumeCNN, VolumesConfig

__all__ = ["ShapesClassifier", "ShapesDataModule", "SmallCNN", "small_vit"]


def _block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class SmallCNN(nn.Module):
    """Three conv blocks (the last at 1/4 of the input size), global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = len(CLASS_NAMES), width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, width),
            nn.MaxPool2d(2),
            *_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_block(2 * width, 4 * width),
            *_block(4 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


def small_vit(image_size: int = 64, num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    """A 4-block ViT (patches of 8 px, width 96) from timm with random weights: a transformer that
    trains on the shapes on a CPU in minutes (``pip install timm``)."""
    try:
        import timm
    except ImportError as error:
        raise ImportError("the ViT demo needs timm: pip install 'lightning-cam[timm]'") from error
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        img_size=image_size,
        patch_size=8,
        embed_dim=96,
        depth=4,
        num_heads=3,
    )


class ShapesClassifier(pl.LightningModule):
    """Trains :class:`SmallCNN` on the shapes; logs accuracy per validation set (``val_acc/<name>``)."""

    def __init__(
        self,
        lr: float = 3e-3,
        width: int = 16,
        val_names: tuple[str, ...] = ("cued", "decorrelated"),
        arch: str = "cnn",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = {"cnn": lambda: SmallCNN(width=width), "vit": small_vit, "cnn3d": VolumeCNN}[arch]()
        self.val_names = val_names

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["image"]), batch["label"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        accuracy = (self(batch["image"]).argmax(1) == batch["label"]).float().mean()
        self.log(
            f"val_acc/{self.val_names[dataloader_idx]}", accuracy, add_dataloader_idx=False, prog_bar=True
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class ShapesDataModule(pl.LightningDataModule):
    """Training shapes (or volumes, ``data="volumes"``) with the cue at ``cue_strength``; two validation sets,
    ``cued`` (same cue strength) and ``decorrelated`` (random cue)."""

    def __init__(
        self,
        cue_strength: float = 0.95,
        num_train: int = 2048,
        num_val: int = 256,
        image_size: int = 64,
        batch_size: int = 64,
        seed: int = 0,
        data: str = "shapes",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(CLASS_NAMES if data == "shapes" else VOLUME_CLASSES)

    def _config(self, num: int, cue_strength: float | None, seed: int) -> ShapesConfig | VolumesConfig:
        if self.hparams.data == "shapes":
            return ShapesConfig(num, cue_strength, self.hparams.image_size, seed=seed)
        return VolumesConfig(num, cue_strength, seed=seed)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        self.train_set = ShapesDataset(self._config(hp.num_train, hp.cue_strength, hp.seed))
        self.val_sets = [
            ShapesDataset(self._config(hp.num_val, hp.cue_strength, hp.seed + 1)),
            ShapesDataset(self._config(hp.num_val, None, hp.seed + 2)),
        ]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.train_set, batch_size=self.hparams.batch_size, shuffle=True, generator=generator
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(val_set, batch_size=self.hparams.batch_size) for val_set in self.val_sets]
