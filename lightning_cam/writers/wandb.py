"""Weights & Biases: each image as a ``wandb.Image`` with a caption; for the method grids also a
``wandb.Table`` with one row per sample and one image column per method, so runs can be compared
sample by sample."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from lightning_cam.report.grids import Grid
from lightning_cam.writers.base import Writer

__all__ = ["WandbWriter"]


class WandbWriter(Writer):
    """Writes grids and per-sample tables to a :class:`~lightning.pytorch.loggers.WandbLogger`'s run."""

    logger: WandbLogger

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        import wandb

        caption = f"{', '.join(grid.columns)} (step {step})"
        self.logger.log_image(key=tag, images=[grid.image], step=step, caption=[caption])
        if not tag.endswith("/grid"):
            return
        columns = ["sample", "caption", *grid.columns]
        rows = [
            [row, caption, *(wandb.Image(grid.cell(row, column)) for column in range(len(grid.columns)))]
            for row, caption in enumerate(grid.captions)
        ]
        self.logger.log_table(
            key=f"{tag.removesuffix('/grid')}/samples", columns=columns, data=rows, step=step
        )

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        self.logger.log_table(key=tag, columns=columns, data=rows, step=step)

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """The page as a ``wandb.Html`` panel of the run."""
        import wandb

        self.logger.experiment.log({tag: wandb.Html(path.read_text(encoding="utf-8"))})
