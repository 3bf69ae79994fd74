"""The audit as a table (a row per slice, method and mask) and plain-words readings per group."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lightning_cam.auditing.aggregate import Figure
from lightning_cam.report.tables import Report

if TYPE_CHECKING:
    from lightning_cam.auditing.run import AuditResult

__all__ = ["AUDIT_COLUMNS", "audit_summary", "audit_table"]

AUDIT_COLUMNS = [
    "slice",
    "images",
    "accuracy [95% CI]",
    "confidence",
    "method",
    "mask",
    "mask area",
    "mass [95% CI]",
    "enrichment [95% CI]",
    "pointing game",
    "flat maps",
]


def _percent(figure: Figure) -> str:
    if math.isnan(figure.value):
        return "n/a"
    interval = "" if math.isnan(figure.low) else f" [{figure.low:.0%}, {figure.high:.0%}]"
    return f"{figure.value:.0%}{interval}"


def _times(figure: Figure) -> str:
    if math.isnan(figure.value):
        return "n/a"
    interval = "" if math.isnan(figure.low) else f" [{figure.low:.2f}, {figure.high:.2f}]"
    return f"{figure.value:.2f}x{interval}"


def _mass(figure: Figure) -> str:
    if math.isnan(figure.value):
        return "n/a"
    interval = "" if math.isnan(figure.low) else f" [{figure.low:.3f}, {figure.high:.3f}]"
    return f"{figure.value:.3f}{interval}"


def _reading(part: str, figures: dict[str, Figure], method: str, mask: str) -> str:
    who = "all images" if part == "all" else part
    accuracy = figures["accuracy"]
    accurate = "" if math.isnan(accuracy.value) else f", {_percent(accuracy)} accurate"
    mass, area = figures[f"{method}/mass/{mask}"], figures[f"{method}/area/{mask}"]
    flat = figures[f"{method}/flat_fraction"].value
    if math.isnan(mass.value):
        return f"{who} ({int(figures['count'].value)} images{accurate}): no {method} map with `{mask}` was non-flat"
    left_out = f" ({flat:.0%} of the maps flat, left out)" if flat > 0 else ""
    return (
        f"{who} ({int(figures['count'].value)} images{accurate}): {method} puts {mass.value:.0%} of its mass on "
        f"`{mask}` ({area.value:.1%} of the image): {_times(figures[f'{method}/enrichment/{mask}'])} enrichment"
        f"{left_out}"
    )


def audit_table(result: AuditResult) -> Report:
    """Rows for every slice (``all``, classes, groups) and (method, mask) pair, or one row per slice
    without masks; readings for ``all`` and each group."""
    rows, readings = [], []
    for part, figures in result.figures.items():
        head = [
            part,
            int(figures["count"].value),
            _percent(figures["accuracy"]),
            _percent(figures["confidence"]),
        ]
        if not result.pairs:
            rows.append([*head, "", "", "", "", "", "", ""])
        for method, mask in result.pairs:
            rows.append(
                [
                    *head,
                    method,
                    mask,
                    f"{figures[f'{method}/area/{mask}'].value:.4f}",
                    _mass(figures[f"{method}/mass/{mask}"]),
                    _times(figures[f"{method}/enrichment/{mask}"]),
                    _percent(figures[f"{method}/pointing_game/{mask}"]),
                    _percent(figures[f"{method}/flat_fraction"]),
                ]
            )
            if not part.startswith("class="):
                readings.append(_reading(part, figures, method, mask))
    return Report(list(AUDIT_COLUMNS), rows, readings)


def _number(value: float) -> float | None:
    """A float for JSON: ``None`` where it is NaN or infinite (JSON has neither)."""
    return value if math.isfinite(value) else None


def audit_summary(result: AuditResult) -> dict[str, object]:
    """The audit as plain data for JSON: the images counted, the layers explained, every figure per slice
    (``value``, ``low``, ``high``; ``None`` where unknown) and every strategy with its tests and verdict."""
    return {
        "images": len(result.rows["index"]),
        "target_layers": list(result.target_layers),
        "figures": {
            part: {
                key: {"value": _number(f.value), "low": _number(f.low), "high": _number(f.high)}
                for key, f in figures.items()
            }
            for part, figures in result.figures.items()
        },
        "strategies": [
            {
                "class": s.class_name,
                "number": s.number,
                "size": s.size,
                "share": _number(s.share),
                "accuracy": _number(s.accuracy),
                "region_area": _number(s.region_area),
                "repetition": _number(s.repetition),
                "occlusion_drop": _number(s.occlusion_drop),
                "transplant_gain": _number(s.transplant_gain),
                "flip_rate": _number(s.flip_rate),
                "reliance": _number(s.reliance),
                "evidence": _number(s.evidence),
                "verdict": s.verdict,
                "flagged": s.flagged,
                "unknown": s.unknown,
                "prototypes": list(s.prototypes),
            }
            for s in result.strategies
        ],
    }
