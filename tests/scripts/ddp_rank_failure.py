"""One rank fails, no rank waits: under 2-process CPU DDP (gloo), the audit raises on rank 1 only (as
an out-of-memory error would), then a strict check raises on rank 0. Launched by tests/test_audit.py;
each rank writes what it saw to <out>/rank<N>.pt. A hang is killed by the test's timeout."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cue_helpers import CueClassifier, CueData
from lit_helpers import ddp_trainer

import lightning_cam as lc
import lightning_cam.auditing.run as run_module
import lightning_cam.monitor.check as check_module
from lightning_cam import CAMMonitor


def fails_on(rank: int, function: object, error: Exception) -> object:
    def failing(*args: object, **kwargs: object) -> object:
        if torch.distributed.get_rank() == rank:
            raise error
        return function(*args, **kwargs)  # type: ignore[operator]

    return failing


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train = DataLoader(CueData(32, 0, None), batch_size=16)
    val = DataLoader(CueData(20, 1, None), batch_size=8)
    explain_all, explain_batch = run_module._explain_all, check_module.explain_batch
    run_module._explain_all = fails_on(1, explain_all, torch.cuda.OutOfMemoryError("out of memory (planted)"))
    model = CueClassifier()
    trainer = ddp_trainer(out, [CAMMonitor(methods=["gradcam"], num_samples=4, audit=True)], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train, val)
    record: dict = {
        "fit_steps": trainer.global_step,
        "fit_warnings": [str(w.message) for w in caught if "audit" in str(w.message)],
        "audit_tags": [tag for tag in trainer.callback_metrics if tag.startswith("audit/")],
    }
    try:
        lc.audit(model.net, val, "gradcam", progress=False)
    except Exception as error:
        record["audit_error"] = (type(error).__name__, str(error))
    run_module._explain_all = explain_all
    check_module.explain_batch = fails_on(0, explain_batch, ValueError("planted check failure"))
    strict = ddp_trainer(out, [CAMMonitor(methods=["gradcam"], num_samples=4, strict=True)], max_epochs=1)
    try:
        strict.fit(CueClassifier(), train, val)
    except Exception as error:
        record["check_error"] = (type(error).__name__, str(error))
    torch.save(record, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
