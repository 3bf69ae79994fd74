"""The monitor's share of a short fit (issue #34.4): torchvision's resnet18 (random weights, 4 classes) on
512 random 64 px images, 3 epochs, TensorBoard, the default CAMMonitor; fits with and without it in
ABBA order (median of each), then one fit under cProfile with the package's own time on the training
thread (the checks, the end of fit), the rest being the writer thread and noise.

    python benchmarks/bench_fit_share.py --runs 2
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam import CAMMonitor


class ResNetClassifier(pl.LightningModule):
    """resnet18, 4 classes, SGD."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(with_monitor: bool, epochs: int, profile: cProfile.Profile | None = None) -> float:
    """Wall seconds of one fit."""
    pl.seed_everything(0, verbose=False)
    images, labels = torch.rand(512, 3, 64, 64), torch.randint(0, 4, (512,))
    train = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(images[:128], labels[:128]), batch_size=32)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(tempfile.mkdtemp()),
        callbacks=[CAMMonitor()] if with_monitor else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=8,
    )
    start = time.perf_counter()
    if profile is not None:
        profile.enable()
    trainer.fit(ResNetClassifier(), train, val)
    if profile is not None:
        profile.disable()
    return time.perf_counter() - start


def package_seconds(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the monitor's hooks that do work, on the training thread."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    wanted = {"run_check": "checks", "on_fit_end": "end of fit", "setup": "setup"}
    seconds = dict.fromkeys(wanted.values(), 0.0)
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        if path.endswith("monitor/callback.py") and name in wanted:
            seconds[wanted[name]] += cumulative
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="ABBA rounds (each: 2 fits with, 2 without)")
    parser.add_argument("--epochs", type=int, default=3)
    arguments = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(arguments.runs):
        for with_monitor in (True, False, False, True):
            times[with_monitor].append(fit(with_monitor, arguments.epochs))
    with_it, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"fit with the monitor {with_it:.2f} s, without {without:.2f} s: +{with_it / without - 1:.1%}")
    profile = cProfile.Profile()
    total = fit(True, arguments.epochs, profile)
    parts = package_seconds(profile)
    print(
        f"under cProfile ({total:.1f} s): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts.items())
        + f" on the training thread ({sum(parts.values()) / total:.1%} of the fit)"
    )
