"""CAMMonitor in real (short) fits: what reaches TensorBoard, W&B and PNG files, and when."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, read_tensorboard_images, read_tensorboard_scalars, trainer
from PIL import Image
from torch.utils.data import DataLoader

import lightning_cam as lc
from lightning_cam import CAMMonitor
from lightning_cam.report.grids import display_images, overlay

TILE = 128  # 32 px images are enlarged 4x to reach the 112 px minimum tile
PAD = 2


def grid_offsets(image: Image.Image, rows: int, columns: int) -> tuple[int, int]:
    """(caption strip width, header height) of a grid, from its size and the tile layout."""
    left = image.width - (columns * (TILE + PAD) + PAD)
    header = image.height - (rows * (TILE + PAD) + PAD)
    return left, header


def cell(image: Image.Image, row: int, column: int, rows: int, columns: int) -> np.ndarray:
    left, header = grid_offsets(image, rows, columns)
    top, start = header + PAD + row * (TILE + PAD), left + PAD + column * (TILE + PAD)
    return np.asarray(image.convert("RGB"))[top : top + TILE, start : start + TILE].astype(int)


def upscaled(rgb: torch.Tensor) -> np.ndarray:
    """A [3, h, w] image in [0, 1] as the grid shows it: enlarged 4x, uint8, HWC."""
    big = F.interpolate(rgb[None], scale_factor=4, mode="nearest")[0]
    return (big * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(int)


def test_tensorboard_grids_hold_the_fixed_images_and_their_maps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    train, val = loaders()
    monitor = CAMMonitor(methods=["gradcam", "layercam"], num_samples=4, strict=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [monitor], logger=logger, max_epochs=3).fit(model, train, val)

    grids = read_tensorboard_images(logger.log_dir, "cam/predicted/grid")
    assert [step for step, _ in grids] == [4, 8, 12]  # 4 batches per epoch, a check per epoch
    rows, columns = 4, 3
    _, image = grids[-1]
    left, header = grid_offsets(image, rows, columns)
    assert 15 <= header <= 40 and left > 40  # a header row and a caption strip, then the tiles
    fixed = monitor.fixed
    assert fixed is not None and fixed.images.shape == (4, 3, 32, 32)
    maps = lc.explain(model, fixed.images, ["gradcam", "layercam"])
    shown = display_images(fixed.images)
    for row in range(rows):
        assert np.abs(cell(image, row, 0, rows, columns) - upscaled(shown[row])).max() <= 1
        for column, name in enumerate(["gradcam", "layercam"], start=1):
            expected = upscaled(overlay(shown[row : row + 1], maps[name][row : row + 1])[0])
            assert np.abs(cell(image, row, column, rows, columns) - expected).max() <= 2, (row, name)
    seconds = read_tensorboard_scalars(logger.log_dir, "cam/check_seconds")
    assert [step for step, _ in seconds] == [4, 8, 12] and all(value > 0 for _, value in seconds)


def test_the_same_images_at_every_check_and_balanced_over_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(num_val=48)
    monitor = CAMMonitor(num_samples=8, strict=True)
    trainer(tmp_path, [monitor], logger=TensorBoardLogger(tmp_path, name="tb"), max_epochs=3).fit(
        TinyClassifier(), train, val
    )
    grids = read_tensorboard_images(tmp_path / "tb" / "version_0", "cam/predicted/grid")
    inputs = [np.stack([cell(image, r, 0, 8, 3) for r in range(8)]) for _, image in grids]
    assert len(inputs) == 3
    assert all(np.array_equal(inputs[0], other) for other in inputs[1:])
    assert monitor.fixed is not None and monitor.fixed.labels is not None
    counts = torch.bincount(monitor.fixed.labels, minlength=4)
    assert counts.tolist() == [2, 2, 2, 2]
    labels = monitor.fixed.labels.tolist()
    assert labels[0::2] == labels[1::2]  # rows grouped by class


def test_wandb_offline_run_holds_grid_media_and_sample_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where tables are staged as artifacts
    torch.manual_seed(0)
    train, val = loaders()
    logger = WandbLogger(project="lightning-cam-tests", save_dir=str(tmp_path), offline=True)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, strict=True, class_names=["a", "b", "c", "d"])
    trainer(tmp_path, [monitor], logger=logger, max_epochs=2).fit(TinyClassifier(), train, val)
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = sorted((runs[0] / "files" / "media" / "images").rglob("*.png"))
    every_table = sorted((runs[0] / "files" / "media" / "table").rglob("*.table.json"))
    tables = [path for path in every_table if path.name.startswith("samples_")]
    grids = [path for path in images if "grid" in path.name]
    assert len(grids) == 2
    assert Image.open(grids[0]).size == Image.open(grids[1]).size
    assert len(tables) == 2
    assert any(path.name.startswith("run_summary_") for path in every_table)  # for the audit page
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["sample", "caption", "input", "gradcam"]
    assert len(table["data"]) == 4
    assert table["data"][0][1].startswith("true: ")
    # The table's images travel in its artifact, staged until the run is synced.
    staged = [path for path in (tmp_path / "wandb-data").rglob("*") if path.is_file()]
    staged_tables = [json.loads(p.read_text()) for p in staged if p.read_bytes()[:1] == b"{"]
    staged_tables = [t for t in staged_tables if t.get("_type") == "table" and t["columns"] != ["summary"]]
    assert len(staged_tables) >= 2  # one per check (the SDK may stage a table more than once)
    assert staged_tables[0]["columns"] == ["sample", "caption", "input", "gradcam"]
    assert all(cell["_type"] == "image-file" for row in staged_tables[0]["data"] for cell in row[2:])
    tiles = [Image.open(p) for p in staged if p.read_bytes()[:4] == b"\x89PNG"]
    assert len(tiles) >= 2 * 4 * 2 and {tile.size for tile in tiles} == {(TILE, TILE)}


def test_mlflow_run_holds_grids_summaries_and_report_as_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, no server
    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    logger = MLFlowLogger(experiment_name="cam", tracking_uri=f"file:{tmp_path}/mlruns")
    monitor = CAMMonitor(methods=["gradcam", "gradcam++"], num_samples=4, strict=True, audit=True)
    trainer(tmp_path, [monitor], logger=logger, max_epochs=2).fit(TinyClassifier(), train, val)
    artifacts = next((tmp_path / "mlruns").rglob("artifacts"))
    grids = sorted(p.name for p in (artifacts / "cam" / "predicted" / "grid").glob("*.png"))
    assert grids == ["step_4.png", "step_8.png"]
    image = Image.open(artifacts / "cam" / "predicted" / "grid" / "step_8.png")
    left, header = grid_offsets(image, 4, 2)
    assert left > 0 and header > 0
    assert (artifacts / "cam" / "gradcam" / "timeline" / "step_8.png").exists()
    report = (artifacts / "cam" / "bias_report" / "step_8.md").read_text()
    assert "| gradcam | mask |" in report
    metrics = artifacts.parent / "metrics"
    assert (metrics / "cam" / "check_seconds" / "value").exists()
    plain, plus = (
        metrics / "cam" / m / "enrichment" / "mask" / "value" for m in ("gradcam", "gradcam_plus_plus")
    )
    assert plain.read_text() != plus.read_text()  # gradcam++ is its own series, not merged into gradcam's
    accuracy = metrics / "audit" / "accuracy" / "all"
    assert (accuracy / "value").exists() and (accuracy / "ci_low" / "value").exists()  # side by side
    assert (artifacts.parent / "cam_report.html").exists() and (artifacts / "cam_report.html").exists()
    assert not (tmp_path / "mlruns" / "cam_report.html").exists()  # not the store's root, shared by every run


def test_png_fallback_without_logger(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4, strict=True)
    trainer(tmp_path, [monitor], logger=False, max_epochs=2).fit(TinyClassifier(), train, val)
    files = sorted((tmp_path / "cam" / "predicted").glob("step_*.png"))
    assert [path.name for path in files] == ["step_4.png", "step_8.png"]
    image = Image.open(files[0])
    left, header = grid_offsets(image, 4, 3)
    assert left > 0 and header > 0


def test_logger_without_adapter_falls_back_to_png_and_warns_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    logger = CSVLogger(tmp_path, name="csv")
    monitor = CAMMonitor(num_samples=4, strict=True)
    with pytest.warns(UserWarning, match="no image writer for CSVLogger") as record:
        trainer(tmp_path, [monitor], logger=logger, max_epochs=2).fit(TinyClassifier(), train, val)
    assert sum("no image writer" in str(w.message) for w in record) == 1
    assert sorted(p.name for p in (Path(logger.log_dir) / "cam" / "predicted").glob("*.png")) == [
        "step_4.png",
        "step_8.png",
    ]
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "cam/check_seconds" in metrics


def test_every_n_epochs_and_nothing_during_the_sanity_check(tmp_path: Path) -> None:
    class SanitySpy(Callback):
        def on_sanity_check_end(self, trainer: object, pl_module: object) -> None:
            assert monitor.fixed is None and monitor.capture.buffer.size == 0 and monitor.checks == 0

    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4, every_n_epochs=2, strict=True)
    trainer(tmp_path, [monitor, SanitySpy()], max_epochs=5, num_sanity_val_steps=2).fit(
        TinyClassifier(), train, val
    )
    steps = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "cam" / "predicted").glob("*.png"))
    assert steps == [8, 16]  # after epochs 2 and 4 (4 steps each)
    assert monitor.checks == 2


def test_every_n_train_steps_with_validation_disabled(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, _ = loaders()
    monitor = CAMMonitor(num_samples=4, every_n_train_steps=3, strict=True)
    trainer(tmp_path, [monitor], max_epochs=2, limit_val_batches=0).fit(TinyClassifier(), train)
    steps = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "cam" / "predicted").glob("*.png"))
    assert steps == [3, 6]
    first_train_images = next(iter(train))[0]
    assert monitor.fixed is not None
    assert any(torch.equal(monitor.fixed.images[0], image) for image in first_train_images)


def test_every_n_train_steps_checks_once_per_optimizer_step_with_accumulation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4, every_n_train_steps=1, strict=True)
    trainer(tmp_path, [monitor], max_epochs=1, accumulate_grad_batches=2).fit(TinyClassifier(), train, val)
    steps = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "cam" / "predicted").glob("*.png"))
    # The images come from the first validation epoch, which runs after the 2 steps of epoch 1.
    assert steps == [] and monitor.fixed is not None
    monitor2 = CAMMonitor(num_samples=4, every_n_train_steps=1, strict=True)
    trainer(tmp_path / "b", [monitor2], max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0).fit(
        TinyClassifier(), train
    )
    steps = sorted(
        int(p.stem.removeprefix("step_")) for p in (tmp_path / "b" / "cam" / "predicted").glob("*.png")
    )
    assert steps == [1, 2]


def test_resumed_run_explains_the_same_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(num_val=48, shuffle_val_seed=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = CAMMonitor(num_samples=4, strict=True)
    trainer(tmp_path / "a", [monitor, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        TinyClassifier(), train, val
    )
    assert monitor.fixed is not None
    # A fresh run over a differently shuffled validation set would capture other images...
    _, other_val = loaders(num_val=48, shuffle_val_seed=7)
    fresh = CAMMonitor(num_samples=4, strict=True)
    trainer(tmp_path / "b", [fresh], max_epochs=1).fit(TinyClassifier(), train, other_val)
    assert fresh.fixed is not None and not torch.equal(fresh.fixed.images, monitor.fixed.images)
    # ...the resumed one keeps the checkpointed images and its check counter.
    resumed = CAMMonitor(num_samples=4, strict=True)
    trainer(tmp_path / "c", [resumed], max_epochs=4, enable_checkpointing=True).fit(
        TinyClassifier(), train, other_val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert resumed.fixed is not None
    assert torch.equal(resumed.fixed.images, monitor.fixed.images)
    assert resumed.checks == 4
    steps = sorted(
        int(p.stem.removeprefix("step_")) for p in (tmp_path / "c" / "cam" / "predicted").glob("*.png")
    )
    assert steps == [12, 16]


def test_targets_label_and_class_index_each_get_a_grid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(
        num_samples=4,
        targets=["predicted", "label", 2],
        class_names=["disk", "square", "tri", "cross"],
        strict=True,
    )
    trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    produced = sorted(p.parent.name for p in (tmp_path / "cam").glob("*/step_4.png"))
    assert produced == ["class_tri", "label", "predicted"]


def test_small_validation_set_uses_what_there_is(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(num_val=6)
    monitor = CAMMonitor(num_samples=16, strict=True)
    with pytest.warns(UserWarning, match="only 6 images were available for num_samples=16"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    assert monitor.fixed is not None and len(monitor.fixed.images) == 6


def test_unreadable_batches_report_their_structure_and_training_goes_on(tmp_path: Path) -> None:
    class OddBatches(TinyClassifier):
        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self.log("val_loss", F.cross_entropy(self(batch["pixels"]), batch["target"]))

    torch.manual_seed(0)
    train, _ = loaders()
    images, labels = next(iter(train))
    val = DataLoader([{"pixels": x, "target": y} for x, y in zip(images, labels, strict=True)], batch_size=16)
    with pytest.raises(
        ValueError, match=r"cannot read this batch: dict\('pixels': Tensor\[16, 3, 32, 32\].*unpack="
    ):
        trainer(tmp_path, [CAMMonitor(num_samples=4, strict=True)], max_epochs=1).fit(
            OddBatches(), train, val
        )
    with pytest.warns(UserWarning, match="cannot read this batch"):
        fit = trainer(tmp_path, [CAMMonitor(num_samples=4)], max_epochs=2)
        fit.fit(OddBatches(), train, val)
    assert fit.current_epoch == 2  # training finished
    monitor = CAMMonitor(num_samples=4, image_key="pixels", label_key="target", strict=True)
    trainer(tmp_path / "keys", [monitor], max_epochs=1).fit(OddBatches(), train, val)
    assert monitor.fixed is not None and monitor.checks == 1


def test_unpack_function_by_import_path(tmp_path: Path) -> None:
    monitor = CAMMonitor(unpack="lit_helpers.unpack_reversed")
    assert monitor.config.unpack is not None and monitor.config.unpack.__name__ == "unpack_reversed"


def test_class_names_of_the_wrong_length_warn_and_training_goes_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4, class_names=["a", "b"])
    with pytest.warns(UserWarning, match="class_names has 2 names but the model has 4 classes"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    assert monitor.checks == 1


def test_a_logger_that_raises_does_not_stop_training(tmp_path: Path) -> None:
    class BrokenLogger(TensorBoardLogger):
        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            if any(name.startswith("cam/") for name in metrics):
                raise OSError("disk full")
            super().log_metrics(metrics, step)

    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(tmp_path, [monitor], logger=BrokenLogger(tmp_path, name="tb"), max_epochs=2)
        fit.fit(TinyClassifier(), train, val)
    assert fit.current_epoch == 2
    assert sum("disk full" in str(w.message) for w in caught) == 1
    assert len(read_tensorboard_images(tmp_path / "tb" / "version_0", "cam/predicted/grid")) == 2


def test_a_wrong_target_layer_fails_before_training_starts(tmp_path: Path) -> None:
    train, val = loaders()
    model = TinyClassifier()
    with pytest.raises(ValueError, match=r"'net.feature.9' is not a module.*Closest names: net.features.9"):
        trainer(tmp_path, [CAMMonitor(target_layer="net.feature.9")], max_epochs=1).fit(model, train, val)
    assert model.global_step == 0


INVALID_OPTIONS = [
    ({"methods": ["gradcam", "scorecamm"]}, ValueError, "unknown CAM method 'scorecamm'"),
    ({"num_samples": 0}, ValueError, "num_samples must be a positive integer"),
    ({"targets": "labels"}, ValueError, "invalid target 'labels': use 'predicted', 'label'"),
    ({"targets": []}, ValueError, "targets is empty"),
    ({"every_n_epochs": 1, "every_n_train_steps": 5}, Exception, "not both"),
    ({"every_n_epochs": 0}, Exception, "every_n_epochs must be a positive integer"),
    ({"colormap": "rainbow"}, ValueError, "unknown colormap 'rainbow'; choose one of jet, turbo"),
    ({"alpha": 1.5}, ValueError, r"alpha .* must be in \[0, 1\]"),
    ({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2]}, ValueError, "one value per channel"),
    ({"unpack": "nowhere"}, ValueError, "not a dotted import path"),
    ({"unpack": "lit_helpers.missing"}, ValueError, "cannot import 'lit_helpers.missing'"),
]


@pytest.mark.parametrize(
    ("options", "error", "message"), INVALID_OPTIONS, ids=[str(o[0]) for o in INVALID_OPTIONS]
)
def test_invalid_options_fail_at_construction(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CAMMonitor(**options)


def test_model_attr_names_the_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(num_samples=4, model_attr="net", target_layer="features.9", strict=True)
    trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    assert monitor.checks == 1
    with pytest.raises(Exception, match="has no such submodule; its submodules are: net"):
        trainer(tmp_path, [CAMMonitor(model_attr="backbone")], max_epochs=1).fit(TinyClassifier(), train, val)


def test_background_writer_keeps_order_and_hands_back_errors() -> None:
    import threading

    from lightning_cam.writers.background import BackgroundWriter

    writer = BackgroundWriter(max_pending=2)
    done: list[int] = []
    threads: set[str] = set()

    def job(number: int) -> None:
        threads.add(threading.current_thread().name)
        if number == 3:
            raise OSError("disk full")
        done.append(number)

    for number in range(6):
        writer.submit(f"job {number}", lambda n=number: job(n))
    errors = writer.drain()
    assert done == [0, 1, 2, 4, 5]
    assert [(what, str(error)) for what, error in errors] == [("job 3", "disk full")]
    assert threads == {"lightning-cam-writer"}
    assert writer.close() == []


def test_a_monitor_can_be_copied_and_pickled_after_writing(tmp_path: Path) -> None:
    import copy
    import pickle

    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4)
    trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    clone = pickle.loads(pickle.dumps(monitor))
    assert torch.equal(clone.fixed.images, monitor.fixed.images) and clone.checks == 1
    copied = copy.deepcopy(monitor)
    copied.publisher._background.submit("job", lambda: None)
    assert copied.publisher._background.drain() == []


def test_a_custom_writer_failing_in_the_background_is_reported_once(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from lightning_cam.writers import Writer, register_writer

    class TeamLogger(CSVLogger):
        pass

    written: list[tuple[str, int]] = []

    class TeamWriter(Writer):
        def log_grid(self, tag: str, grid: object, step: int) -> None:
            written.append((tag, step))
            if step == 8:
                raise ConnectionError("server down")

    register_writer(TeamLogger, TeamWriter)
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, timeline_length=0, class_means=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(tmp_path, [monitor], logger=TeamLogger(tmp_path), max_epochs=3)
        fit.fit(TinyClassifier(), train, val)
    assert fit.current_epoch == 3
    assert written == [("cam/predicted/grid", 4), ("cam/predicted/grid", 8), ("cam/predicted/grid", 12)]
    assert sum("server down" in str(w.message) for w in caught) == 1


def test_a_normalisation_for_other_channels_is_refused_not_tinting_the_display() -> None:
    grey = torch.full((2, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match=r"image_mean has 3 values for images with 1 channel\(s\)"):
        display_images(grey, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    shown = display_images(grey, mean=[0.1], std=[0.5])  # one value per channel: the grey stays grey
    assert torch.allclose(shown, torch.full((2, 3, 4, 4), 0.35))


class Uint8Classifier(TinyClassifier):
    """Takes uint8 images (scales them itself); its loader wraps each label in a one-element list."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1][0])

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1][0]))


