"""CAMMonitor: explain a fixed set of validation images during ``trainer.fit`` and log the grids."""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_cam import metrics
from lightning_cam.batch import FixedBatch, SampleBuffer, Unpacked, unpack_batch
from lightning_cam.engine import Explanation, OutputKey, explain_batch, resolve_methods, resolve_options
from lightning_cam.history import AttentionHistory
from lightning_cam.layers import TargetLayer, resolve_target_layers
from lightning_cam.render import COLORMAPS, Grid, apply_colormap, display_images, render_grid, render_table
from lightning_cam.writers import PNGWriter, Writer, writer_for
from lightning_cam.writers.background import BackgroundWriter

__all__ = ["CAMMonitor"]

TargetChoice = str | int
TIMELINE_TILE = 64  # timelines are wide: their tiles are enlarged less than the grid's


def _import_object(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted import path such as 'my_package.data.unpack_batch'.")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from error


def _check_positive_int(name: str, value: object, error: type[Exception] = ValueError) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"CAMMonitor: {name} must be a positive integer; got {value!r}.")


def _check_targets(targets: TargetChoice | Sequence[TargetChoice]) -> list[TargetChoice]:
    choices = [targets] if isinstance(targets, (str, int)) else list(targets)
    if not choices:
        raise ValueError("targets is empty; use 'predicted', 'label', a class index, or a list of these.")
    for choice in choices:
        if isinstance(choice, bool) or not (
            choice in ("predicted", "label") or (isinstance(choice, int) and choice >= 0)
        ):
            raise ValueError(
                f"invalid target {choice!r}: use 'predicted', 'label', a class index >= 0, or a list of these."
            )
    return choices


