"""The full audit: every image of a dataloader explained (each rank its shard, each image once),
figures per class and group with bootstrap intervals, and mean maps (:func:`audit`)."""

from lightning_cam.auditing.aggregate import Figure
from lightning_cam.auditing.run import AuditResult, audit

__all__ = ["AuditResult", "Figure", "audit"]
