"""The audit page: one self-contained HTML file (images inline as data URIs, no script, no request to
any network), readable on a laptop and printable. Built from a :class:`~.record.RunRecord` only."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable

from lightning_cam.report.plots import Family, families, plot_png, plotting_available
from lightning_cam.report.record import AUDITED_KEY, PROBLEMS_TAG, RunRecord, peak_step
from lightning_cam.report.tables import SHOWN_ROWS, Report

__all__ = ["render_page"]

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 0; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; } .muted { color: #5b6475; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #dde1e7; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; } tbody tr:nth-child(even) { background: #fafbfc; }
.verdicts li { margin: 4px 0; } .note { background: #fff7e0; border: 1px solid #f0d98c; padding: 8px 12px; border-radius: 4px; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; } .plots figure { margin: 0; }
figure img, .grid img { max-width: 100%; height: auto; border: 1px solid #dde1e7; }
figcaption { font-size: 12px; color: #5b6475; } details { font-size: 12px; }
.wide { overflow-x: auto; } .grids { display: flex; gap: 10px; align-items: flex-start; }
.grids figure { flex: 1 1 0; margin: 0; min-width: 0; } .grids figcaption { font-size: 13px; font-weight: 600; color: #1d2330; }
@media print { body { background: #fff; } main { padding: 0; } h2, figure, table { break-inside: avoid; } details { display: none; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _code(text: str) -> str:
    """Escaped text with Markdown back-ticks shown as ``<code>``."""
    parts = _e(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def _image(data: object, alt: str) -> str:
    png = data if isinstance(data, bytes) else data.png()  # type: ignore[attr-defined]
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(table: Report) -> str:
    """The table (its first :data:`SHOWN_ROWS` rows, the rest folded under a summary line) and its readings."""
    head = f"<thead><tr>{''.join(f'<th>{_e(c)}</th>' for c in table.columns)}</tr></thead>"
    rows = ["<tr>" + "".join(f"<td>{_code(str(c))}</td>" for c in row) + "</tr>" for row in table.rows]
    shown = f'<div class="wide"><table>{head}<tbody>{"".join(rows[:SHOWN_ROWS])}</tbody></table></div>'
    if len(rows) > SHOWN_ROWS:
        rest = f"<table>{head}<tbody>{''.join(rows[SHOWN_ROWS:])}</tbody></table>"
        shown += f'<details><summary>{len(rows) - SHOWN_ROWS} more rows</summary><div class="wide">{rest}</div></details>'
    readings = "".join(f"<li>{_code(r)}</li>" for r in table.readings)
    return shown + (f'<ul class="verdicts">{readings}</ul>' if readings else "")


def _summary(record: RunRecord) -> str:
    summary = record.summary
    if AUDITED_KEY in summary:  # an audit outside fit: what was audited, and nothing about checks
        listed = {"model", "target_layer", "methods", "targets", AUDITED_KEY}
        rows = [
            ("model", summary["model"]),
            ("target layer", summary.get("target_layer", "unknown")),
            ("methods", ", ".join(summary.get("methods", []))),  # type: ignore[arg-type]
            ("targets", ", ".join(map(str, summary.get("targets", [])))),  # type: ignore[arg-type]
            ("images audited", summary[AUDITED_KEY]),
            *((key.replace("_", " "), value) for key, value in summary.items() if key not in listed),
        ]
        return _rows_table(rows)
    steps = sorted({step for series in record.scalars.values() for step, _ in series})
    rows = [
        ("model", summary.get("model", "unknown (run made before the summary was logged)")),
        ("target layer", summary.get("target_layer", "unknown")),
        ("methods", ", ".join(summary.get("methods", [])) or "unknown"),  # type: ignore[arg-type]
        ("targets", ", ".join(map(str, summary.get("targets", [])))),  # type: ignore[arg-type]
        ("fixed samples", summary.get("num_samples", "unknown")),
        (
            "checks",
            f"{len(record.scalars.get(f'{record.name}/check_seconds', []))} (steps {steps[0]} to {steps[-1]})"
            if steps
            else "none",
        ),
    ]
    return _rows_table(rows)


def _rows_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_code(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _verdicts(record: RunRecord) -> str:
    sources = [
        ("Shortcut suspects over the run (every audit's strategies)", "audit/strategies/run"),
        ("Strategies the model uses at the last audit (no mask needed)", "audit/strategies"),
        ("The full audit: every validation image, with 95 % intervals", "audit/table"),
        ("The fixed samples over training: last check, first check and peak", "bias_report"),
    ]
    parts = []
    for title, suffix in sources:
        lines = [r for tag, t in sorted(record.tables.items()) if tag.endswith(suffix) for r in t.readings]
        if lines:
            items = "".join(f"<li>{_code(line)}</li>" for line in lines)
            parts.append(f'<h3>{_e(title)}</h3><ul class="verdicts">{items}</ul>')
    return "".join(parts) or f'<p class="note">{_no_verdict(record)}</p>'


def _no_verdict(record: RunRecord) -> str:
    """Why there is no verdict, in the words that fit the run."""
    if AUDITED_KEY in record.summary:
        return (
            "The audit had neither masks nor strategies, so there is no verdict on a cue: audit with "
            "<code>strategies=True</code> (no mask needed), or give batches a <code>mask</code>. The mean maps "
            "and the table below still show where the model looked."
        )
    if not record.scalars.get(f"{record.name}/check_seconds"):
        see = " (see what went wrong, above)" if f"{record.name}/{PROBLEMS_TAG}" in record.tables else ""
        return f"No check ran, so there is nothing to judge{see}."
    if any("/mass/" in tag for tag in record.scalars):
        return (
            "Masks were logged, but no bias report was written (<code>bias_report=False</code>); the curves below "
            "show where the attention mass went."
        )
    return (
        "No mask was logged, so there is no verdict on a cue: give batches a <code>mask</code> (the object, a "
        "known shortcut) to measure where the attention mass goes. The curves and grids below still show how "
        "the maps changed."
    )


def _problems(record: RunRecord) -> str:
    table = record.tables.get(f"{record.name}/{PROBLEMS_TAG}")
    if table is None:
        return ""
    items = "".join(f"<li>{_code(str(row[0]))}</li>" for row in table.rows)
    return f'<h2>What went wrong</h2><div class="note"><ul class="verdicts">{items}</ul></div>'


def _curves(record: RunRecord) -> str:
    methods = list(record.summary.get("methods", [])) or sorted(  # type: ignore[arg-type]
        {
            tag.split("/")[1]
            for tag in record.scalars
            if tag.startswith(f"{record.name}/") and tag.count("/") >= 2
        }
    )
    plotted = families(record.scalars, record.name, methods, record.summary.get("alerts", {}))  # type: ignore[arg-type]
    if not plotted:
        return '<p class="muted">No attention scalar was logged.</p>'
    drawing = plotting_available()
    note = (
        ""
        if drawing
        else (
            '<p class="note">matplotlib is not installed, so the curves are given as tables: '
            "<code>pip install lightning-cam[report]</code> draws them.</p>"
        )
    )
    return note + '<div class="plots">' + "".join(_figure(f, drawing) for f in plotted) + "</div>"


def _figure(family: Family, drawing: bool) -> str:
    steps = sorted({step for series in family.lines.values() for step, _ in series})
    columns = ["step", *family.lines]
    values = [{s: v for s, v in series} for series in family.lines.values()]
    rows = [[str(step)] + [f"{v[step]:.4g}" if step in v else "" for v in values] for step in steps]
    data = _table(Report(columns, rows, []))
    if not drawing:
        return f"<figure><figcaption>{_code(family.title)}</figcaption>{data}</figure>"
    return f"<figure>{_image(plot_png(family), family.title)}<details><summary>data</summary>{data}</details></figure>"


def _grids(record: RunRecord) -> str:
    """Per target choice: the first target's first, peak and last grids; each other target's latest."""
    targets = [str(t) for t in record.summary.get("targets", ["predicted"])]  # type: ignore[union-attr]
    parts = [_target_grids(record, target, main=i == 0) for i, target in enumerate(targets)]
    return "".join(part for part in parts if part) or '<p class="muted">No grid was logged.</p>'


def _target_grids(record: RunRecord, target: str, main: bool) -> str:
    kept = record.images.get(f"{record.name}/{target}", {})
    if not kept:
        return ""
    steps, peak = sorted(kept), peak_step(record.scalars, record.name)
    chosen = [("first check", steps[0])] if main else []
    if main and peak is not None:
        at = max((s for s in steps if s <= peak[1]), default=steps[0])
        chosen.append((f"peak of {peak[0]}", at))
    chosen.append(("last check", steps[-1]))
    seen, figures = set(), []
    for label, step in chosen:
        if step not in seen:
            seen.add(step)
            caption = f"{label}: step {step}"
            figures.append(
                f"<figure><figcaption>{_code(caption)}</figcaption>{_image(kept[step], f'{target} {label} grid')}</figure>"
            )
    return f'<h3>Target: {_e(_target_words(target))}</h3><div class="grids">{"".join(figures)}</div>'


def _target_words(target: str) -> str:
    words = {  # the page is read from the logs, which do not say whether a model classifies or detects
        "predicted": "the prediction (the predicted class, or a detector's detections)",
        "label": "the labels (the true class, or the ground-truth boxes)",
    }
    return words.get(target, f"class {target.removeprefix('class_')}")


def _latest_images(record: RunRecord, suffixes: Iterable[str]) -> str:
    parts = []
    for tag in sorted(record.images):
        if tag.endswith(tuple(suffixes)) and record.images[tag]:
            step = max(record.images[tag])
            parts.append(
                f"<figure>{_image(record.images[tag][step], tag)}<figcaption>{_e(tag)} at step {step}</figcaption></figure>"
            )
    return "".join(parts) or '<p class="muted">None logged.</p>'


def _tables(record: RunRecord) -> str:
    titles = {
        "bias_report": "Bias report",
        "trust_report": "Trust: which map to believe",
        "table": "Full audit",
        "strategies": "Strategies the model uses",
        "run": "Shortcut suspects over the run",
        "alerts": "Alerts",
    }
    parts = [
        f"<h3>{_e(titles.get(tag.rsplit('/', 1)[-1], tag))} <span class='muted'>({_e(tag)})</span></h3>{_table(table)}"
        for tag, table in sorted(record.tables.items())
        if tag != f"{record.name}/{PROBLEMS_TAG}"  # shown at the top
    ]
    return (
        "".join(parts)
        or '<p class="muted">No report table was logged (they need masks, groups, trust metrics or the audit).</p>'
    )


def render_page(record: RunRecord, source: str) -> str:
    """The page's HTML; ``source`` says where the record came from (the end of fit, or the files read)."""
    model = record.summary.get("model", "a model")
    training = [  # an audit outside fit has no check: no curve, no grid of fixed samples
        f"<h2>Attention over training</h2>{_curves(record)}",
        f"<h2>Where the model looked</h2>{_grids(record)}",
    ]
    sections = [
        f"<h1>lightning-cam audit report: {_e(model)}</h1><p class='muted'>{_code(source)}</p>",
        f"<h2>Run</h2>{_summary(record)}",
        _problems(record),
        f"<h2>Verdict</h2>{_verdicts(record)}",
        *(training if AUDITED_KEY not in record.summary else []),
        f"<h2>Timelines, mean maps and prototypes</h2><div class='plots'>{_latest_images(record, ('timeline', 'class_means', 'mean_maps', 'prototypes'))}</div>",
        f"<h2>Tables</h2>{_tables(record)}",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lightning-cam report: {_e(model)}</title><style>{STYLE}</style></head>"
        f"<body><main>{''.join(sections)}</main></body></html>"
    )
