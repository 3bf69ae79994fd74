"""lightning-cam: explain a model while it trains.

``explain()`` computes class-activation maps in one guarded pass over any ``nn.Module``;
``CAMMonitor`` is the Lightning callback that logs them during ``trainer.fit``. Importing the
package does not import Lightning (nor torchmetrics): ``CAMMonitor``, ``Writer``, ``register_writer``
and the full audit (``audit``, ``AuditResult``, ``audit_report``: its page) are loaded the first time
they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_cam import metrics, targets
from lightning_cam.engine import METHODS, Explanation, explain, explain_batch

if TYPE_CHECKING:
    from lightning_cam.auditing import AuditResult, audit
    from lightning_cam.monitor import CAMMonitor
    from lightning_cam.monitor.audit_page import audit_report
    from lightning_cam.writers import Writer, register_writer

__all__ = [
    "METHODS",
    "AuditResult",
    "CAMMonitor",
    "Explanation",
    "Writer",
    "audit",
    "audit_report",
    "explain",
    "explain_batch",
    "metrics",
    "register_writer",
    "targets",
]
__version__ = "0.1.0"

_LAZY = {
    "AuditResult": "lightning_cam.auditing",
    "audit": "lightning_cam.auditing",
    "audit_report": "lightning_cam.monitor.audit_page",
    "CAMMonitor": "lightning_cam.monitor",
    "Writer": "lightning_cam.writers",
    "register_writer": "lightning_cam.writers",
}


def __getattr__(name: str) -> Any:
    """Load the Lightning-side names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_cam' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
