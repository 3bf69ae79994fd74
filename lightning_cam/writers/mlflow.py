"""MLflow: grids as image artifacts of the run (``MlflowClient.log_image``), scalars under keys MLflow
takes (:func:`mlflow_key`), the page beside the run's own files."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger

from lightning_cam.report.grids import Grid
from lightning_cam.writers.base import Writer

__all__ = ["MLflowWriter", "mlflow_key"]

REFUSED = re.compile(r"[^a-zA-Z0-9_/. -]")  # what MLflow (and Lightning's MLFlowLogger) strips from a key
VALUE = "value"


def mlflow_key(tag: str) -> str:
    """The MLflow metric key of a tag: ``+`` written ``_plus`` and ``=`` written ``_`` (MLflow refuses
    both; Lightning's MLFlowLogger would strip them, merging ``gradcam++`` into ``gradcam``), any other
    refused character ``_``, and ``/value`` appended: the file store keeps a metric as a file named after
    its last part, so without it ``audit/accuracy/all`` could not sit beside ``audit/accuracy/all/ci_low``.

    Example::

        >>> mlflow_key("audit/gradcam++/enrichment/cue/class=disk/ci_low")
        'audit/gradcam_plus_plus/enrichment/cue/class_disk/ci_low/value'
    """
    return REFUSED.sub("_", tag.replace("+", "_plus").replace("=", "_")) + f"/{VALUE}"


class MLflowWriter(Writer):
    """Writes grids into an :class:`~lightning.pytorch.loggers.MLFlowLogger`'s run as
    ``<tag>/step_<step>.png`` artifacts, and scalars under :func:`mlflow_key` (two tags that would land
    under one key are an error naming both, never a merge)."""

    logger: MLFlowLogger

    def __init__(self, logger: MLFlowLogger) -> None:
        super().__init__(logger)
        self.tags_of_keys: dict[str, str] = {}  # key -> the tag written there: the mapping, reversed

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Every scalar under its :func:`mlflow_key`; a tag whose key another tag already holds is left
        out, and then named in a ``ValueError`` (after the others are written)."""
        keyed, clashes = {}, []
        for tag, value in metrics.items():
            key = mlflow_key(tag)
            written = self.tags_of_keys.setdefault(key, tag)
            if written == tag:
                keyed[key] = value
            else:
                clashes.append(f"{tag!r} (its key {key!r} holds {written!r})")
        super().log_metrics(keyed, step)
        if clashes:
            raise ValueError(
                f"MLflow: left out {', '.join(clashes)}: MLflow refuses '+', '=' and most punctuation, so these "
                "tags would merge into one metric; rename a class, group or mask so that they differ."
            )

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        self.logger.experiment.log_image(
            self.logger.run_id, grid.image, artifact_file=f"{tag}/step_{step}.png"
        )

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        self.logger.experiment.log_text(self.logger.run_id, text, artifact_file=f"{tag}/step_{step}.md")

    def page_dir(self, default: Path) -> Path:
        """The run's own folder of a file store (``<store>/<experiment id>/<run id>``): the trainer's
        ``log_dir`` is the store's root, shared by every run."""
        save_dir = self.logger.save_dir
        if save_dir is None:
            return default
        return Path(save_dir) / str(self.logger.experiment_id) / str(self.logger.run_id)

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """The page as an artifact of the run."""
        self.logger.experiment.log_artifact(self.logger.run_id, str(path))
