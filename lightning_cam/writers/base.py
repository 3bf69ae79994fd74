"""The writer interface, the PNG writer and the registry that picks a writer per logger type."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger

from lightning_cam.report.grids import Grid

__all__ = ["PNGWriter", "Writer", "WriterFactory", "register_writer", "writer_for"]


class Writer:
    """Sends what a check produced to one destination. Subclasses implement :meth:`log_grid`.

    ``log_metrics`` goes through the Lightning logger's own ``log_metrics`` when there is one.
    """

    def __init__(self, logger: Logger | None = None) -> None:
        self.logger = logger

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        raise NotImplementedError

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        """A small table with a Markdown rendering of it (``text``); loggers without text support skip it."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics(dict(metrics), step=step)

    def page_dir(self, default: Path) -> Path:
        """Where the audit page of this logger's run is written (``default``: the trainer's ``log_dir``)."""
        return default

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """A file written beside the run (the audit page); loggers that keep files attach it, the others
        note its path."""
        self.log_report(tag, ["file"], [[str(path)]], f"The audit page: `{path}`", step)


class PNGWriter(Writer):
    """Writes each grid as ``<root>/<tag>/step_<step>.png`` (a trailing ``/grid`` in the tag is dropped,
    so grids land in ``<root>/cam/<target>/step_<step>.png``), and reports as ``.md`` files beside them."""

    def __init__(self, root: str | Path, logger: Logger | None = None) -> None:
        super().__init__(logger)
        self.root = Path(root)

    def path_for(self, tag: str, step: int) -> Path:
        return self.root / tag.removesuffix("/grid") / f"step_{step}.png"

    def log_grid(self, tag: str, grid: Grid, step: int) -> None:
        path = self.path_for(tag, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(grid.png())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Through the logger when there is one, and always appended to ``<root>/scalars.csv`` (float32,
        as event files keep them), from which ``lightning-cam report`` rebuilds the page."""
        super().log_metrics(metrics, step)
        path = self.root / "scalars.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "tag", "value"])
            writer.writerows([step, tag, repr(float(np.float32(value)))] for tag, value in metrics.items())

    def log_file(self, tag: str, path: Path, step: int) -> None:
        """The page is already in the run's folder; nothing to copy."""

    def log_report(
        self, tag: str, columns: list[str], rows: list[list[object]], text: str, step: int
    ) -> None:
        path = self.path_for(tag, step).with_suffix(".md")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


WriterFactory = Callable[[Logger], Writer]
_REGISTRY: list[tuple[type[Logger], WriterFactory]] = []


def register_writer(logger_type: type[Logger], factory: WriterFactory) -> None:
    """Use ``factory(logger)`` for loggers of ``logger_type`` (and its subclasses).

    The most recent registration wins, so a user can replace a built-in adapter.

    Example::

        class MyWriter(Writer):
            def log_grid(self, tag, grid, step):
                self.logger.experiment.upload(tag, grid.image, step)

        register_writer(MyLogger, MyWriter)
    """
    _REGISTRY.insert(0, (logger_type, factory))


def writer_for(logger: Logger) -> Writer | None:
    """The registered writer for ``logger``'s type, or ``None`` when no adapter fits."""
    for logger_type, factory in _REGISTRY:
        if isinstance(logger, logger_type):
            return factory(logger)
    return None
