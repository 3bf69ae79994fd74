"""Fit with CAMMonitor under DDP on 2 CPU processes (gloo); launched by tests/test_training_safety.py.

Each rank writes what it did to <out>/rank<N>.pt; rank 0 also writes the final model, the fixed
images and the maps of its last check, so the test can compare them with a single-process run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_helpers import TinyClassifier, ddp_trainer, loaders, recording_check_maps

from lightning_cam import CAMMonitor


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train, val = loaders(num_train=64, num_val=32, batch_size=8)
    monitor = CAMMonitor(methods=["gradcam", "layercam"], num_samples=4, strict=True)
    last_maps = recording_check_maps()
    model = TinyClassifier()
    trainer = ddp_trainer(out, [monitor], max_epochs=2)
    trainer.fit(model, train, val)
    rank = trainer.global_rank
    record = {"checks": monitor.checks, "captured": monitor.fixed is not None, "maps": len(last_maps)}
    if rank == 0:
        record |= {
            "state_dict": model.state_dict(),
            "images": monitor.fixed.images,
            "maps": {name: value.cpu() for name, value in last_maps.items()},
            "global_step": trainer.global_step,
        }
    torch.save(record, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
