"""What the audit page is made of: a run's scalar series, images, tables and summary (``RunRecord``),
filled while the monitor publishes, or read back from a finished run (:mod:`.read`). Both ways give
the same record, so the page written at the end of fit and the one rebuilt later are the same page.

Scalars are kept as float32 (what event files hold). Of the main grid only the checks the page can
show are kept: the first, the last, and each enrichment series' running peak.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lightning_cam.report.tables import Report

__all__ = ["RunRecord", "enrichment_tags", "grid_tag", "peak_step", "table_of_text"]

SUMMARY_TAG = "run_summary"
PROBLEMS_TAG = "problems"  # what went wrong: a row per warning
FILE_TAG = "report_file"  # the page's path, logged after the page: never part of it
AUDITED_KEY = "images_audited"  # in the summary of an audit made outside fit (no check, no training)


def table_of_text(text: str) -> Report:
    """The :class:`~lightning_cam.report.tables.Report` of a report's Markdown (:attr:`Report.text`), as logged:
    its cells as the text they were written as."""
    lines = text.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    if not table:  # a message (an alert)
        return Report(["message"], [[text.strip()]], [])
    cells = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in table]
    readings = [line[2:] for line in lines if line.startswith("- ")]
    return Report(cells[0] if cells else [], cells[2:], readings)


def summary_text(summary: Mapping[str, object]) -> str:
    """The run summary as logged (a JSON code block: TensorBoard shows it, the rebuild reads it)."""
    return "```json\n" + json.dumps(dict(summary), sort_keys=True) + "\n```"


def summary_of_text(text: str) -> dict[str, object]:
    body = text.strip().removeprefix("```json").removesuffix("```")
    return json.loads(body)


def grid_tag(tag: str) -> str:
    """Image tags without a trailing ``/grid`` (as the PNG writer names its folders)."""
    return tag.removesuffix("/grid")


def enrichment_tags(scalars: Mapping[str, object], name: str) -> list[str]:
    """The first target's enrichment series over all samples: ``<name>/<method>/enrichment/<mask>``."""
    return sorted(
        tag
        for tag in scalars
        if tag.startswith(f"{name}/") and tag.count("/") == 3 and tag.split("/")[2] == "enrichment"
    )


def peak_step(scalars: Mapping[str, Sequence[tuple[int, float]]], name: str) -> tuple[str, int] | None:
    """The enrichment series that peaks highest and the first step of its peak (``None`` without masks)."""
    best: tuple[str, int, float] | None = None
    for tag in enrichment_tags(scalars, name):
        for step, value in scalars[tag]:
            if not np.isnan(value) and (best is None or value > best[2]):
                best = (tag, step, value)
    return None if best is None else (best[0], best[1])


@dataclass
class RunRecord:
    """A run's monitor output: ``summary`` (model, layer, methods, ...), ``scalars`` (tag -> ``[(step,
    value)]``), ``images`` (tag -> ``{step: PNG bytes or an object with .png()}``), ``tables`` (tag ->
    :class:`~lightning_cam.report.tables.Report`; a page shows each cell as ``str(cell)``, the text a report's
    Markdown holds), ``name`` (the monitor's tag root)."""

    name: str = "cam"
    summary: dict[str, object] = field(default_factory=dict)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, dict[int, object]] = field(default_factory=dict)
    tables: dict[str, Report] = field(default_factory=dict)

    def state_dict(self) -> dict[str, object]:
        """The record as plain data (images as PNG bytes, tables as the Markdown that is logged), for a
        checkpoint: a resumed run's page then holds the checks before the resume too."""
        return {
            "summary": dict(self.summary),
            "scalars": {tag: list(series) for tag, series in self.scalars.items()},
            "images": {
                tag: {step: _png(image) for step, image in kept.items()} for tag, kept in self.images.items()
            },
            "tables": {tag: report.text for tag, report in self.tables.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.summary = dict(state.get("summary", {}))  # type: ignore[call-overload]
        scalars: Mapping[str, Sequence[tuple[int, float]]] = state.get("scalars", {})  # type: ignore[assignment]
        self.scalars = {tag: [(int(s), float(v)) for s, v in series] for tag, series in scalars.items()}
        images: Mapping[str, Mapping[int, bytes]] = state.get("images", {})  # type: ignore[assignment]
        self.images = {tag: dict(kept) for tag, kept in images.items()}
        tables: Mapping[str, str] = state.get("tables", {})  # type: ignore[assignment]
        self.tables = {tag: table_of_text(text) for tag, text in tables.items()}

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.scalars.setdefault(tag, []).append((step, float(np.float32(value))))
        self._prune()

    def add_image(self, tag: str, image: object, step: int) -> None:
        """Keep an image (a Grid, or PNG bytes); of every tag but the main grids only the latest."""
        tag = grid_tag(tag)
        kept = self.images.setdefault(tag, {})
        if not self.is_main_grid(tag):
            kept.clear()
        kept[step] = image

    def is_main_grid(self, tag: str) -> bool:
        target = self.summary.get("targets", ["predicted"])[0]  # type: ignore[index]
        return tag == f"{self.name}/{target}"

    def _prune(self) -> None:
        """Of the main grid keep the first, the last and each enrichment series' running peak."""
        for tag, kept in self.images.items():
            if not self.is_main_grid(tag) or len(kept) <= 2:
                continue
            steps = sorted(kept)
            wanted = {steps[0], steps[-1]}
            for series in enrichment_tags(self.scalars, self.name):
                peak = peak_step({series: self.scalars[series]}, self.name)
                if peak is not None:
                    wanted.add(peak[1])
            for step in steps:
                if step not in wanted:
                    del kept[step]


def _png(image: object) -> bytes:
    return image if isinstance(image, bytes) else image.png()  # type: ignore[attr-defined]
