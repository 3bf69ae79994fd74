"""Logger plugins: one adapter per Lightning logger type, chosen through a registry users can extend.

It may import Lightning's logger classes and the report's :class:`~lightning_cam.report.grids.Grid`;
the optional packages (tensorboard, wandb, mlflow) are imported only when their writer writes.
"""

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from lightning_cam.writers.base import PNGWriter, Writer, WriterFactory, register_writer, writer_for
from lightning_cam.writers.mlflow import MLflowWriter
from lightning_cam.writers.tensorboard import TensorBoardWriter
from lightning_cam.writers.wandb import WandbWriter

register_writer(TensorBoardLogger, TensorBoardWriter)
register_writer(WandbLogger, WandbWriter)
register_writer(MLFlowLogger, MLflowWriter)

__all__ = [
    "MLflowWriter",
    "PNGWriter",
    "TensorBoardWriter",
    "WandbWriter",
    "Writer",
    "WriterFactory",
    "register_writer",
    "writer_for",
]
