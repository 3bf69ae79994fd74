"""EarlyStopping and ModelCheckpoint on a CAMMonitor scalar under DDP on 2 CPU processes (gloo);
launched by tests/test_bias_alarms.py. Each rank writes what it saw to <out>/rank<N>.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from cue_helpers import CueClassifier, cue_loaders
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lit_helpers import ddp_trainer

from lightning_cam import CAMMonitor

TAG = "cam/gradcam/enrichment/cue"


class Spy(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics[TAG]))


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train, val = cue_loaders(True)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    spy = Spy()
    stop = EarlyStopping(monitor=TAG, mode="min", divergence_threshold=4.0, patience=100)
    keep = ModelCheckpoint(dirpath=out / "ckpt", monitor=TAG, mode="min", save_top_k=1, filename="{epoch}")
    trainer = ddp_trainer(out, [monitor, spy, stop, keep], max_epochs=10, enable_checkpointing=True)
    trainer.fit(CueClassifier(), train, val)
    record = {
        "checks": monitor.checks,
        "values": spy.values,
        "epochs_run": trainer.current_epoch,
        "stopped_epoch": stop.stopped_epoch,
        "best_model_path": keep.best_model_path,
    }
    torch.save(record, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
