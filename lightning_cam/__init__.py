"""lightning-cam: explain a model while it trains.

``explain()`` computes class-activation maps in one guarded pass over any ``nn.Module``;
``CAMMonitor`` is the Lightning callback that logs them during ``trainer.fit``.
"""

from lightning_cam.engine import METHODS, explain

__all__ = ["METHODS", "explain"]
__version__ = "0.1.0"
