"""MLflow: grids as image artifacts of the run (``MlflowClient.log_image``)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

from lightning_cam.report.grids import Grid
from lightning_cam.writers.base import Writer

__all__ = ["MLflowWriter"]


class MLflowWriter(Writer):
    """Writes grids into an :class:`~lightning.pytorch.loggers.MLFlowLogger`'s run as
    ``<tag>/step_<step>.png`` artifacts."""

    logger: MLFlowLogger

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        self.logger.experiment.log_image(
            self.logger.run_id, grid.image, artifact_file=f"{tag}/step_{step}.png"
        )

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        self.logger.experiment.log_text(self.logger.run_id, text, artifact_file=f"{tag}/step_{step}.md")

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """The page as an artifact of the run."""
        self.logger.experiment.log_artifact(self.logger.run_id, str(path))
