"""A fit of a fixed, untrained model whose every logged output (scalars, images, report) is recorded,
to prove that a refactor of CAMMonitor changes nothing it logs.

The optimiser's learning rate is 0: the weights never move, so every check explains the same
seeded, untrained network and two CPUs differ only by kernel rounding (a trained model's numbers
drift apart between CPUs over the epochs). ``python tests/recorded_fit.py DIR`` writes the outputs
of the current code to ``DIR`` (the reference the test compares against was written this way
before the package was moved into its wings).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from lightning_cam import CAMMonitor
from lightning_cam.demo.data import CLASS_NAMES, ShapesConfig, ShapesDataset

sys.path.insert(0, str(Path(__file__).parent))
from lit_helpers import TinyClassifier


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call; CAMMonitor writes its images as PNG files under ``log_dir``."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return str(self.root)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for tag, value in metrics.items():
            self.metrics.setdefault(tag, []).append((int(step or 0), float(value)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class DictBatchClassifier(TinyClassifier):
    """:class:`TinyClassifier` on the shapes' dict batches (``image``, ``label``, ``mask``), frozen by a
    learning rate of 0 (BatchNorm's running statistics still follow the data)."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["image"], batch["label"]), batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step((batch["image"], batch["label"]), batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def record_fit(root: Path) -> dict[str, Any]:
    """Run the fit; return ``{"scalars": {tag: [[step, value], ...]}, "images": [relative paths],
    "report": text}`` (time scalars left out) with the images under ``root / "cam"``."""
    torch.manual_seed(0)
    train = DataLoader(ShapesDataset(ShapesConfig(256, image_size=32, cue_size=4, seed=0)), batch_size=32)
    val = DataLoader(ShapesDataset(ShapesConfig(32, None, image_size=32, cue_size=4, seed=1)), batch_size=16)
    monitor = CAMMonitor(
        methods=["gradcam", "gradcam++", "scorecam", "ablationcam"],
        num_samples=4,
        targets=["predicted", "label", 2],
        class_names=list(CLASS_NAMES),
        method_options={"scorecam": {"topk": 4}},
        summary_every_n_checks=2,
        timeline_length=3,
        strict=True,
    )
    logger = RecordingLogger(root)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[monitor],
        logger=logger,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(DictBatchClassifier(width=8), train, val)
    scalars = {
        tag: values
        for tag, values in logger.metrics.items()
        if tag.startswith("cam") and not tag.endswith("seconds")
    }
    images = sorted(str(path.relative_to(root)) for path in (root / "cam").rglob("*.png"))
    reports = sorted((root / "cam" / "bias_report").rglob("*.md"))
    return {"scalars": scalars, "images": images, "report": reports[-1].read_text() if reports else ""}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    recorded = record_fit(out)
    for path in (out / "cam").rglob("*.md"):
        path.unlink()
    (out / "recorded.json").write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
