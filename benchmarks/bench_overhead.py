"""CAMMonitor's cost during training: the demo's ``fit`` with and without it.

Same seed, same data, TensorBoard logger in both; runs alternate (with, without, with, ...) so
that drifts of the machine hit both alike; median of the runs.

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


def fit_seconds(with_monitor: bool, epochs: int, out: str) -> tuple[float, list[float]]:
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
        original = monitor._check

        def timed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            start = time.perf_counter()
            original(trainer, pl_module)
            check_times.append(time.perf_counter() - start)

        monitor._check = timed  # type: ignore[method-assign]
    start = time.perf_counter()
    trainer.fit(ShapesClassifier(), data)
    return time.perf_counter() - start, check_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    with_times, without_times, checks = [], [], []
    with tempfile.TemporaryDirectory() as out:
        fit_seconds(False, 1, out)  # warm-up
        for _ in range(args.runs):
            seconds, check_times = fit_seconds(True, args.epochs, out)
            with_times.append(seconds)
            checks.extend(check_times)
            without_times.append(fit_seconds(False, args.epochs, out)[0])
    with_median, without_median = statistics.median(with_times), statistics.median(without_times)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo fit, {args.epochs} epochs, {args.runs} runs each"
    )
    print(
        f"fit without CAMMonitor  {without_median:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in without_times)})"
    )
    print(
        f"fit with CAMMonitor     {with_median:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in with_times)})"
    )
    print(f"overhead                {100 * (with_median / without_median - 1):+6.1f} %")
    print(
        f"one check (8 images, gradcam + gradcam++, grid, TensorBoard write): median {1e3 * statistics.median(checks):.0f} ms"
    )


if __name__ == "__main__":
    main()
