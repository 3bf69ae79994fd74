"""CAMMonitor on every kind of model: a vision transformer, a one-logit binary classifier, a
multi-label model and a segmentation model, in real fits whose TensorBoard output is read back."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import read_tensorboard_images, read_tensorboard_scalars, shapes_tensors, tiny_vit, trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam import CAMMonitor
from lightning_cam.demo.data import CLASS_NAMES


class Lit(pl.LightningModule):
    """Any network with any loss, on (images, labels) batches."""

    def __init__(self, net: nn.Module, loss: str) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        output, labels = self(batch[0]), batch[1]
        if self.loss == "binary":
            return F.binary_cross_entropy_with_logits(output.squeeze(1), (labels == 0).float())
        if self.loss == "multilabel":
            return F.binary_cross_entropy_with_logits(output, labels.float())
        return F.cross_entropy(output, labels)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def small_cnn(outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, outputs),
    )


def fit(
    tmp_path: Path, net: nn.Module, loss: str, labels: Tensor, monitor: CAMMonitor, epochs: int = 2
) -> str:
    torch.manual_seed(0)
    images = shapes_tensors(64, 0)[0]
    train = DataLoader(TensorDataset(images, labels), batch_size=16)
    val = DataLoader(TensorDataset(images[:32], labels[:32]), batch_size=16)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [monitor], logger=logger, max_epochs=epochs).fit(Lit(net, loss), train, val)
    return logger.log_dir


@pytest.mark.slow
def test_a_vision_transformer_fit_logs_grids_from_its_last_block(tmp_path: Path) -> None:
    labels = shapes_tensors(64, 0)[1]
    monitor = CAMMonitor(
        methods=["gradcam", "layercam"], num_samples=4, class_names=list(CLASS_NAMES), strict=True
    )
    log_dir = fit(tmp_path, tiny_vit(), "multiclass", labels, monitor)
    grids = read_tensorboard_images(log_dir, "cam/predicted/grid")
    assert [step for step, _ in grids] == [4, 8] and grids[-1][1].width > 3 * 128
    flat = read_tensorboard_scalars(log_dir, "cam/gradcam/flat_fraction")
    assert len(flat) == 2 and all(0 <= value <= 1 for _, value in flat)
    from lightning_cam.engine.layers import find_auto_layer

    assert monitor.fixed is not None
    with torch.no_grad():
        assert find_auto_layer(Lit(tiny_vit(), "multiclass"), monitor.fixed.images) == "net.blocks.1.norm1"


@pytest.mark.slow
def test_a_vision_transformer_trains_bit_identically_with_the_monitor(tmp_path: Path) -> None:
    labels = shapes_tensors(64, 0)[1]

    def final_state(callbacks: list) -> dict[str, Tensor]:
        torch.manual_seed(0)
        net = tiny_vit()
        images = shapes_tensors(64, 0)[0]
        train = DataLoader(TensorDataset(images, labels), batch_size=16)
        val = DataLoader(TensorDataset(images[:32], labels[:32]), batch_size=16)
        trainer(tmp_path, callbacks, max_epochs=2).fit(Lit(net, "multiclass"), train, val)
        return {name: value.clone() for name, value in net.state_dict().items()}

    without = final_state([])
    monitored = final_state(
        [CAMMonitor(methods=["gradcam", "scorecam", "ablationcam"], num_samples=4, strict=True)]
    )
    assert without.keys() == monitored.keys()
    assert all(torch.equal(without[name], monitored[name]) for name in without)


def test_a_one_logit_binary_classifier(tmp_path: Path) -> None:
    labels = (shapes_tensors(64, 0)[1] == 0).long()  # disk or not
    monitor = CAMMonitor(
        methods=["gradcam", "scorecam"], num_samples=4, targets=["predicted", "label", 0], strict=True
    )
    log_dir = fit(tmp_path, small_cnn(1), "binary", labels, monitor)
    for target in ("predicted", "label", "class_0"):
        assert len(read_tensorboard_images(log_dir, f"cam/{target}/grid")) == 2, target
    assert read_tensorboard_scalars(log_dir, "cam/gradcam/average_drop")
    assert monitor.fixed is not None and set(monitor.fixed.labels.tolist()) == {0, 1}


def test_a_multi_label_model_gets_a_row_per_image_and_positive_class(tmp_path: Path) -> None:
    data = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]]).repeat(16, 1)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=6, class_names=list(CLASS_NAMES), strict=True)
    log_dir = fit(tmp_path, small_cnn(4), "multilabel", data, monitor)
    grids = read_tensorboard_images(log_dir, "cam/label/grid")
    assert len(grids) == 2
    rows = (grids[-1][1].height - 2) // 130  # tiles of 128 px and 2 px padding under a header (< 128 px)
    assert rows == 6  # 6 of the positive (image, class) pairs of the fixed images
    assert monitor.fixed is not None and monitor.fixed.labels.shape[1] == 4
    positives = int((monitor.fixed.labels > 0).sum())
    assert positives >= 6


def test_a_segmentation_model_outlines_the_label_and_measures_attention_in_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _, classes, objects = shapes_tensors(64, 0, with_masks=True)
    label_maps = (objects > 0.5).long() * (classes[:, None, None] + 1)  # 0 background, 1..4 the shape
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1)
    )
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, target_layer="net.2", strict=True)
    log_dir = fit(tmp_path, net, "multiclass", label_maps, monitor)
    tags = {"cam/gradcam/mass/label", "cam/gradcam/enrichment/label", "cam/gradcam/pointing_game/label"}
    assert all(read_tensorboard_scalars(log_dir, tag) for tag in tags)
    grid = np.asarray(read_tensorboard_images(log_dir, "cam/label/grid")[-1][1].convert("RGB"))
    assert monitor.fixed is not None
    region = (monitor.fixed.labels[0] > 0).numpy()
    edge = region & ~np.pad(region, 1)[2:, 1:-1] | region & ~np.pad(region, 1)[:-2, 1:-1]
    ys, xs = np.nonzero(edge)
    left = grid.shape[1] - 2 * 130 - 2  # two columns of 128 px tiles: input and gradcam
    top = grid.shape[0] - 4 * 130 - 2
    tile = grid[top + 2 : top + 2 + 128, left + 2 : left + 2 + 128]
    assert (tile[ys * 4, xs * 4] == 255).all()  # the label's outline, white on the input tile


def test_a_segmentation_model_explains_the_class_index_asked_for(tmp_path: Path) -> None:
    """targets=[2] used to be replaced by the label target without a word (only cam/label/grid)."""
    torch.manual_seed(0)
    _, classes, objects = shapes_tensors(64, 0, with_masks=True)
    label_maps = (objects > 0.5).long() * (classes[:, None, None] + 1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1)
    )
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=4, target_layer="net.2", targets=[2, "label"], strict=True
    )
    log_dir = fit(tmp_path, net, "multiclass", label_maps, monitor)
    assert read_tensorboard_images(log_dir, "cam/class_2/grid") and read_tensorboard_images(
        log_dir, "cam/label/grid"
    )
    assert read_tensorboard_scalars(log_dir, "cam/label/gradcam/mass/label")  # the second choice's own tags
