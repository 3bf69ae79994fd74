"""What CAMMonitor reads from the Trainer and writes back to it: the network to explain, the precision,
the strategy, the checks that would never run, and the scalars shared with every rank."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_cam.auditing.shards import OtherRankError, exchange, sharded
from lightning_cam.batches import FixedBatch
from lightning_cam.engine import needs_target_layer, resolve_methods
from lightning_cam.engine.capture import preserved_state
from lightning_cam.engine.layers import resolve_target_layers
from lightning_cam.monitor.alerts import crossed_alerts
from lightning_cam.monitor.config import MonitorConfig
from lightning_cam.monitor.faults import Faults
from lightning_cam.monitor.publish import Publisher

__all__ = [
    "autocast_dtype",
    "check_strategy",
    "collective_checks",
    "explained_network",
    "no_check_message",
    "raise_alerts",
    "run_summary",
    "share_fixed",
    "share_scalars",
    "warn_if_silent",
]

COLLECTIVE = ("FSDP", "ModelParallel")  # sharded parameters: every rank takes part in each check


def collective_checks(trainer: pl.Trainer) -> bool:
    """Whether the strategy shards the parameters (FSDP2's ``ModelParallelStrategy``, ``FSDPStrategy``): a
    forward then needs every rank, so every rank runs each check on rank 0's fixed batch."""
    return any(name in type(trainer.strategy).__name__ for name in COLLECTIVE)


def check_strategy(trainer: pl.Trainer, config: MonitorConfig, faults: Faults) -> None:
    """Refuse what the checks cannot follow (DeepSpeed; tensor parallelism, whose layers' outputs are
    shards of the channels); under a sharded strategy turn off the sanity check (a randomised copy of
    a sharded model would need its shards re-initialised alike on every rank), saying so."""
    strategy = type(trainer.strategy).__name__
    if "DeepSpeed" in strategy:
        raise MisconfigurationException(
            f"CAMMonitor does not support {strategy}: its engine owns the forward and shards parameters in its "
            "own way. Use Lightning's ModelParallelStrategy (FSDP2: torch.distributed.fsdp.fully_shard in "
            "configure_model), FSDPStrategy, or 'ddp'."
        )
    mesh = _device_mesh(trainer.strategy) if "ModelParallel" in strategy else None
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if mesh is not None and "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise MisconfigurationException(
            "CAMMonitor does not support tensor parallelism (tensor_parallel_size > 1): a layer's output is a "
            "shard of its channels on each rank, not the map's input. Shard with data_parallel_size only "
            "(FSDP2), or explain a copy of the trained model with lightning_cam.explain."
        )
    if collective_checks(trainer) and config.sanity_every_n_checks is not None:
        faults.warn_once(
            "sharded sanity",
            f"CAMMonitor: sanity_every_n_checks is turned off under {strategy}: the randomised copy of a sharded "
            "model would need its shards re-initialised alike on every rank. Run metrics.model_randomization "
            "on a gathered copy after training instead.",
        )
        config.sanity_every_n_checks = None


def _device_mesh(strategy: Any) -> Any:
    """A ModelParallelStrategy's device mesh, ``None`` before it is set up."""
    try:
        return strategy.device_mesh
    except (AttributeError, RuntimeError):
        return None


def share_fixed(trainer: pl.Trainer, fixed: FixedBatch | None) -> FixedBatch | None:
    """Rank 0's fixed batch on every rank (called on every rank at the same check)."""
    return trainer.strategy.broadcast(None if fixed is None else fixed.to("cpu"), src=0)


