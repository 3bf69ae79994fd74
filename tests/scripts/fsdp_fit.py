"""Fit under FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard`` in ``configure_model``) on 2 CPU
processes (gloo), first without CAMMonitor, then with it (checks, audit and strategies); launched by
tests/test_training_safety.py.

Each rank writes <out>/rank<N>.pt: its checks, the monitor's tags in its callback_metrics, and the
strategies it ended with; rank 0 also the gathered weights of both fits, the fixed images and the maps
of its last check, so the test can compare them with a single-process run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_helpers import TinyClassifier, loaders, recording_check_maps

from lightning_cam import CAMMonitor


class ShardedClassifier(TinyClassifier):
    """TinyClassifier with every conv block and the whole network ``fully_shard``-ed over the ranks."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for block in self.net.features:
            if any(True for _ in block.parameters(recurse=False)):
                fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def fit(out: Path, monitor: CAMMonitor | None) -> tuple[pl.Trainer, dict[str, torch.Tensor]]:
    """One fit; the gathered weights (a collective: every rank calls it)."""
    pl.seed_everything(0, verbose=False)
    train, val = loaders(num_train=64, num_val=32, batch_size=8, with_masks=True)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=2,
        default_root_dir=str(out),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[] if monitor is None else [monitor],
    )
    model = ShardedClassifier()
    trainer.fit(model, train, val)
    state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    return trainer, state


def main(out: Path) -> None:
    _, without = fit(out, None)
    last_maps = recording_check_maps()
    monitor = CAMMonitor(
        methods=["gradcam", "layercam"], num_samples=4, strict=True, audit=True, strategies=True
    )
    trainer, with_monitor = fit(out, monitor)
    rank = trainer.global_rank
    record = {
        "checks": monitor.checks,
        "tags": sorted(t for t in trainer.callback_metrics if t.startswith(("cam/", "audit/"))),
        "strategies": [(s.class_index, s.number, s.indices) for s in monitor.audit_result.strategies],
        "audited": int(monitor.audit_result.figures["all"]["count"].value),
    }
    if rank == 0:
        record |= {
            "without": without,
            "with": with_monitor,
            "images": monitor.fixed.images.cpu(),
            "maps": {name: value.cpu() for name, value in last_maps.items()},
        }
    torch.save(record, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