def test_uint8_images_and_labels_in_a_one_element_list_are_explained_at_every_check(tmp_path: Path) -> None:
    """Once a single warning and then nothing for the whole run; now every check logs its grid."""
    torch.manual_seed(0)
    samples = [(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), [i % 4]) for i in range(16)]
    loader = DataLoader(samples, batch_size=8)
    monitor = CAMMonitor(methods=["gradcam", "guided_backprop"], num_samples=4)
    with pytest.warns(
        UserWarning, match=r"guided_backprop failed.*need\(s\) floating-point images.*got uint8"
    ):
        trainer(tmp_path, [monitor], max_epochs=2).fit(Uint8Classifier(), loader, loader)
    assert monitor.checks == 2 and monitor.fixed.images.dtype == torch.uint8
    assert monitor.fixed.labels.tolist() == [0, 1, 2, 3]
    grids = sorted((tmp_path / "cam" / "predicted").glob("step_*.png"))
    assert len(grids) == 2
    grid = np.asarray(Image.open(grids[-1]).convert("RGB"), dtype=np.float32)
    noise = grid[40:130, 100:190]  # inside the first row's input tile: uniform uint8 noise, mean 127.5
    assert 100 < noise.mean() < 155  # drawn at its own brightness (read as 0..1 it saturated to white)