def explained_network(
    pl_module: pl.LightningModule, config: MonitorConfig, faults: Faults, at_setup: bool = False
) -> nn.Module:
    """The module to explain: the LightningModule, or its ``model_attr`` submodule (a compiled one's
    eager module). ``at_setup``: also warn about compiled submodules and check the layer names now."""
    network: nn.Module = pl_module
    if config.model_attr is not None:
        network = getattr(pl_module, config.model_attr, None)
        if not isinstance(network, nn.Module):
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise MisconfigurationException(
                f"CAMMonitor(model_attr={config.model_attr!r}): {type(pl_module).__name__} has no such "
                f"submodule; its submodules are: {children}."
            )
        network = getattr(network, "_orig_mod", network)  # explain a torch.compile'd network eagerly
    if at_setup:
        _check_network(network, config, faults)
    return network


def _check_network(network: nn.Module, config: MonitorConfig, faults: Faults) -> None:
    compiled = [name for name, module in network.named_modules() if hasattr(module, "_orig_mod")]
    if compiled:
        faults.warn_once(
            "compiled",
            f"CAMMonitor: {', '.join(compiled)} is torch.compile'd; pass model_attr={compiled[0]!r} so that "
            f"the eager module is explained (hooks on a compiled module's layers make it recompile).",
        )
    names = [config.target_layer] if isinstance(config.target_layer, str) else config.target_layer
    named = [name for name in names if name != "auto"]
    if named:  # a misspelt layer name fails here, before training starts, not at the first check
        resolve_target_layers(
            network, named, sample=torch.empty(0), reshape_transform=config.reshape_transform
        )


def run_summary(
    pl_module: pl.LightningModule,
    network: nn.Module,
    fixed: FixedBatch,
    config: MonitorConfig,
    layers: list[str] | None = None,
) -> dict[str, object]:
    """What the audit page says about the run: model, the layer explained (``"auto"`` resolved: the
    check's ``layers``, else found with one forward, never under a sharded strategy, whose forward needs
    every rank), methods, targets, samples and alert rules."""
    model = type(pl_module).__name__
    if network is not pl_module:
        model += f" ({config.model_attr}: {type(network).__name__})"
    layer, wanted = "none (attention methods)", needs_target_layer(resolve_methods(config.methods))
    if wanted and layers:
        layer = ", ".join(layers)
    elif wanted and sharded(network):
        layer = "unknown (no check explained a layer)"
    elif wanted:
        with preserved_state(network, fixed.images.device.type):
            layers = resolve_target_layers(
                network, config.target_layer, fixed.images[:1], config.reshape_transform, config.output_key
            )
        layer = ", ".join(name for name, _ in layers)
    return {
        "model": model,
        "target_layer": layer,
        "methods": list(config.methods),
        "targets": [config.target_name(choice) for choice in config.targets],
        "num_samples": len(fixed.images),
        "alerts": {
            rule.tag: (">" if rule.above else "<") + f"{rule.threshold:g}" for rule in config.alert_rules
        },
    }


def autocast_dtype(trainer: pl.Trainer, config: MonitorConfig) -> torch.dtype | None:
    """The trainer's mixed-precision dtype when ``perturbation_autocast`` is on, else ``None``."""
    if not config.perturbation_autocast:
        return None
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(trainer.precision))


def share_scalars(
    trainer: pl.Trainer,
    scalars: Mapping[str, float],
    failure: BaseException | None = None,
    every_rank: bool = False,
) -> dict[str, float]:
    """Rank 0's scalars on every rank (one small broadcast under DDP, which every rank calls at the
    same check), put in ``trainer.callback_metrics`` for ``EarlyStopping`` and ``ModelCheckpoint``.

    ``failure``: this rank's check raised (only when strict). The exchange still happens, so that every
    rank raises at this check (the failed rank its own error, the others :class:`OtherRankError`)
    instead of the others waiting in a collective that never comes. ``every_rank``: every rank ran the
    check (a sharded strategy), so any rank's failure is gathered; else rank 0's alone."""
    message = None if failure is None else f"{type(failure).__name__}: {failure}"
    failed: list[tuple[int, str]] = []
    if trainer.world_size > 1:
        scalars, first = trainer.strategy.broadcast((dict(scalars), message), src=0)
        messages = exchange(message) if every_rank else [first]
        failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if failure is not None:
        raise failure
    if failed:
        listed = "; ".join(f"rank {rank}: {text}" for rank, text in failed)
        raise OtherRankError(f"CAMMonitor's check failed on {listed}. Every rank stops here.")
    shared = dict(scalars)
    trainer.callback_metrics.update(
        {tag: torch.tensor(value, dtype=torch.float32) for tag, value in shared.items()}
    )
    return shared


