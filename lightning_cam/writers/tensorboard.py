"""TensorBoard: images as PNG summaries in the event file (what ``SummaryWriter.add_image`` writes, with
faster PNG compression), text through ``add_text``."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

from lightning_cam.report.grids import Grid
from lightning_cam.writers.base import Writer

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter(Writer):
    """Writes grids to a :class:`~lightning.pytorch.loggers.TensorBoardLogger`'s event file."""

    logger: TensorBoardLogger

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        experiment = self.logger.experiment
        file_writer = getattr(experiment, "_get_file_writer", None)
        if file_writer is None:  # not torch's SummaryWriter: its own add_image encodes the image
            experiment.add_image(tag, grid.image, global_step=step, dataformats="HWC")
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = grid.picture.size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=grid.png())
        file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        self.logger.experiment.add_text(tag, text, global_step=step)
