"""The full audit: every image of a dataloader explained (each rank its shard, each image once),
figures per class and group with bootstrap intervals, and mean maps (:func:`audit`).

It owns sharding and the padded-copy drop (:mod:`.shards`), the per-image rows (:mod:`.rows`), the pure
aggregates (:mod:`.aggregate`), the audit table (:mod:`.table`) and the run itself (:mod:`.run`). It may
import the engine, the metrics, the report's text tables, :mod:`lightning_cam.batches` and torchmetrics;
never Lightning nor the monitor (the monitor calls it inside ``fit``).
"""

from lightning_cam.auditing.aggregate import Figure
from lightning_cam.auditing.run import AuditResult, audit

__all__ = ["AuditResult", "Figure", "audit"]
