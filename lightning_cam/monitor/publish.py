"""Publishing a check: draw its grids (on the device), and hand grids, scalars, reports and alerts to
one writer per attached logger, on a background thread. Faults are reported through
:class:`~lightning_cam.monitor.faults.Faults`, never raised into training unless ``strict``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_cam import metrics
from lightning_cam.auditing import AuditResult
from lightning_cam.auditing.strategies import Strategy, strategy_rank, strategy_report
from lightning_cam.batches import FixedBatch
from lightning_cam.engine.targets import num_classes
from lightning_cam.monitor.check import CheckResult, TargetResult
from lightning_cam.monitor.config import MonitorConfig
from lightning_cam.monitor.faults import Faults
from lightning_cam.monitor.history import AttentionHistory, series_key
from lightning_cam.monitor.suspects import SuspectHistory
from lightning_cam.monitor.tasks import infer_task, task_view
from lightning_cam.report import REPORT_FILE, RunRecord, write_report
from lightning_cam.report.grids import (
    Grid,
    apply_colormap,
    at_slices,
    display_images,
    outline,
    peak_slices,
    render_grid,
    render_table,
    render_volume_grid,
)
from lightning_cam.report.record import FILE_TAG, PROBLEMS_TAG, SUMMARY_TAG, summary_text, table_of_text
from lightning_cam.report.tables import Report, bias_report, trust_report
from lightning_cam.writers import PNGWriter, Writer, writer_for
from lightning_cam.writers.background import BackgroundWriter

__all__ = ["Publisher", "SummaryInputs"]

PROTOTYPE_ROWS = 8  # strategies shown with their prototypes (flagged first)
TIMELINE_TILE = 64  # timelines are wide: their tiles are enlarged less than the grid's


@dataclass(frozen=True)
class SummaryInputs:
    """What the timelines and per-class mean maps of a check are drawn from besides the maps: small
    host values, kept between checks so that the last check's summary can be drawn at the end of fit
    from the history's maps without keeping anything else on the device."""

    step: int
    target: str
    methods: tuple[str, ...]
    captions: list[str]
    num_classes: int


