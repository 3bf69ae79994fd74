"""CAMMonitor's cost during training: the demo's ``fit`` with and without it.

Same seed, same data, TensorBoard logger in both; after a warm-up fit each way, runs alternate in
ABBA order (with, without, without, with, ...) so that drifts of the machine hit both alike;
median of the runs, wall and CPU time.

    python benchmarks/bench_overhead.py --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch

from lightning_cam import CAMMonitor
from lightning_cam.demo import ShapesClassifier, ShapesDataModule
from lightning_cam.demo.run import make_logger


def fit_seconds(with_monitor: bool, epochs: int, out: str) -> tuple[float, float, list[float]]:
    """Wall seconds and CPU seconds (all threads of the process) of one fit, and each check's time."""
    pl.seed_everything(0, verbose=False)
    data = ShapesDataModule()
    monitor = CAMMonitor(num_samples=8, class_names=data.class_names, dataloader_idx=1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=make_logger("tensorboard", tmp := __import__("pathlib").Path(out)),
        callbacks=[monitor] if with_monitor else [],
        default_root_dir=tmp,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=8,
    )
    check_times: list[float] = []
    if with_monitor:
        original = monitor.run_check

        def timed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            start = time.perf_counter()
            original(trainer, pl_module)
            check_times.append(time.perf_counter() - start)

        monitor.run_check = timed  # type: ignore[method-assign]
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(ShapesClassifier(), data)
    return time.perf_counter() - start, time.process_time() - cpu_start, check_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    checks: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        fit_seconds(True, 1, out)  # warm-up, both ways (imports, fonts, allocator)
        fit_seconds(False, 1, out)
        for run in range(args.runs):
            for with_monitor in (True, False) if run % 2 == 0 else (False, True):  # ABBA order
                seconds, cpu_seconds, check_times = fit_seconds(with_monitor, args.epochs, out)
                wall[with_monitor].append(seconds)
                cpu[with_monitor].append(cpu_seconds)
                checks.extend(check_times)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo fit, {args.epochs} epochs, {args.runs} runs each"
    )
    for name, times in (("wall", wall), ("CPU (all threads)", cpu)):
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{name:18s} without {without:7.2f} s, with {with_:7.2f} s: overhead {100 * (with_ / without - 1):+5.1f} % "
            f"(median); fastest runs {100 * (min(times[True]) / min(times[False]) - 1):+5.1f} %"
        )
        print(
            f"{'':18s} runs without: {', '.join(f'{t:.2f}' for t in times[False])}; with: {', '.join(f'{t:.2f}' for t in times[True])}"
        )
    check = statistics.median(checks)
    print(
        f"one check on the training thread (8 images, gradcam + gradcam++, metrics, grid): median {1e3 * check:.0f} ms, "
        f"{args.epochs} checks = {100 * args.epochs * check / statistics.median(wall[False]):.1f} % of the fit without"
    )


if __name__ == "__main__":
    main()
