"""The full audit: every image of a dataloader explained (each rank its shard, each image once),
figures per class and group with bootstrap intervals, and mean maps (:func:`audit`).

It owns sharding, the padded-copy drop and the ranks' agreement (:mod:`.shards`), the per-image rows
(:mod:`.rows`), the pure aggregates (:mod:`.aggregate`), the audit table (:mod:`.table`), the strategies
(clustering the maps, :mod:`.spray`; regions and tests on the model, :mod:`.strategies`) and the run
itself (:mod:`.run`). It may
import the engine, the metrics, the report's text tables, :mod:`lightning_cam.batches` and torchmetrics;
never Lightning nor the monitor (the monitor calls it inside ``fit``).
"""

from lightning_cam.auditing.aggregate import Figure
from lightning_cam.auditing.run import AuditResult, audit
from lightning_cam.auditing.shards import OtherRankError
from lightning_cam.auditing.strategies import Strategy

__all__ = ["AuditResult", "Figure", "OtherRankError", "Strategy", "audit"]
