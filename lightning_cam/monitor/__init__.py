"""CAMMonitor and its pipeline: the Lightning callback that explains a fixed batch during ``fit``.

It owns the options (:mod:`.config`), the capture of the fixed samples (:mod:`.sampling`), one check
(:mod:`.check`: network + fixed batch -> maps, captions, scalars), what persists between checks
(:mod:`.history`), the task of a head (:mod:`.tasks`), alerts (:mod:`.alerts`), fault handling
(:mod:`.faults`), publishing to the writers (:mod:`.publish`), what is read from and written to the
Trainer (:mod:`.trainer_io`), the audit inside ``fit`` (:mod:`.fit_audit`), the shortcut suspects over
a run (:mod:`.suspects`) and the callback itself (:mod:`.callback`); besides the monitor, the page of an
audit made outside ``fit`` (:mod:`.audit_page`, ``lc.audit_report``) and ``lightning-cam audit``
(:mod:`.checkpoint_audit`: LightningCLI and a Trainer with an ``audit`` entry point), which reuse its
publisher. It may import every other wing (engine, metrics, auditing, report, writers) and
Lightning; no other wing imports it (``demo`` uses the callback).
"""

from lightning_cam.monitor.callback import CAMMonitor

__all__ = ["CAMMonitor"]
