"""The page's curves: the monitor's scalar series grouped into families (enrichment and mass per mask,
pointing game, drift, faithfulness, sanity, confidence), one small plot per family with the alert
thresholds drawn. matplotlib (``pip install lightning-cam[report]``) draws them; without it the page
shows the same series as tables and says so."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Family", "families", "plot_png", "plotting_available"]

Series = list[tuple[int, float]]

_PER_MASK = ("enrichment", "mass", "pointing_game")
_SINGLE = {
    "drift": "drift (1 - Pearson with the previous check)",
    "deletion_auc": "faithfulness: deletion AUC (lower is better)",
    "insertion_auc": "faithfulness: insertion AUC (higher is better)",
    "road": "faithfulness: ROAD (higher is better)",
    "randomization_spearman": "sanity: randomisation Spearman (lower is better)",
    "average_drop": "confidence: average drop (lower is better)",
    "flat_fraction": "flat maps: share with no attention anywhere",
}


@dataclass(frozen=True)
class Family:
    """One plot: its title, its lines (label -> series) and its alert thresholds (label -> value)."""

    title: str
    lines: dict[str, Series]
    thresholds: dict[str, float]


def _family_of(tag: str, name: str, methods: Sequence[str]) -> tuple[str, str] | None:
    """``(title, line label)`` of a first-target scalar ``tag``, ``None`` for tags not plotted."""
    parts = tag.split("/")
    if len(parts) < 3 or parts[0] != name or parts[1] not in methods:
        return None
    method, metric = parts[1], parts[2]
    if metric in _PER_MASK and len(parts) in (4, 5):
        label = method if len(parts) == 4 else f"{method} · {parts[4]}"
        return f"{metric.replace('_', ' ')} on `{parts[3]}`", label
    if metric in _SINGLE and len(parts) == 3:
        return _SINGLE[metric], method
    return None


def families(
    scalars: Mapping[str, Series], name: str, methods: Sequence[str], alerts: Mapping[str, str]
) -> list[Family]:
    """The plot families of the run, in a fixed order (per-mask families first, by title)."""
    grouped: dict[str, Family] = {}
    for tag in sorted(scalars):
        found = _family_of(tag, name, methods)
        if found is None:
            continue
        title, label = found
        family = grouped.setdefault(title, Family(title, {}, {}))
        family.lines[label] = scalars[tag]
        if tag in alerts:
            family.thresholds[f"alert: {label} {alerts[tag]}"] = float(alerts[tag].lstrip("<>"))
    return sorted(grouped.values(), key=lambda f: (not f.title.startswith(_PER_MASK), f.title))


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_png(family: Family) -> bytes:
    """The family as a small PNG (matplotlib's Agg backend, no global state touched)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(4.0, 2.5), dpi=90)
    figure.subplots_adjust(
        left=0.13, right=0.98, top=0.9, bottom=0.17
    )  # fixed margins: a layout engine doubles the time
    axes = figure.add_subplot()
    for label, series in family.lines.items():
        steps = [step for step, _ in series]
        values = [value if math.isfinite(value) else math.nan for _, value in series]
        axes.plot(steps, values, marker="o", markersize=3, linewidth=1.4, label=label)
    for label, value in family.thresholds.items():
        axes.axhline(value, color="crimson", linestyle="--", linewidth=1, label=label)
    axes.set_title(family.title.replace("`", ""), fontsize=9)
    axes.set_xlabel("training step", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(5))
    axes.legend(fontsize=7, loc="upper left", framealpha=0.7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
