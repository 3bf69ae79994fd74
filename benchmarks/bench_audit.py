"""The full audit's throughput: 2,048 images of 64x64 (the demo's shapes with a cue mask and two groups),
the demo's CNN, Grad-CAM + Grad-CAM++, batches of 64, against one plain inference pass over the same
dataloader (images per second, median of several runs, timed in turn); then the wall time of the same
audit under 2-process CPU DDP (gloo), each rank explaining its half. The strategies' own cost: the same
audit with ``strategies=True`` (the demo's CNN with random weights), and clustering 10,000 maps of one
class alone.

    python benchmarks/bench_audit.py                # single process, the strategies, then DDP
    python benchmarks/bench_audit.py --strategies   # the strategies' own cost only
    python benchmarks/bench_audit.py --classes 20 100 1000 --per-class 50   # the strategies at scale
    python benchmarks/bench_audit.py --classes 10 --per-class 50 --size 224  # at ImageNet's size

At scale: a CNN of three conv layers with random weights on random 32 px images (``--size``),
``per_class`` images of each class, Grad-CAM, 100 bootstrap resamples; the audit with and without
strategies, timed in turn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from common import interleaved_medians
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lightning_cam as lc
import lightning_cam.auditing.run as audit_run
from lightning_cam.auditing.strategies import find_strategies
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


def strategies_cost() -> None:
    """The strategies' own cost: the audit with and without ``strategies=True`` on this set (median of 5),
    and the clustering of 10,000 maps of one class alone."""
    from lightning_cam.auditing.spray import cluster_maps, small_maps

    torch.manual_seed(0)
    model, loader = SmallCNN().eval(), DataLoader(AuditSet(), batch_size=BATCH)
    times = interleaved_medians(
        {
            "audit": lambda: lc.audit(model, loader, METHODS, progress=False),
            "audit + strategies": lambda: lc.audit(model, loader, METHODS, progress=False, strategies=True),
        },
        repeats=5,
    )
    extra = times["audit + strategies"] - times["audit"]
    print(
        f"strategies: {extra:.2f} s on top of the audit's {times['audit']:.2f} s "
        f"({extra / times['audit']:.0%} of the audit's time)"
    )
    maps = torch.rand(10_000, SIZE, SIZE) * 0.1
    maps[:4_000, :8, :8] += 1.0  # 40 % of the class looks at the corner
    small = small_maps(maps)
    start = time.perf_counter()
    labels = cluster_maps(small)
    seconds = time.perf_counter() - start
    print(f"clustering 10,000 maps of one class: {seconds:.2f} s, clusters of {labels.bincount().tolist()}")


def three_convs(classes: int) -> torch.nn.Module:
    """Three conv layers and a linear head, random weights."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    layers += [torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    layers += [torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU()]
    head = [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, classes)]
    return torch.nn.Sequential(*layers, *head).eval()


def scale_cost(class_counts: list[int], per_class: int, repeats: int, size: int) -> None:
    """The strategies' share of the audit as the classes grow, ``per_class`` images each of ``size`` px."""
    for classes in class_counts:
        scale_once(classes, per_class, repeats, size)


def scale_once(classes: int, per_class: int, repeats: int, size: int) -> None:
    """One line of :func:`scale_cost`: the audit alone and with the strategies, timed in turn; the
    strategies' cost as the median of the pairs' differences, and the time spent finding them
    (``find_strategies`` alone: the difference less the small maps kept during the pass)."""
    generator = torch.Generator().manual_seed(classes)
    images = torch.rand(classes * per_class, 3, size, size, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
    model = three_convs(classes)
    options = {"progress": False, "bootstrap_samples": 100}
    finding: list[float] = []

    def timed_find(*args: object, **kwargs: object) -> list:
        start = time.perf_counter()
        try:
            return find_strategies(*args, **kwargs)
        finally:
            finding.append(time.perf_counter() - start)

    with mock.patch.object(audit_run, "find_strategies", timed_find):
        found = len(lc.audit(model, loader, "gradcam", strategies=True, **options).strategies)  # warm-up
        times = [
            paired_seconds(
                lambda: lc.audit(model, loader, "gradcam", **options),
                lambda: lc.audit(model, loader, "gradcam", strategies=True, **options),
            )
            for _ in range(repeats)
        ]
    audit = statistics.median(alone for alone, _ in times)
    extra = statistics.median(both - alone for alone, both in times)
    own = statistics.median(finding[1:])
    print(
        f"{classes} classes x {per_class} at {size} px: audit {audit:.2f} s, strategies +{extra:.2f} s "
        f"({extra / audit:.0%} of the audit; finding them {own:.2f} s, {own / audit:.0%}; {found} strategies, "
        f"{1000 * own / max(found, 1):.1f} ms each)",
        flush=True,
    )


def paired_seconds(first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """The wall times of ``first()`` and then ``second()``."""
    start = time.perf_counter()
    first()
    middle = time.perf_counter()
    second()
    return middle - start, time.perf_counter() - middle


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
    parser.add_argument("--strategies", action="store_true", help="only the strategies' cost")
    parser.add_argument("--classes", type=int, nargs="+", help="the strategies' cost at these class counts")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="the images' side at scale (px)")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    if arguments.rank:
        ddp_rank()
    elif arguments.classes:
        scale_cost(arguments.classes, arguments.per_class, arguments.repeats, arguments.size)
    elif arguments.strategies:
        strategies_cost()
    else:
        single_process()
        strategies_cost()
        ddp()
