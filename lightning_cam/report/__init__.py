"""What a person reads: the grids (:mod:`.grids`: colormaps, overlays, labelled grids as PNG
bytes), the text tables (:mod:`.tables`: bias report, trust table) and the self-contained HTML audit page
of a run (:mod:`.record`, :mod:`.read`, :mod:`.plots`, :mod:`.page`), written by CAMMonitor at the end of
fit or rebuilt from a finished run's files with ``lightning-cam report RUN_DIR`` (:func:`rebuild_report`).

It imports torch, PIL and (for the plots, optionally) matplotlib; no other wing, no Lightning.
"""

from __future__ import annotations

from pathlib import Path

from lightning_cam.report.page import render_page
from lightning_cam.report.read import read_run
from lightning_cam.report.record import RunRecord

__all__ = ["REPORT_FILE", "RunRecord", "read_run", "rebuild_report", "write_report"]

REPORT_FILE = "cam_report.html"


def write_report(record: RunRecord, path: str | Path, source: str) -> Path:
    """Write the page of ``record`` to ``path``; ``source`` is the line under the title."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(record, source), encoding="utf-8")
    return path


def rebuild_report(run_dir: str | Path, out: str | Path | None = None, name: str = "cam") -> Path:
    """Read the run under ``run_dir`` (TensorBoard event files, or the PNG writer's folder) and write
    its page to ``out`` (default ``<run_dir>/cam_report.html``).

    Example::

        >>> rebuild_report("lightning_logs/version_0")  # doctest: +SKIP
        PosixPath('lightning_logs/version_0/cam_report.html')
    """
    record = read_run(run_dir, name)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    return write_report(record, target, "Rebuilt by `lightning-cam report` from the run's logged files.")
