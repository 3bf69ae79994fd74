"""Fit with CAMMonitor(audit=True) under DDP on 2 CPU processes (gloo), on an odd-sized validation set;
then audit a plain (unsharded) loader with ``lightning_cam.audit`` in the same process group. Launched
by tests/test_audit.py; each rank writes its figures to <out>/rank<N>.pt (rank 0 also the weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cue_helpers import CueClassifier, CueData
from lit_helpers import ddp_trainer

import lightning_cam as lc
from lightning_cam import CAMMonitor

NUM_VAL = 37


def figures_of(result: lc.AuditResult) -> dict:
    return {
        "figures": {
            part: {k: (f.value, f.low, f.high) for k, f in fig.items()}
            for part, fig in result.figures.items()
        },
        "index": result.rows["index"].tolist(),
        "mean_maps": result.mean_maps,
        "map_slices": result.map_slices,
        "strategies": [
            (s.class_index, s.number, s.indices, s.flip_rate, s.flagged) for s in result.strategies
        ],
    }


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train = DataLoader(
        CueData(64, 0, None), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(CueData(NUM_VAL, 1, None), batch_size=8)
    monitor = CAMMonitor(
        methods=["gradcam", "gradcam++"],
        num_samples=4,
        audit=True,
        strategies=True,
        strict=True,
        alerts={"audit/count/all": 10},  # 37 images: crossed at the audit, on every rank
    )
    model = CueClassifier()
    trainer = ddp_trainer(out, [monitor], max_epochs=2)
    trainer.fit(model, train, val)
    plain = lc.audit(model.net, val, ["gradcam", "gradcam++"], progress=False)
    record = {
        "in_fit": figures_of(monitor.audit_result),
        "plain": figures_of(plain),
        "metric": float(trainer.callback_metrics["audit/gradcam/enrichment/cue/all"]),
        "fired": sorted(monitor.fired_alerts),
    }
    if trainer.global_rank == 0:
        record["state_dict"] = model.net.state_dict()
    torch.save(record, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