class Publisher:
    """Draws what a check produced and writes it through every attached logger's writer.

    Example::

        >>> publisher = Publisher(MonitorConfig(), Faults(strict=False))
        >>> publisher.attach(trainer.loggers, trainer.default_root_dir)  # doctest: +SKIP
        >>> publisher.publish_check(result, history, fixed.labels, checks=1)  # doctest: +SKIP
    """

    def __init__(self, config: MonitorConfig, faults: Faults) -> None:
        self.config, self.faults = config, faults
        self.writers: list[Writer] | None = None
        self._background = BackgroundWriter()
        self._unsummarised: SummaryInputs | None = None
        self.record = RunRecord(config.name)

    def attach(self, loggers: Sequence[Any], root: str | Path) -> list[Writer]:
        """One writer per logger (PNG files for a logger without an adapter, or without any logger)."""
        if self.writers is None:
            self.writers = [self._writer_for(logger, root) for logger in loggers]
            if not loggers:
                rank_zero_info(
                    f"CAMMonitor: no logger is attached; grids are saved as PNG files under {root}/cam."
                )
                self.writers.append(PNGWriter(root))
        return self.writers

    def _writer_for(self, logger: Any, root: str | Path) -> Writer:
        writer = writer_for(logger)
        if writer is not None:
            return writer
        self.faults.warn_once(
            f"writer:{type(logger).__name__}",
            f"CAMMonitor: no image writer for {type(logger).__name__}; its grids are saved as PNG files and its "
            f"scalars still go through its log_metrics. Register one with lightning_cam.writers.register_writer.",
        )
        directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or root
        return PNGWriter(str(directory), logger)

    def publish_check(self, result: CheckResult, history: AttentionHistory, checks: int) -> None:
        """The grid of every target choice and, every ``summary_every_n_checks`` checks, the timelines
        and class means; otherwise their inputs are kept (on the host) for :meth:`publish_end`."""
        images = {
            f"{self.config.name}/{target.name}/grid": self._grid(result, target) for target in result.targets
        }
        first = result.targets[0] if result.targets else None
        self._unsummarised = None
        if first is not None and first.prefix == self.config.name:
            maps = first.explanation.maps
            summary = SummaryInputs(
                result.step,
                first.name,
                tuple(maps),
                first.captions,
                num_classes(first.explanation.scorer, first.explanation.logits),
            )
            if checks % self.config.summary_every_n_checks == 0:
                images |= self.summary_images(summary, result.shown, result.labels, history)
            else:
                self._unsummarised = summary
        self._publish_images(images, result.step)

    def _grid(self, result: CheckResult, target: TargetResult) -> Grid:
        """A row per sample (input and an overlay per method); for volumes a row of slices per sample and method."""
        config = self.config
        if result.shown.dim() == 5:
            return render_volume_grid(
                result.shown,
                target.explanation.maps,
                target.captions,
                num_slices=config.num_slices,
                colormap=config.colormap,
                alpha=config.alpha,
                max_tile=config.max_tile_size,
            )
        return render_grid(
            result.shown,
            target.explanation.maps,
            target.captions,
            colormap=config.colormap,
            alpha=config.alpha,
            max_tile=config.max_tile_size,
            regions=result.regions,
            boxes=target.boxes,
            box_labels=target.box_labels,
        )

    def publish_end(self, history: AttentionHistory, fixed: FixedBatch | None, step: int) -> None:
        """At the end of fit: the last check's timelines and class means if their turn had not come,
        and the bias report."""
        summary, self._unsummarised = self._unsummarised, None
        if summary is not None and fixed is not None:
            with self.faults.guard("summary images"):
                rows = task_view(
                    fixed, infer_task(self.config.task, fixed.labels, fixed.boxes), self.config.num_samples
                ).fixed
                config = self.config
                shown = display_images(
                    rows.images, config.image_mean, config.image_std, config.display_channel
                )
                self._publish_images(self.summary_images(summary, shown, rows.labels, history), summary.step)
        if self.config.bias_report and history.last:
            report = bias_report(history.first, history.peak, history.last)
            self.publish_report(f"{self.config.name}/bias_report", report, step)
        if any(set(values) - {"seconds_per_image"} for values in history.trust.values()):
            self.publish_report(f"{self.config.name}/trust_report", trust_report(history.trust), step)

    def summary_images(
        self, summary: SummaryInputs, shown: Tensor, labels: Tensor | None, history: AttentionHistory
    ) -> dict[str, Grid]:
        """Per method: the timeline (each sample's last maps side by side) and the per-class mean maps
        (of the maps of the summary's check: the history's latest)."""
        config, images = self.config, {}
        for method in summary.methods:
            key = series_key(summary.target, method)
            steps, timeline = history.timeline_of(key, shown.device)
            latest, rows = history.previous[key].to(shown.device), shown
            if shown.dim() == 5:  # volumes: each sample at the slice where its latest map peaks
                peak = peak_slices(latest)
                rows, timeline = at_slices(shown, peak), [at_slices(maps, peak) for maps in timeline]
            if steps:
                columns = {f"step {s}": maps for s, maps in zip(steps, timeline, strict=True)}
                images[f"{config.name}/{method}/timeline"] = render_grid(
                    rows,
                    columns,
                    summary.captions,
                    colormap=config.colormap,
                    alpha=config.alpha,
                    min_tile=TIMELINE_TILE,
                    max_tile=config.max_tile_size,
                )
            if config.class_means and labels is not None and summary.num_classes:
                means, present = metrics.class_mean_maps(latest, labels, summary.num_classes)
                means = (
                    means[present]
                    if means.dim() == 3
                    else at_slices(means[present], peak_slices(means[present]))
                )
                names = [config.class_name(c) for c in range(summary.num_classes) if bool(present[c])]
                label = "mean map" if shown.dim() == 4 else "mean map\n(peak slice)"
                images[f"{config.name}/{method}/class_means"] = render_table(
                    apply_colormap(means, config.colormap)[None],
                    names,
                    [f"{method}\n{label}"],
                    max_tile=config.max_tile_size,
                )
        return images

    def _publish_images(self, images: Mapping[str, Grid], step: int) -> None:
        for tag, grid in images.items():
            self.record.add_image(tag, grid, step)
            self._each_writer(lambda writer, tag=tag, grid=grid: partial(writer.log_grid, tag, grid, step))

    def publish_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Scalars through each logger's ``log_metrics``, on the training thread (they are small)."""
        self.record.add_scalars(scalars, step)
        for writer in self.writers or []:
            with self.faults.guard(f"writer {type(writer).__name__}"):
                writer.log_metrics(dict(scalars), step)

    def publish_report(self, tag: str, report: Report, step: int) -> None:
        """A table (TensorBoard text, W&B table, Markdown file), printed too."""
        title = tag.rsplit("/", 1)[-1].replace("_", " ")
        rank_zero_info(f"CAMMonitor {title} ({tag}):\n{report.brief()}")
        self.record.tables[tag] = report
        self._each_writer(
            lambda writer: partial(writer.log_report, tag, report.columns, report.rows, report.text, step)
        )

    def publish_audit(self, result: AuditResult, step: int) -> None:
        """The audit's scalars, its table and readings, and its mean maps (a row per method, a column per
        class and group)."""
        root = self.config.audit_root
        self.publish_scalars(result.scalars(root), step)
        self.publish_report(f"{root}/table", result.report(), step)
        shown = {
            m: maps if maps.dim() == 3 else at_slices(maps, peak_slices(maps))
            for m, maps in result.mean_maps.items()
        }
        tiles = torch.stack([apply_colormap(maps, self.config.colormap) for maps in shown.values()])
        label = (
            "mean map"
            if all(maps.dim() == 3 for maps in result.mean_maps.values())
            else "mean map\n(peak slice)"
        )
        captions = [f"{method}\n{label}" for method in result.mean_maps]
        grid = render_table(tiles, result.map_slices, captions, max_tile=self.config.max_tile_size)
        self._publish_images({f"{root}/mean_maps": grid}, step)
        if result.strategies:
            self.publish_report(f"{root}/strategies", strategy_report(result.strategies), step)
            shown = sorted(result.strategies, key=strategy_rank)
            self._publish_images({f"{root}/strategies/prototypes": self._prototypes(shown)}, step)

    def _prototypes(self, strategies: list[Strategy]) -> Grid:
        """A row per strategy (flagged first, then by evidence, at most 8): its prototypes with its region
        outlined."""
        shown = strategies[:PROTOTYPE_ROWS]  # strategy_report's order
        captions = [
            f"{s.class_name} #{s.number}\n{s.size} images\nevidence {s.evidence:.2f}"
            + ("\nshortcut suspect" if s.flagged else "")
            for s in shown
        ]
        return self._outlined_rows([s.prototype_images for s in shown], [s.region for s in shown], captions)

    def publish_suspects(self, history: SuspectHistory, step: int) -> None:
        """The run's shortcut suspects so far (``<audit root>/strategies/run``: first and last seen, still
        flagged?) and their prototypes when last flagged (``.../run_prototypes``)."""
        root = self.config.audit_root
        self.publish_report(f"{root}/strategies/run", history.report(), step)
        suspects = history.suspects[:PROTOTYPE_ROWS]
        if suspects:
            captions = [
                f"{s.class_name}\nepochs {s.seen[0][0]}-{s.seen[-1][0]}"
                + ("\nstill flagged" if history.still_flagged(s) else "\nnot flagged now")
                for s in suspects
            ]
            grid = self._outlined_rows(
                [s.prototype_images for s in suspects], [s.region for s in suspects], captions
            )
            self._publish_images({f"{root}/strategies/run_prototypes": grid}, step)

    def _outlined_rows(self, images: list[Tensor], regions: list[Tensor], captions: list[str]) -> Grid:
        """A row per entry: its images (blank tiles fill short rows) with its region outlined."""
        config, count = self.config, max(len(row) for row in images)
        tiles = []
        for row in images:
            shown = display_images(row, config.image_mean, config.image_std, config.display_channel)
            tiles.append(torch.cat([shown, torch.ones(count - len(shown), *shown.shape[1:])]))
        columns = [f"prototype {i + 1}" for i in range(count)]
        outlined = outline(torch.stack(tiles), torch.stack(regions))
        return render_table(outlined, columns, captions, max_tile=config.max_tile_size)

    def publish_summary(self, summary: dict[str, object], step: int) -> None:
        """The run's summary (model, layer, methods, ...) for the page, logged as text so that a rebuilt page has it."""
        self.record.summary = summary
        text = summary_text(summary)
        tag = f"{self.config.name}/{SUMMARY_TAG}"
        self._each_writer(lambda writer: partial(writer.log_report, tag, ["summary"], [[text]], text, step))

    def publish_page(self, log_dir: str | Path, step: int) -> Path | None:
        """Write the audit page (``<log_dir>/cam_report.html``) when due and hand its path to every writer."""
        if not self.config.report_due(self.record.tables):
            return None
        directory = self.writers[0].page_dir(Path(log_dir)) if self.writers else Path(log_dir)
        path = write_report(self.record, directory / REPORT_FILE, "Written by CAMMonitor at the end of fit.")
        rank_zero_info(f"CAMMonitor: the audit page is {path}")
        tag = f"{self.config.name}/{FILE_TAG}"
        self._each_writer(lambda writer: partial(writer.log_file, tag, path, step))
        return path

    def publish_problems(self, messages: list[str], step: int) -> None:
        """What went wrong so far (``<name>/problems``: one row per warning), when it grew since last time."""
        tag = f"{self.config.name}/{PROBLEMS_TAG}"
        if len(messages) == len(self.record.tables.get(tag, Report([], [], [])).rows):
            return
        rows: list[list[object]] = [[message.replace("|", "/")] for message in messages]
        report = Report(["what went wrong"], rows, [])
        self.record.tables[tag] = report
        self._each_writer(
            lambda writer: partial(writer.log_report, tag, report.columns, rows, report.text, step)
        )

    def publish_text(self, tag: str, text: str, step: int) -> None:
        """A line of text (an alert), through each writer's report channel."""
        self.record.tables[tag] = table_of_text(text)
        self._each_writer(lambda writer: partial(writer.log_report, tag, ["message"], [[text]], text, step))

    def _each_writer(self, job_for: Callable[[Writer], Callable[[], None]]) -> None:
        for writer in self.writers or []:
            what = f"writer {type(writer).__name__}"
            if self.config.background_writes and not self.faults.strict:
                self._background.submit(what, job_for(writer))
            else:
                with self.faults.guard(what):
                    job_for(writer)()

    def take_errors(self) -> None:
        """Report the errors of the background writes so far."""
        for what, error in self._background.take_errors():
            self.faults.report(what, error)

    def flush(self) -> None:
        """Wait until everything submitted so far is written; report its errors."""
        for what, error in self._background.drain():
            self.faults.report(what, error)

    def close(self) -> None:
        """Flush, then stop the background thread."""
        for what, error in self._background.close():
            self.faults.report(what, error)