class CAMMonitor(Callback):
    r"""Explain a fixed set of validation images while the model trains, and log the maps.

    At every check, the callback runs the chosen class-activation-map methods on the same
    ``num_samples`` images, on the training device and in one guarded pass per target choice
    (the model's mode, gradients, BatchNorm statistics and RNG states are left as they were),
    and logs a grid per target choice: a row per sample (true label, prediction and confidence
    written on it), the input then one overlay per method. Grids go to every attached logger
    through a writer chosen by its type (TensorBoard, W&B, MLflow; PNG files under the log
    directory for any other logger or none). Only global rank 0 computes and writes.

    What is logged at each check, at ``trainer.global_step`` (``<target>`` is the target choice;
    scalars of a second or later target choice get ``cam/<target>/...`` instead of ``cam/...``):

    - images: ``cam/<target>/grid``; for the first target choice, every ``summary_every_n_checks``
      checks and after the last one, ``cam/<method>/timeline`` (each sample's maps at the last
      ``timeline_length`` checks) and ``cam/<method>/class_means`` (the mean map of each class's
      samples: a fixed-position shortcut shows as a bright spot);
    - scalars: ``cam/check_seconds`` (the whole check), ``cam/pass_seconds`` (the shared forward and
      gradients) and ``cam/<method>/seconds`` (each method's own work); ``cam/<method>/drift`` (``1 - pearson`` against the previous
      check); ``cam/<method>/average_drop`` and ``cam/<method>/increase_in_confidence``; and, when
      the batch carries masks, ``cam/<method>/mass/<mask>``, ``cam/<method>/enrichment/<mask>`` and
      ``cam/<method>/pointing_game/<mask>`` (see ``lightning_cam.metrics``);
    - at the end of ``fit``, a bias report (mass and enrichment per method and mask, first and
      last check), printed and logged as ``cam/bias_report`` (TensorBoard text, W&B table).

    The images are captured from the batches the validation loop already loads (no extra pass
    over the data, no random numbers drawn, nothing in the sanity check), balanced over classes
    where labels are known, and saved in the checkpoint, so a resumed run explains the same images.

    Args:
        methods: method names from ``lightning_cam.METHODS``.
        target_layer: ``"auto"``, a dotted module name (``"layer4"``), or a list of names.
        num_samples: how many images to explain.
        targets: ``"predicted"``, ``"label"``, a class index, or a list of these; each gets its own grid.
        every_n_epochs: check at the end of every n-th validation epoch (default 1 unless
            ``every_n_train_steps`` is set).
        every_n_train_steps: check every n optimizer steps instead. With validation disabled the
            images are captured from the first training batches.
        class_names: names of the classes, in index order, for the labels on the grid.
        image_mean: per-channel mean of the input normalisation, undone for display.
        image_std: per-channel std of the input normalisation, undone for display.
        colormap: one of ``lightning_cam.render.COLORMAPS`` (``jet``, ``turbo``, ``viridis``, ``inferno``, ``gray``).
        alpha: weight of the heatmap in the overlay, in ``[0, 1]``.
        unpack: a function (or its dotted import path) from a batch to ``(images, labels, masks)``,
            for batches that are not ``(x, y[, masks])`` tuples or dicts.
        image_key: the images' key in dict batches.
        label_key: the labels' key in dict batches.
        mask_key: the masks' key in dict batches (``"masks"`` is also read).
        dataloader_idx: which validation dataloader to take the images from.
        model_attr: the attribute of the LightningModule holding the network to explain (for
            example ``"net"``); ``None`` calls the LightningModule itself.
        output_key: where the logits are when the model returns a tuple or a dict (an index or a key).
        method_options: options per method, e.g. ``{"scorecam": {"topk": 64, "chunk_size": 256}}``
            (see ``lightning_cam.explain``).
        perturbation_autocast: run Score-CAM's and Ablation-CAM's forwards under the trainer's
            mixed precision (``bf16-mixed`` or ``16-mixed``) for speed; maps stay float32.
        confidence_metrics: log average drop and increase in confidence (one extra batched
            forward of the masked images per check, all methods together).
        timeline_length: how many checks the timeline image shows per sample (0: no timeline).
        class_means: log the per-class mean map of each method (needs labels).
        bias_report: at the end of ``fit``, print and log mass and enrichment per method and mask
            at the first and last check (needs masks in the batch).
        summary_every_n_checks: log the timelines and per-class mean maps every n checks (and
            after the last check of ``fit``); the method grids are logged at every check.
        background_writes: encode and write the images on a background thread, so a check costs
            the training loop only the explaining and the drawing (the end of ``fit`` waits for them).
        strict: raise on any failure instead of reporting it and carrying on (for tests).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_cam import CAMMonitor
        >>> monitor = CAMMonitor(methods=["gradcam", "layercam"], num_samples=8, every_n_epochs=2)
        >>> trainer = Trainer(callbacks=[monitor], max_epochs=10)  # doctest: +SKIP

    In a LightningCLI YAML::

        trainer:
          callbacks:
            - class_path: lightning_cam.CAMMonitor
              init_args:
                methods: [gradcam, gradcam++]
                num_samples: 16
    """

    def __init__(
        self,
        methods: Sequence[str] = ("gradcam", "gradcam++"),
        target_layer: str | Sequence[str] = "auto",
        num_samples: int = 16,
        targets: TargetChoice | Sequence[TargetChoice] = "predicted",
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        class_names: Sequence[str] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        colormap: str = "jet",
        alpha: float = 0.5,
        unpack: str | Callable[[Any], Unpacked] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "mask",
        dataloader_idx: int = 0,
        model_attr: str | None = None,
        output_key: int | str | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
        perturbation_autocast: bool = False,
        confidence_metrics: bool = True,
        timeline_length: int = 8,
        class_means: bool = True,
        bias_report: bool = True,
        summary_every_n_checks: int = 4,
        background_writes: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.methods = [method.name for method in resolve_methods(methods)]
        self.target_layer: TargetLayer = target_layer if isinstance(target_layer, str) else list(target_layer)
        _check_positive_int("num_samples", num_samples)
        self.num_samples = num_samples
        self.targets = _check_targets(targets)
        if every_n_epochs is not None and every_n_train_steps is not None:
            raise MisconfigurationException(
                "CAMMonitor: set every_n_epochs or every_n_train_steps, not both "
                f"(got every_n_epochs={every_n_epochs}, every_n_train_steps={every_n_train_steps})."
            )
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None:
                _check_positive_int(name, value, MisconfigurationException)
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None or every_n_train_steps else 1
        self.class_names = list(class_names) if class_names is not None else None
        if image_mean is not None and image_std is not None and len(image_mean) != len(image_std):
            raise ValueError(
                f"image_mean and image_std must have one value per channel each; got {len(image_mean)} and "
                f"{len(image_std)}."
            )
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        if colormap not in COLORMAPS:
            raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}.")
        self.colormap = colormap
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"alpha is the heatmap's weight in the overlay and must be in [0, 1]; got {alpha}."
            )
        self.alpha = alpha
        self.unpack = _import_object(unpack) if isinstance(unpack, str) else unpack
        if self.unpack is not None and not callable(self.unpack):
            raise ValueError(f"unpack must be a function batch -> (images, labels, masks); got {unpack!r}.")
        self.image_key, self.label_key, self.mask_key = image_key, label_key, mask_key
        self.dataloader_idx = dataloader_idx
        self.model_attr = model_attr
        self.output_key: OutputKey = output_key
        self.method_options = {name: dict(options) for name, options in (method_options or {}).items()}
        resolve_options(
            resolve_methods(self.methods), method_options=self.method_options
        )  # fail now, not later
        self.perturbation_autocast = perturbation_autocast
        self.confidence_metrics = confidence_metrics
        if not isinstance(timeline_length, int) or timeline_length < 0:
            raise ValueError(
                f"timeline_length must be an integer >= 0 (0 turns the timeline off); got {timeline_length!r}."
            )
        self.timeline_length = timeline_length
        self.class_means = class_means
        self.bias_report = bias_report
        _check_positive_int("summary_every_n_checks", summary_every_n_checks)
        self.summary_every_n_checks = summary_every_n_checks
        self._pending_summary: tuple[Callable[[], dict[str, Grid]], int] | None = None
        self.background_writes = background_writes
        self.strict = strict
        self._background = BackgroundWriter()
        self.history = AttentionHistory(timeline_length)

        self.fixed: FixedBatch | None = None
        self.checks = 0
        self.last_check_step = -1
        self._buffer = SampleBuffer(num_samples)
        self._writers: list[Writer] | None = None
        self._failed: set[str] = set()
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            methods=self.methods, targets=self.targets, num_samples=self.num_samples
        )

    # ----------------------------------------------------------------- Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if any(name in strategy for name in ("FSDP", "DeepSpeed", "ModelParallel")):
            # Rank 0 alone would run a sharded model's forward, whose all-gathers wait for the other
            # ranks: the run would hang. Refuse now rather than hang later.
            raise MisconfigurationException(
                f"CAMMonitor does not support sharded strategies ({strategy}): explaining runs the model "
                f"on global rank 0 alone, and a sharded forward needs every rank. Supported: single device, "
                f"'ddp' (and its spawn/fork variants), 'ddp_notebook', 'dp'."
            )
        network = self._network(pl_module)
        compiled = [name for name, module in network.named_modules() if hasattr(module, "_orig_mod")]
        if compiled:
            self._warn_once(
                "compiled",
                f"CAMMonitor: {', '.join(compiled)} is torch.compile'd; pass model_attr={compiled[0]!r} so that "
                f"the eager module is explained (hooks on a compiled module's layers make it recompile).",
            )
        names = [self.target_layer] if isinstance(self.target_layer, str) else self.target_layer
        named = [name for name in names if name != "auto"]
        if named:  # a misspelt layer name fails here, before training starts, not at the first check
            resolve_target_layers(network, named, sample=torch.empty(0))

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capturing(trainer) and dataloader_idx == self.dataloader_idx:
            self._capture(batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._finish_capture()
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._check(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.every_n_train_steps or not trainer.is_global_zero:
            return
        if self.fixed is None and not trainer.enable_validation:
            self._capture(batch)
            if self._buffer.is_complete(self._num_classes()):
                self._finish_capture()
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0 and step != self.last_check_step:
            if self.fixed is None and self._buffer.size > 0:
                self._finish_capture()
            self._check(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fixed": None if self.fixed is None else self.fixed.state_dict(),
            "checks": self.checks,
            "last_check_step": self.last_check_step,
            "history": self.history.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fixed = state_dict.get("fixed")
        self.fixed = None if fixed is None else FixedBatch(**fixed)
        self.checks = state_dict.get("checks", 0)
        self.last_check_step = state_dict.get("last_check_step", -1)
        self.history.load_state_dict(state_dict.get("history", {}))

    # ----------------------------------------------------------------- capture

    def _capturing(self, trainer: pl.Trainer) -> bool:
        return self.fixed is None and trainer.is_global_zero and not trainer.sanity_checking

    def _num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def _capture(self, batch: Any) -> None:
        if self._buffer.is_complete(self._num_classes()):
            return
        try:
            images, labels, masks = unpack_batch(
                batch, self.unpack, self.image_key, self.label_key, self.mask_key
            )
        except ValueError as error:
            self._fail("batch", error)
            return
        self._buffer.add(images, labels, masks)

    def _finish_capture(self) -> None:
        if self.fixed is not None or self._buffer.size == 0:
            return
        self.fixed = self._buffer.select()
        self._buffer = SampleBuffer(self.num_samples)
        if len(self.fixed.images) < self.num_samples:
            self._warn_once(
                "few",
                f"CAMMonitor: only {len(self.fixed.images)} images were available for num_samples="
                f"{self.num_samples}; explaining those.",
            )

    # ----------------------------------------------------------------- check

    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model_attr is None:
            return pl_module
        network = getattr(pl_module, self.model_attr, None)
        if not isinstance(network, nn.Module):
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise MisconfigurationException(
                f"CAMMonitor(model_attr={self.model_attr!r}): {type(pl_module).__name__} has no such submodule; "
                f"its submodules are: {children}."
            )
        return getattr(network, "_orig_mod", network)  # explain a torch.compile'd network eagerly

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.fixed is None:
            self._warn_once("nothing", "CAMMonitor: no images have been captured yet; this check is skipped.")
            return
        self.last_check_step = trainer.global_step
        self.checks += 1
        for what, error in self._background.take_errors():
            self._fail(what, error)
        start = time.perf_counter()
        scalars: dict[str, float] = {}
        try:
            scalars = self._log_check(trainer, pl_module)
        except Exception as error:
            if self.strict:
                raise
            self._fail("check", error)
        scalars["cam/check_seconds"] = time.perf_counter() - start
        self._log_metrics(trainer, scalars)

    def _log_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        assert self.fixed is not None
        fixed = self.fixed = self.fixed.to(pl_module.device)
        network = self._network(pl_module)
        shown = display_images(fixed.images, self.image_mean, self.image_std)
        step = trainer.global_step
        scalars: dict[str, float] = {}
        for index, choice in enumerate(self.targets):
            explanation = self._explain(network, fixed, choice, trainer)
            if explanation is None:
                continue
            target = self._target_name(choice)
            prefix = "cam" if index == 0 else f"cam/{target}"
            captions = self._captions(fixed, explanation)
            images: dict[str, Grid] = {
                f"cam/{target}/grid": render_grid(
                    shown, explanation.maps, captions, colormap=self.colormap, alpha=self.alpha
                )
            }
            scalars |= self._attention_scalars(network, fixed, explanation, prefix)
            scalars |= {
                f"{prefix}/{name}/seconds" if name != "pass" else f"{prefix}/pass_seconds": value
                for name, value in explanation.seconds.items()
                if name == "pass" or name in explanation.maps
            }
            if index == 0:
                for method, value in explanation.maps.items():
                    self.history.add_to_timeline(f"cam/{method}", step, value)
                summary = partial(self._summary_images, fixed, explanation, shown, captions)
                self._pending_summary = (summary, step)
                if self.checks % self.summary_every_n_checks == 0:
                    images |= summary()
                    self._pending_summary = None
            for tag, grid in images.items():
                for writer in self._get_writers(trainer):
                    self._write_image(writer, partial(writer.log_grid, tag, grid, step))
        return scalars

    def _attention_scalars(
        self, network: nn.Module, fixed: FixedBatch, explanation: Explanation, prefix: str
    ) -> dict[str, float]:
        """Drift against the previous check, mask metrics, and the confidence drop on masked inputs,
        computed on the device and moved to the host together."""
        values: dict[str, Tensor] = {}
        maps = explanation.maps
        masks = {
            name: mask for name, mask in (fixed.masks or {}).items() if self._mask_fits(name, mask, fixed)
        }
        for method, value in maps.items():
            previous = self.history.swap_previous(f"{prefix}/{method}", value)
            if previous is not None and previous.shape == value.shape:
                values[f"{prefix}/{method}/drift"] = metrics.nanmean(metrics.drift(value, previous))
            for mask_name, mask in masks.items():
                values[f"{prefix}/{method}/mass/{mask_name}"] = metrics.nanmean(
                    metrics.mass_in_mask(value, mask)
                )
                values[f"{prefix}/{method}/enrichment/{mask_name}"] = metrics.nanmean(
                    metrics.enrichment(value, mask)
                )
                values[f"{prefix}/{method}/pointing_game/{mask_name}"] = metrics.nanmean(
                    metrics.pointing_game(value, mask)
                )
        if self.confidence_metrics and maps:
            confidence = explanation.logits.softmax(dim=1).gather(1, explanation.targets[:, None]).squeeze(1)
            masked = metrics.masked_confidence(
                network, fixed.images, maps, explanation.targets, self.output_key
            )
            for method, probability in masked.items():
                values[f"{prefix}/{method}/average_drop"] = metrics.nanmean(
                    metrics.average_drop(confidence, probability)
                )
                values[f"{prefix}/{method}/increase_in_confidence"] = metrics.nanmean(
                    metrics.increase_in_confidence(confidence, probability)
                )
        areas = {name: (mask > 0.5).float().mean() for name, mask in masks.items()}
        numbers = torch.stack([*values.values(), *areas.values()]).tolist() if values or areas else []
        scalars = dict(zip(values, numbers, strict=False))
        area_of = dict(zip(areas, numbers[len(values) :], strict=True))
        if prefix == "cam":
            for method in maps:
                for mask_name in masks:
                    self.history.record(
                        f"{method}/{mask_name}",
                        {
                            "mass": scalars[f"cam/{method}/mass/{mask_name}"],
                            "enrichment": scalars[f"cam/{method}/enrichment/{mask_name}"],
                            "area": area_of[mask_name],
                        },
                    )
        return scalars

    def _mask_fits(self, name: str, mask: Tensor, fixed: FixedBatch) -> bool:
        if tuple(mask.shape) == (fixed.images.shape[0], *fixed.images.shape[-2:]):
            return True
        self._warn_once(
            f"mask:{name}",
            f"CAMMonitor: mask {name!r} has shape {list(mask.shape)} but the images need "
            f"[{fixed.images.shape[0]}, {fixed.images.shape[-2]}, {fixed.images.shape[-1]}]; its metrics are skipped.",
        )
        return False

    def _summary_images(
        self, fixed: FixedBatch, explanation: Explanation, shown: Tensor, captions: list[str]
    ) -> dict[str, Grid]:
        """The timeline of each method (last checks side by side) and its per-class mean maps."""
        images: dict[str, Grid] = {}
        for method, value in explanation.maps.items():
            steps, history = self.history.timeline_of(f"cam/{method}", value.device)
            if steps:
                columns = {f"step {s}": maps for s, maps in zip(steps, history, strict=True)}
                images[f"cam/{method}/timeline"] = render_grid(
                    shown, columns, captions, colormap=self.colormap, alpha=self.alpha, min_tile=TIMELINE_TILE
                )
            if self.class_means and fixed.labels is not None:
                num_classes = explanation.logits.shape[1]
                means, present = metrics.class_mean_maps(value, fixed.labels, num_classes)
                names = [self._class_name(c) for c in range(num_classes) if bool(present[c])]
                tiles = apply_colormap(means[present], self.colormap)[None]
                images[f"cam/{method}/class_means"] = render_table(tiles, names, [f"{method}\nmean map"])
        return images

    def _explain(
        self, network: nn.Module, fixed: FixedBatch, choice: TargetChoice, trainer: pl.Trainer
    ) -> Explanation | None:
        if choice == "label" and fixed.labels is None:
            self._warn_once(
                "label", "CAMMonitor: targets='label' needs labels in the batch; that grid is skipped."
            )
            return None
        targets = None if choice == "predicted" else fixed.labels if choice == "label" else choice
        methods = [name for name in self.methods if name not in self._failed]
        if not methods:
            return None
        run = partial(
            explain_batch,
            network,
            fixed.images,
            target_layer=self.target_layer,
            targets=targets,
            output_key=self.output_key,
            options=self._autocast_option(trainer, methods),
        )
        try:
            return run(methods, method_options={m: o for m, o in self.method_options.items() if m in methods})
        except Exception as error:
            if self.strict:
                raise
            if len(methods) == 1:
                self._fail(methods[0], error)
                return None
        # Find the failing methods one by one; report each once and leave it out from now on.
        results = []
        for name in methods:
            try:
                results.append(run([name], method_options={name: self.method_options.get(name, {})}))
            except Exception as error:
                self._fail(name, error)
        if not results:
            return None
        maps = {name: value for result in results for name, value in result.maps.items()}
        seconds = {name: value for result in results for name, value in result.seconds.items()}
        return Explanation(maps=maps, logits=results[0].logits, targets=results[0].targets, seconds=seconds)

    def _autocast_option(self, trainer: pl.Trainer, methods: list[str]) -> dict[str, Any]:
        """``autocast_dtype`` for the perturbation methods when ``perturbation_autocast`` is on."""
        if not self.perturbation_autocast or not any(m in ("scorecam", "ablationcam") for m in methods):
            return {}
        precision = str(trainer.precision)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        return {} if dtype is None else {"autocast_dtype": dtype}

    def _log_bias_report(self, trainer: pl.Trainer) -> None:
        if not self.bias_report or not self.history.last:
            return
        columns, rows, readings = metrics.bias_report(self.history.first, self.history.last)
        text = metrics.format_table(columns, rows) + "\n\n" + "\n".join(f"- {line}" for line in readings)
        rank_zero_info("CAMMonitor bias report (attention mass per mask, first and last check):\n" + text)
        for writer in self._get_writers(trainer):
            self._write_image(
                writer,
                partial(writer.log_report, "cam/bias_report", columns, rows, text, trainer.global_step),
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_last_summary(trainer)
            self._log_bias_report(trainer)
        self.flush()

    def _log_last_summary(self, trainer: pl.Trainer) -> None:
        """The timelines and class means of the last check, if its turn had not come."""
        if self._pending_summary is None:
            return
        summary, step = self._pending_summary
        self._pending_summary = None
        try:
            images = summary()
        except Exception as error:
            self._fail("summary images", error)
            return
        for tag, grid in images.items():
            for writer in self._get_writers(trainer):
                self._write_image(writer, partial(writer.log_grid, tag, grid, step))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for what, error in self._background.close():
            self._fail(what, error)

    def flush(self) -> None:
        """Wait until every image of the checks so far is written (the end of ``fit`` does this)."""
        for what, error in self._background.drain():
            self._fail(what, error)

    def _target_name(self, choice: TargetChoice) -> str:
        if isinstance(choice, str):
            return choice
        if self.class_names is not None and choice < len(self.class_names):
            return f"class_{self.class_names[choice]}"
        return f"class_{choice}"

    def _class_name(self, index: int) -> str:
        if self.class_names is not None and index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def _captions(self, fixed: FixedBatch, explanation: Explanation) -> list[str]:
        if self.class_names is not None and len(self.class_names) != explanation.logits.shape[1]:
            self._warn_once(
                "class_names",
                f"CAMMonitor: class_names has {len(self.class_names)} names but the model has "
                f"{explanation.logits.shape[1]} classes; pass one name per class. Showing class indices "
                f"where a name is missing.",
            )
        confidence, predicted = explanation.logits.softmax(dim=1).max(dim=1)
        rows = [confidence.double(), predicted.double()]
        if fixed.labels is not None:
            rows.append(fixed.labels.to(confidence.device).double())
        values = torch.stack(rows).tolist()  # one transfer for every caption
        labels = [int(label) for label in values[2]] if fixed.labels is not None else [None] * len(values[0])
        return [
            (f"true: {self._class_name(label)}\n" if label is not None else "")
            + f"pred: {self._class_name(int(pred))} {conf:.0%}"
            for label, pred, conf in zip(labels, values[1], values[0], strict=True)
        ]

    # ----------------------------------------------------------------- writers and faults

    def _get_writers(self, trainer: pl.Trainer) -> list[Writer]:
        if self._writers is not None:
            return self._writers
        writers: list[Writer] = []
        for logger in trainer.loggers:
            writer = writer_for(logger)
            if writer is None:
                rank_zero_warn(
                    f"CAMMonitor: no image writer for {type(logger).__name__}; its grids are saved as PNG files "
                    f"and its scalars still go through its log_metrics. Register one with "
                    f"lightning_cam.writers.register_writer."
                )
                writers.append(PNGWriter(self._log_dir(trainer, logger), logger))
            else:
                writers.append(writer)
        if not trainer.loggers:
            root = self._log_dir(trainer, None)
            rank_zero_info(
                f"CAMMonitor: no logger is attached; grids are saved as PNG files under {root}/cam."
            )
            writers.append(PNGWriter(root))
        self._writers = writers
        return writers

    @staticmethod
    def _log_dir(trainer: pl.Trainer, logger: Any) -> str:
        directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        return str(Path(directory or trainer.default_root_dir))

    def _log_metrics(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for writer in self._get_writers(trainer):
            self._write(writer, partial(writer.log_metrics, metrics, trainer.global_step))

    def _write_image(self, writer: Writer, action: Callable[[], None]) -> None:
        """Encode and write on the background thread (synchronously with ``strict`` or without
        ``background_writes``)."""
        if self.background_writes and not self.strict:
            self._background.submit(f"writer {type(writer).__name__}", action)
        else:
            self._write(writer, action)

    def _write(self, writer: Writer, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as error:
            if self.strict:
                raise
            self._fail(f"writer {type(writer).__name__}", error)

    def _fail(self, what: str, error: BaseException) -> None:
        if self.strict:
            raise error
        if what in self.methods:
            self._failed.add(what)
            action = "it is left out from now on; training goes on."
        else:
            action = "training goes on."
        self._warn_once(
            f"fail:{what}",
            f"CAMMonitor: {what} failed ({type(error).__name__}: {error}); {action}\n"
            + "".join(traceback.format_exception(error)),
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
