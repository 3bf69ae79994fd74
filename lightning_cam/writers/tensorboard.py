"""TensorBoard: grids through ``SummaryWriter.add_image``, text through ``add_text``."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

from lightning_cam.render import Grid
from lightning_cam.writers.base import Writer

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter(Writer):
    """Writes grids to a :class:`~lightning.pytorch.loggers.TensorBoardLogger`'s event file."""

    logger: TensorBoardLogger

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        self.logger.experiment.add_image(tag, grid.image, global_step=step, dataformats="HWC")

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        self.logger.experiment.add_text(tag, text, global_step=step)
