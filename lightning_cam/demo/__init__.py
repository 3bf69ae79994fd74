"""The procedural shortcut datasets (shapes, volumes), the demo models and ``lightning-cam demo``.

It may import Lightning and the monitor (the callback it demonstrates), and timm for the ViT demo.
"""

from lightning_cam.demo.data import CLASS_NAMES, ShapesConfig, ShapesDataset, make_shapes
from lightning_cam.demo.model import ShapesClassifier, ShapesDataModule, SmallCNN
from lightning_cam.demo.run import DemoResult, run_demo

__all__ = [
    "CLASS_NAMES",
    "DemoResult",
    "ShapesClassifier",
    "ShapesConfig",
    "ShapesDataModule",
    "ShapesDataset",
    "SmallCNN",
    "make_shapes",
    "run_demo",
]
