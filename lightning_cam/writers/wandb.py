"""Weights & Biases: each image as a ``wandb.Image`` with a caption; for the method grids also a
``wandb.Table`` with one row per sample and one image column per method, so runs can be compared
sample by sample."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from lightning_cam.report.grids import Grid
from lightning_cam.writers.base import Writer

__all__ = ["WandbWriter", "uniform_columns"]


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
        self.logger.log_table(key=tag, columns=columns, data=uniform_columns(rows), step=step)

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """The page as a ``wandb.Html`` panel of the run."""
        import wandb

        self.logger.experiment.log({tag: wandb.Html(path.read_text(encoding="utf-8"))})


def _missing(cell: object) -> bool:
    return cell is None or cell == "n/a" or (isinstance(cell, float) and cell != cell)


def uniform_columns(rows: list[list[object]]) -> list[list[object]]:
    """The rows with one type per column, as ``wandb.Table`` demands: a column of numbers keeps them, its
    missing cells (``"n/a"``, NaN) as ``None``; a column that mixes numbers with other text is text.

    Example::

        >>> uniform_columns([["disk", 0.5, 3], ["cross", "n/a", "x"]])
        [['disk', 0.5, '3'], ['cross', None, 'x']]
    """
    columns = list(zip(*rows, strict=True)) if rows else []
    uniform = []
    for cells in columns:
        numbers = all(_missing(c) or (isinstance(c, (int, float)) and not isinstance(c, bool)) for c in cells)
        uniform.append(
            [None if _missing(c) else c for c in cells]
            if numbers
            else ["" if c is None else str(c) for c in cells]
        )
    return [list(row) for row in zip(*uniform, strict=True)] if uniform else [list(row) for row in rows]