def test_large_images_are_drawn_as_capped_tiles_unless_full_resolution_is_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    samples = [(torch.rand(3, 300, 300), i % 4) for i in range(4)]
    loader = DataLoader(samples, batch_size=4)
    sizes = {}
    for cap in (128, None):
        monitor = CAMMonitor(
            methods=["gradcam"], num_samples=4, max_tile_size=cap, class_means=False, timeline_length=0
        )
        trainer(tmp_path / str(cap), [monitor], max_epochs=1).fit(TinyClassifier(), loader, loader)
        grid = Image.open(next((tmp_path / str(cap) / "cam" / "predicted").glob("step_*.png")))
        sizes[cap] = grid.size
    rows_tall = 4 * (128 + 2)  # four rows of 128 px tiles and their padding, plus the header
    assert rows_tall < sizes[128][1] < rows_tall + 40 and sizes[None][1] > 4 * 300
    with pytest.raises(ValueError, match="max_tile_size is the longest side"):
        CAMMonitor(max_tile_size=4)


def test_mlflow_tags_that_would_merge_are_an_error_never_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_cam.writers import MLflowWriter

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    writer = MLflowWriter(MLFlowLogger(experiment_name="cam", tracking_uri=f"file:{tmp_path}/mlruns"))
    with pytest.raises(
        ValueError,
        match=r"left out 'audit/count/group_a' \(its key 'audit/count/group_a/value' holds 'audit/count/group=a'\)",
    ):
        writer.log_metrics({"audit/count/group=a": 3.0, "audit/count/group_a": 5.0, "cam/x++": 1.0}, step=0)
    metrics = next((tmp_path / "mlruns").rglob("metrics"))
    assert (metrics / "audit/count/group_a/value").read_text().split()[1] == "3.0"  # the first tag's value
    assert (metrics / "cam/x_plus_plus/value").exists()
