"""The bias report: attention mass and enrichment per method and mask at the first, the peak and the last
check, for all fixed samples and per class and group, as a table and as sentences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BiasReport", "bias_report", "format_table"]

COLUMNS = [
    "method",
    "mask",
    "slice",
    "samples",
    "accuracy",
    "mask area",
    "mass first",
    "mass peak",
    "mass last",
    "enrichment first",
    "enrichment peak",
    "peak step",
    "enrichment last",
]

Record = Mapping[str, float]


@dataclass(frozen=True)
class BiasReport:
    """A table (``columns``, ``rows``) and one plain-words reading per method and mask (and group)."""

    columns: list[str]
    rows: list[list[object]]
    readings: list[str]

    @property
    def text(self) -> str:
        """The table in Markdown, then the readings as a list."""
        return (
            format_table(self.columns, self.rows) + "\n\n" + "\n".join(f"- {line}" for line in self.readings)
        )


def _rounded(value: float, digits: int) -> object:
    return "n/a" if math.isnan(value) else round(value, digits)


def _row(key: str, first: Record, peak: Record, last: Record) -> list[object]:
    method, mask, part = key.split("/", 2)
    return [
        method,
        mask,
        part,
        int(last["count"]),
        "n/a" if math.isnan(last["accuracy"]) else f"{last['accuracy']:.0%}",
        _rounded(last["area"], 4),
        _rounded(first["mass"], 4),
        _rounded(peak["mass"], 4),
        _rounded(last["mass"], 4),
        _rounded(first["enrichment"], 2),
        _rounded(peak["enrichment"], 2),
        int(peak["step"]),
        _rounded(last["enrichment"], 2),
    ]


def _reading(key: str, first: Record, peak: Record, last: Record) -> str:
    method, mask, part = key.split("/", 2)
    if part != "all":
        accuracy = "" if math.isnan(last["accuracy"]) else f", {last['accuracy']:.0%} accurate"
        return (
            f"{part} ({int(last['count'])} samples{accuracy}): {method} puts {last['mass']:.0%} of its mass on "
            f"`{mask}` ({last['area']:.0%} of the image): {last['enrichment']:.1f}x enrichment "
            f"(peak {peak['enrichment']:.1f}x at step {int(peak['step'])})"
        )
    return (
        f"{method} puts {last['mass']:.0%} of its mass on `{mask}` ({last['area']:.0%} of the image): "
        f"{last['enrichment']:.1f}x enrichment (first check: {first['mass']:.0%}, {first['enrichment']:.1f}x; "
        f"peak: {peak['mass']:.0%}, {peak['enrichment']:.1f}x at step {int(peak['step'])})"
    )


def bias_report(
    first: Mapping[str, Record], peak: Mapping[str, Record], last: Mapping[str, Record]
) -> BiasReport:
    """The report of the records kept by :class:`~lightning_cam.history.AttentionHistory`, keyed
    ``"<method>/<mask>/<slice>"``; each record holds ``mass``, ``enrichment``, ``area``, ``count``,
    ``accuracy`` and ``step``. Readings are given for every ``all`` row and every group row.

    Example::

        >>> record = {"mass": 0.1, "enrichment": 6.4, "area": 0.0156, "count": 8, "accuracy": 0.9, "step": 160}
        >>> bias_report({"gradcam/cue/all": record}, {"gradcam/cue/all": record}, {"gradcam/cue/all": record}).readings[0]
        'gradcam puts 10% of its mass on `cue` (2% of the image): 6.4x enrichment (first check: 10%, 6.4x; peak: 10%, 6.4x at step 160)'
    """
    keys = sorted(last)
    rows = [_row(key, first.get(key, last[key]), peak.get(key, last[key]), last[key]) for key in keys]
    readings = [
        _reading(key, first.get(key, last[key]), peak.get(key, last[key]), last[key])
        for key in keys
        if not key.split("/", 2)[2].startswith("class=")
    ]
    return BiasReport(list(COLUMNS), rows, readings)


def format_table(columns: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (TensorBoard renders it; it also reads as plain text)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
