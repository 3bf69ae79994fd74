"""lightning-cam: explain a model while it trains.

``explain()`` computes class-activation maps in one guarded pass over any ``nn.Module``;
``CAMMonitor`` is the Lightning callback that logs them during ``trainer.fit``.
"""

from lightning_cam.callback import CAMMonitor
from lightning_cam.engine import METHODS, Explanation, explain, explain_batch
from lightning_cam.writers import Writer, register_writer

__all__ = ["METHODS", "CAMMonitor", "Explanation", "Writer", "explain", "explain_batch", "register_writer"]
__version__ = "0.1.0"
