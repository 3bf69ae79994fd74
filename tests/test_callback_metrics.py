"""CAMMonitor's attention metrics, timelines, per-class mean maps and bias report in real fits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, read_tensorboard_images, read_tensorboard_scalars, trainer

from lightning_cam import CAMMonitor

TILE, PAD = 128, 2


def scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def fit_with_masks(tmp_path: Path, monitor: CAMMonitor, epochs: int = 3, **kwargs: object) -> Path:
    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [monitor], logger=logger, max_epochs=epochs, **kwargs).fit(TinyClassifier(), train, val)
    return Path(logger.log_dir)


def test_metrics_are_logged_per_method_and_mask(tmp_path: Path) -> None:
    monitor = CAMMonitor(methods=["gradcam", "layercam"], num_samples=8, strict=True)
    log_dir = fit_with_masks(tmp_path, monitor)
    tags = scalar_tags(log_dir)
    for method in ("gradcam", "layercam"):
        for metric in ("mass", "enrichment", "pointing_game"):
            assert f"cam/{method}/{metric}/mask" in tags
        for metric in ("drift", "average_drop", "increase_in_confidence", "seconds"):
            assert f"cam/{method}/{metric}" in tags
    assert {"cam/pass_seconds", "cam/check_seconds"} <= tags
    drift = read_tensorboard_scalars(log_dir, "cam/gradcam/drift")
    assert [step for step, _ in drift] == [8, 12]  # from the second check on
    mass = read_tensorboard_scalars(log_dir, "cam/gradcam/mass/mask")
    assert [step for step, _ in mass] == [4, 8, 12] and all(0 <= value <= 1 for _, value in mass)
    drops = read_tensorboard_scalars(log_dir, "cam/gradcam/average_drop")
    assert all(0 <= value <= 1 for _, value in drops)
    # Timelines and class means every 4 checks by default, and after the last check: here once.
    assert [step for step, _ in read_tensorboard_images(log_dir, "cam/layercam/timeline")] == [12]
    assert [step for step, _ in read_tensorboard_images(log_dir, "cam/layercam/class_means")] == [12]


def test_timeline_and_class_mean_images_have_the_expected_sizes(tmp_path: Path) -> None:
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=8, timeline_length=2, summary_every_n_checks=1, strict=True
    )
    log_dir = fit_with_masks(tmp_path, monitor)
    timeline = read_tensorboard_images(log_dir, "cam/gradcam/timeline")
    assert [step for step, _ in timeline] == [4, 8, 12]
    widths = [image.width for _, image in timeline]
    small = 64  # 32 px images, enlarged to the timeline's 64 px minimum tile
    # input + 1, then input + 2 checks (the last two), and no more
    assert widths[1] - widths[0] == small + PAD and widths[2] == widths[1]
    assert all(image.height == timeline[0][1].height for _, image in timeline)
    assert 15 <= timeline[0][1].height - (8 * (small + PAD) + PAD) <= 40
    means = read_tensorboard_images(log_dir, "cam/gradcam/class_means")
    assert len(means) == 3
    _, image = means[-1]
    classes = len(torch.unique(monitor.fixed.labels))
    assert 15 <= image.height - (TILE + 2 * PAD) <= 40  # a header over one row of tiles
    left = image.width - (classes * (TILE + PAD) + PAD)
    assert 30 <= left <= 150  # the caption strip


def test_drift_is_zero_without_a_training_step_between_checks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit = trainer(tmp_path, [monitor], logger=logger, max_epochs=2)
    model = TinyClassifier()
    fit.fit(model, train, val)
    before = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/drift")
    assert before[-1][1] > 1e-4  # training moved the maps
    monitor.run_check(fit, model)  # again, with no step in between
    logger.experiment.flush()
    after = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/drift")
    assert len(after) == len(before) + 1
    assert after[-1][1] == pytest.approx(0.0, abs=1e-6)


def test_drift_continues_after_resuming_from_a_checkpoint(tmp_path: Path) -> None:
    straight = fit_with_masks(
        tmp_path / "straight", CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    )
    expected = dict(read_tensorboard_scalars(straight, "cam/gradcam/drift"))

    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    trainer(tmp_path / "a", [first, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        TinyClassifier(), train, val
    )
    resumed = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    logger = TensorBoardLogger(tmp_path / "b", name="tb")
    trainer(tmp_path / "b", [resumed], logger=logger, max_epochs=3, enable_checkpointing=True).fit(
        TinyClassifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    drift = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/drift")
    assert [step for step, _ in drift] == [12]  # the first check after resuming already has a drift
    assert drift[0][1] == pytest.approx(expected[12], abs=1e-5)
    assert resumed.history.timeline["predicted/gradcam"][0][0] == 4  # the timeline came back too


def test_bias_report_at_the_end_of_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    with caplog.at_level("INFO"):
        log_dir = fit_with_masks(tmp_path, monitor, epochs=2)
    assert "CAMMonitor bias report" in caplog.text
    assert "gradcam puts" in caplog.text and "of its mass on `mask`" in caplog.text
    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "cam/bias_report/text_summary" in accumulator.Tags()["tensors"]
    text = accumulator.Tensors("cam/bias_report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| method | mask | slice | samples | accuracy | mask area |" in text and "enrichment peak" in text
    classes = {f"gradcam/mask/class={label}" for label in monitor.fixed.labels.tolist()}
    assert set(monitor.history.first) == {"gradcam/mask/all"} | classes
    assert monitor.history.first != monitor.history.last


def test_state_dict_stays_small_over_many_checks(tmp_path: Path) -> None:
    monitor = CAMMonitor(methods=["gradcam", "gradcam++"], num_samples=8, timeline_length=3, strict=True)
    fit_with_masks(tmp_path, monitor, epochs=6)
    state = monitor.state_dict()
    assert all(len(entries) == 3 for entries in state["history"]["timeline"].values())
    assert all(
        maps.dtype == torch.uint8 for entries in state["history"]["timeline"].values() for _, maps in entries
    )
    size = sum(t.numel() * t.element_size() for t in _tensors(state))
    assert size < 300_000  # 8 images of 32x32: images, masks, one map per method, 3 uint8 maps per method


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def test_a_check_whose_maps_are_all_flat_reads_nan_never_a_uniform_map(tmp_path: Path) -> None:
    """A classifier frozen at zero gives every Grad-CAM map flat: mass and enrichment are NaN at every
    check (no evidence), where a flat map used to count as uniform and read 1.0x (issue "Nothing silent")."""
    train, val = loaders(with_masks=True)
    model = TinyClassifier()
    torch.nn.init.zeros_(model.net.classifier.weight)
    model.net.classifier.requires_grad_(False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, strict=True, report=True)
    trainer(tmp_path, [monitor], max_epochs=2, logger=logger).fit(model, train, val)
    page = (Path(logger.log_dir) / "cam_report.html").read_text()  # the page says so, in a plot and in words
    assert "flat maps: share with no attention anywhere" in page and "every gradcam map was flat" in page
    flat = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/flat_fraction")
    enrichment = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/enrichment/mask")
    mass = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/mass/mask")
    assert [value for _, value in flat] == [1.0, 1.0]
    assert len(enrichment) == len(mass) == 2
    assert all(math.isnan(value) for _, value in enrichment + mass)
