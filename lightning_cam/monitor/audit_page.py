"""The audit page of an :class:`~lightning_cam.AuditResult` made outside ``fit`` (``lightning-cam audit``,
or ``lightning_cam.audit()`` from Python): the same tables, mean maps, strategies and prototypes the
monitor publishes at an audit, drawn by the same :class:`~.publish.Publisher` (with no logger attached)
into a :class:`~lightning_cam.report.RunRecord`, and written as the same self-contained page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_cam.auditing import AuditResult
from lightning_cam.monitor.config import MonitorConfig
from lightning_cam.monitor.faults import Faults
from lightning_cam.monitor.publish import Publisher
from lightning_cam.report import write_report
from lightning_cam.report.record import AUDITED_KEY

__all__ = ["audit_report"]


def audit_report(
    result: AuditResult,
    path: str | Path,
    model_name: str = "a model",
    methods: Sequence[str] | None = None,
    targets: str | int = "label",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    details: Mapping[str, object] | None = None,
    source: str = "An audit of a trained model by `lightning_cam.audit` (no training run).",
) -> Path:
    """Write the audit page of ``result`` to ``path`` (an ``.html`` file) and return its path.

    ``methods``: the audit's methods (default: those of its mean maps); ``targets`` as given to
    ``audit``; ``image_mean`` / ``image_std``: the normalisation to undo when the prototypes are drawn;
    ``details``: further rows of the page's "Run" table (e.g. the checkpoint audited); ``source``: the
    line under the page's title.

    Example::

        >>> import lightning_cam as lc
        >>> result = lc.audit(model, val_loader, "gradcam", strategies=True)  # doctest: +SKIP
        >>> lc.audit_report(result, "audit/cam_report.html", model_name="ResNet-18")  # doctest: +SKIP
        PosixPath('audit/cam_report.html')
    """
    shown = list(methods or result.mean_maps)
    config = MonitorConfig(
        methods=shown, targets=targets, image_mean=image_mean, image_std=image_std, audit=True
    )
    publisher = Publisher(config, Faults(strict=True))
    publisher.publish_audit(result, step=0)
    publisher.record.summary = {
        "model": model_name,
        "target_layer": ", ".join(result.target_layers) or "none (attention methods)",
        "methods": shown,
        "targets": [config.target_name(choice) for choice in config.targets],
        AUDITED_KEY: len(result.rows["index"]),
        **dict(details or {}),
    }
    return write_report(publisher.record, path, source)
