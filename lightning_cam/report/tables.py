"""The end-of-fit reports, each a table and sentences: the **bias report** (attention mass and
enrichment per method and mask at the first, the peak and the last check, for all fixed samples and
per class and group) and the **trust table** (which method's maps to believe: faithfulness and
sanity at the last check, and each method's cost)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TRUST_METRICS", "Report", "bias_report", "format_table", "trust_report"]

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


SHOWN_ROWS = 30  # rows of a table printed, or shown on the page before the rest is folded


@dataclass(frozen=True)
class Report:
    """A table (``columns``, ``rows``) and plain-words readings."""

    columns: list[str]
    rows: list[list[object]]
    readings: list[str]

    @property
    def text(self) -> str:
        """The table in Markdown, then the readings as a list."""
        return self._with_readings(format_table(self.columns, self.rows))

    def brief(self, rows: int = SHOWN_ROWS) -> str:
        """:attr:`text` with at most ``rows`` rows (for a console: a thousand classes' table is a wall),
        saying how many more the logged table holds."""
        if len(self.rows) <= rows:
            return self.text
        more = f"| ... {len(self.rows) - rows} more rows in the logged table and on the page |"
        return self._with_readings(format_table(self.columns, self.rows[:rows]) + "\n" + more)

    def _with_readings(self, table: str) -> str:
        return table + "\n\n" + "\n".join(f"- {line}" for line in self.readings)


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
        "n/a" if math.isnan(peak["enrichment"]) else int(peak["step"]),
        _rounded(last["enrichment"], 2),
    ]


def _reading(key: str, first: Record, peak: Record, last: Record) -> str:
    method, mask, part = key.split("/", 2)
    if math.isnan(last["area"]) or math.isnan(last["enrichment"]):
        why = "no image carries it" if math.isnan(last["area"]) else f"every {method} map was flat"
        return f"{part if part != 'all' else method}: no figure for `{mask}` at the last check ({why})"
    if part != "all":
        accuracy = "" if math.isnan(last["accuracy"]) else f", {last['accuracy']:.0%} accurate"
        return (
            f"{part} ({int(last['count'])} samples{accuracy}): {method} puts {last['mass']:.0%} of its mass on "
            f"`{mask}` ({last['area']:.0%} of the image): {last['enrichment']:.1f}x enrichment "
            f"(peak {peak['enrichment']:.1f}x at step {int(peak['step'])})"
        )
    at_first = (
        "no figure, flat maps"
        if math.isnan(first["enrichment"])
        else f"{first['mass']:.0%}, {first['enrichment']:.1f}x"
    )
    return (
        f"{method} puts {last['mass']:.0%} of its mass on `{mask}` ({last['area']:.0%} of the image): "
        f"{last['enrichment']:.1f}x enrichment (first check: {at_first}; "
        f"peak: {peak['mass']:.0%}, {peak['enrichment']:.1f}x at step {int(peak['step'])})"
    )


def bias_report(
    first: Mapping[str, Record], peak: Mapping[str, Record], last: Mapping[str, Record]
) -> Report:
    """The report of the records kept by :class:`~lightning_cam.monitor.history.AttentionHistory`, keyed
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
    return Report(list(COLUMNS), rows, readings)


def format_table(columns: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (TensorBoard renders it; it also reads as plain text)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


TRUST_METRICS: dict[str, tuple[str, bool]] = {
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "road": ("ROAD", True),
    "randomization_spearman": ("randomization Spearman", False),
}
"""Each trust metric's name in the table and whether higher is better."""


def trust_report(trust: Mapping[str, Mapping[str, float]]) -> Report:
    """Which method to trust: per method (``trust[method]``), each metric at the last check where it
    was computed and ``seconds_per_image`` (the method's own work at the last check), with one reading
    per metric naming the best method.

    Example::

        >>> trust_report({"gradcam": {"road": 0.2, "seconds_per_image": 0.001},
        ...               "scorecam": {"road": 0.1, "seconds_per_image": 0.3}}).readings
        ['ROAD (higher is more faithful): gradcam is best (0.2), then scorecam (0.1)']
    """
    metrics = [key for key in TRUST_METRICS if any(key in values for values in trust.values())]
    columns = [
        "method",
        *(
            f"{TRUST_METRICS[key][0]} ({'higher' if TRUST_METRICS[key][1] else 'lower'} is better)"
            for key in metrics
        ),
        "seconds per image",
    ]
    rows = [
        [
            method,
            *(_rounded(values.get(key, math.nan), 4) for key in metrics),
            _rounded(values.get("seconds_per_image", math.nan), 5),
        ]
        for method, values in sorted(trust.items())
    ]
    readings = []
    for key in metrics:
        name, higher = TRUST_METRICS[key]
        scored = sorted(
            (
                (values[key], method)
                for method, values in trust.items()
                if not math.isnan(values.get(key, math.nan))
            ),
            reverse=higher,
        )
        if scored:
            ranking = ", then ".join(f"{method} ({value:.3g})" for value, method in scored[1:])
            best = f"{scored[0][1]} is best ({scored[0][0]:.3g})" + (f", then {ranking}" if ranking else "")
            meaning = "more faithful" if key != "randomization_spearman" else "more model-dependent"
            readings.append(f"{name} ({'higher' if higher else 'lower'} is {meaning}): {best}")
    return Report(columns, rows, readings)
