"""The full audit inside ``fit``: the validation loader the trainer uses (already sharded by
Lightning under DDP), the monitor's options, and the figures put where Lightning and the loggers see
them. Called on every rank at the same point (it is collective)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_cam.auditing import AuditResult, audit
from lightning_cam.monitor.config import MonitorConfig

__all__ = ["audit_in_fit", "validation_loader"]


def validation_loader(trainer: pl.Trainer, index: int) -> Any:
    """The trainer's validation dataloader number ``index``; ``ValueError`` naming the way out when
    there is none."""
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[index] if index < len(loaders) else None
    elif isinstance(loaders, dict):
        loaders = list(loaders.values())[index] if index < len(loaders) else None
    if loaders is None:
        raise ValueError(
            f"CAMMonitor(audit=True) explains the validation dataloader {index} (audit_dataloader_idx), but the "
            "trainer has none: give fit() val_dataloaders, or call lightning_cam.audit(model, loader) yourself."
        )
    return loaders


def audit_in_fit(trainer: pl.Trainer, network: nn.Module, config: MonitorConfig) -> AuditResult:
    """Audit the validation set with the monitor's methods, layer, first target and batch reading; the
    scalars go into ``trainer.callback_metrics`` on every rank (every rank computes the same figures)."""
    choice = config.targets[0]
    result = audit(
        network,
        validation_loader(
            trainer,
            config.dataloader_idx if config.audit_dataloader_idx is None else config.audit_dataloader_idx,
        ),
        config.methods,
        config.target_layer,
        choice,
        config.unpack,  # type: ignore[arg-type]
        config.group_names,
        config.class_names,
        keys={
            "image": config.image_key,
            "label": config.label_key,
            "mask": config.mask_key,
            "group": config.group_key,
        },
        output_key=config.output_key,
        reshape_transform=config.reshape_transform,
        method_options=config.method_options,
        bootstrap_samples=config.audit_bootstrap_samples,
        progress=trainer.progress_bar_callback is not None,
        strategies=config.strategies,
        detection_score_threshold=config.detection_score_threshold,
    )
    trainer.callback_metrics.update(
        {
            tag: torch.tensor(value, dtype=torch.float32)
            for tag, value in result.scalars(config.audit_root).items()
        }
    )
    return result