def warn_if_silent(trainer: pl.Trainer, pl_module: pl.LightningModule, monitor: Any, stage: str) -> None:
    """Warn once when this monitor would log nothing, or the same tags as another monitor."""
    config: MonitorConfig = monitor.config
    stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn (a str enum)
    if stage != "fit":
        rank_zero_warn(
            f"CAMMonitor explains during trainer.fit only: trainer.{stage}() logs nothing from it. To explain a "
            f"trained model, call lightning_cam.explain(model, images), or attach CAMMonitor to trainer.fit."
        )
        return
    reason = _why_no_validation_check(trainer, pl_module, config)
    if reason:
        rank_zero_warn(
            f"CAMMonitor(every_n_epochs={config.every_n_epochs}) will never check: {reason}. Use "
            f"every_n_train_steps=N instead (the images are then taken from the training batches)."
        )
    same = [
        cb
        for cb in trainer.callbacks
        if getattr(cb, "config", None) is not None and type(cb) is type(monitor)
    ]
    same = [cb for cb in same if cb.config.name == config.name]
    if len(same) > 1 and same[-1] is monitor:
        rank_zero_warn(
            f"{len(same)} CAMMonitors log under the same tags '{config.name}/...' and overwrite each other; give "
            f"each its own name, e.g. CAMMonitor(name='{config.name}_2')."
        )


def no_check_message(trainer: pl.Trainer, pl_module: pl.LightningModule, config: MonitorConfig) -> str | None:
    """At the end of a fit in which no check ran, why, unless ``setup`` already said it; else ``None``."""
    if _why_no_validation_check(trainer, pl_module, config):
        return None  # warned at setup
    if config.every_n_train_steps is not None:
        why = f"every_n_train_steps={config.every_n_train_steps} but the fit trained {trainer.global_step} steps"
    elif not sum(trainer.num_val_batches or [0]):
        why = "the validation dataloader yielded no batch (an empty dataset, or a sampler or limit that leaves none)"
    else:
        why = "no validation epoch reached it"
    return f"CAMMonitor made no check in this fit: {why}. Nothing was explained or logged by it."


def _why_no_validation_check(
    trainer: pl.Trainer, pl_module: pl.LightningModule, config: MonitorConfig
) -> str:
    if config.every_n_epochs is None:
        return ""
    if trainer.limit_val_batches == 0:
        return "limit_val_batches=0 turns validation off"
    if not is_overridden("validation_step", pl_module):
        return f"{type(pl_module).__name__} has no validation_step, so no validation epoch runs"
    epochs = trainer.max_epochs
    every = config.every_n_epochs * (trainer.check_val_every_n_epoch or 1)
    if epochs is not None and 0 < epochs < every:
        return f"the first check would come after epoch {every} but max_epochs={epochs}"
    return ""


def raise_alerts(
    trainer: pl.Trainer,
    config: MonitorConfig,
    scalars: Mapping[str, float],
    fired: set[str],
    publisher: Publisher,
) -> None:
    """Warn once per crossed alert (every rank sees the same scalars, so every rank stops together when
    ``stop_on_alert``); rank 0 also logs it as text."""
    for event in crossed_alerts(config.alert_rules, scalars, trainer.global_step, fired):
        message = event.message(config.grid_tag_for(event.alert.tag))
        rank_zero_warn(message + (" Stopping training (stop_on_alert=True)." if config.stop_on_alert else ""))
        if trainer.is_global_zero:
            publisher.publish_text(f"{config.name}/alerts", message, event.step)
        trainer.should_stop = trainer.should_stop or config.stop_on_alert
