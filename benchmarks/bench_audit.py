"""The full audit's throughput: 2,048 images of 64x64 (the demo's shapes with a cue mask and two groups),
the demo's CNN, Grad-CAM + Grad-CAM++, batches of 64, against one plain inference pass over the same
dataloader (images per second, median of several runs, timed in turn); then the wall time of the same
audit under 2-process CPU DDP (gloo), each rank explaining its half.

    python benchmarks/bench_audit.py            # single process, then DDP
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import interleaved_medians
from torch.utils.data import DataLoader, Dataset

import lightning_cam as lc
from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN

NUM_IMAGES, SIZE, BATCH = 2048, 64, 64
METHODS = ["gradcam", "gradcam++"]


class AuditSet(Dataset):
    """The demo's biased shapes as dict samples with a ``cue`` mask and a ``group``."""

    def __init__(self) -> None:
        self.data = make_shapes(ShapesConfig(NUM_IMAGES, 0.9, SIZE, seed=0))

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.data["image"][index],
            "label": self.data["label"][index],
            "mask": {"cue": self.data["cue"][index]},
            "group": "even" if index % 2 == 0 else "odd",
        }


def plain_pass(model: torch.nn.Module, loader: DataLoader) -> None:
    with torch.inference_mode():
        for batch in loader:
            model(batch["image"])


def single_process() -> None:
    torch.manual_seed(0)
    model, loader = SmallCNN().eval(), DataLoader(AuditSet(), batch_size=BATCH)
    times = interleaved_medians(
        {
            "plain": lambda: plain_pass(model, loader),
            "audit": lambda: lc.audit(model, loader, METHODS, progress=False),
        },
        repeats=3,
    )
    plain, audit = NUM_IMAGES / times["plain"], NUM_IMAGES / times["audit"]
    print(f"plain inference pass: {times['plain']:.2f} s, {plain:.0f} images/s")
    print(
        f"audit ({' + '.join(METHODS)}): {times['audit']:.2f} s, {audit:.0f} images/s = {audit / plain:.2f} of plain"
    )


def ddp_rank() -> None:
    """One rank of the DDP run (started by :func:`ddp`): audit, report the wall time on rank 0."""
    torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model, loader = SmallCNN().eval(), DataLoader(AuditSet(), batch_size=BATCH)
    lc.audit(model, loader, METHODS, progress=False)  # warm-up
    times = []
    for _ in range(3):
        torch.distributed.barrier()
        start = time.perf_counter()
        result = lc.audit(model, loader, METHODS, progress=False)
        times.append(time.perf_counter() - start)
    if torch.distributed.get_rank() == 0:
        count = int(result.figures["all"]["count"].value)
        print(f"2-process DDP audit: {statistics.median(times):.2f} s for {count} images (median of 3)")
    torch.distributed.destroy_process_group()


def ddp() -> None:
    environment = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29533",
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    ranks = [
        subprocess.Popen([sys.executable, __file__, "--rank"], env={**environment, "RANK": str(rank)})
        for rank in (0, 1)
    ]
    assert all(rank.wait() == 0 for rank in ranks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    if arguments.rank:
        ddp_rank()
    else:
        single_process()
        ddp()
