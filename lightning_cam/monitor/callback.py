"""CAMMonitor: Lightning's hooks and the schedule; each check is capture -> check -> publish."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_cam.auditing import AuditResult
from lightning_cam.batches import FixedBatch, Unpacked, missing_groups_message, unpack_batch
from lightning_cam.engine.layers import TargetLayer
from lightning_cam.monitor.alerts import dead_tags_message, later_tag, per_strategy_tag
from lightning_cam.monitor.check import CheckResult, run_check
from lightning_cam.monitor.config import MonitorConfig, TargetChoice
from lightning_cam.monitor.faults import Faults
from lightning_cam.monitor.fit_audit import audit_in_fit
from lightning_cam.monitor.history import AttentionHistory
from lightning_cam.monitor.publish import Publisher
from lightning_cam.monitor.sampling import Capture
from lightning_cam.monitor.suspects import SuspectHistory
from lightning_cam.monitor.trainer_io import (
    autocast_dtype,
    check_strategy,
    collective_checks,
    explained_network,
    no_check_message,
    raise_alerts,
    run_summary,
    share_fixed,
    share_scalars,
    warn_if_silent,
)

__all__ = ["CAMMonitor"]


class CAMMonitor(Callback):
    r"""Explain a fixed set of validation images while the model trains, and log the maps.

    At every check, on the training device and global rank 0, the chosen methods explain the same
    ``num_samples`` validation images (captured from the batches validation loads anyway, balanced
    over classes, kept in the checkpoint) in one guarded pass per target choice that leaves the
    model's modes, gradients, BatchNorm statistics and RNG states as they were. Each attached
    logger gets, at ``trainer.global_step``, a grid per target choice (``<name>/<target>/grid``:
    a row per sample with its label, prediction and confidence, the input and an overlay per
    method), the attention scalars (``<name>/<method>/drift``, ``.../mass/<mask>``,
    ``.../enrichment/<mask>``, ``.../pointing_game/<mask>``, ``.../average_drop``, times), every
    ``summary_every_n_checks`` checks the timelines and per-class mean maps, and at the end of fit
    the bias report. The scalars also land in ``trainer.callback_metrics`` on every rank, so
    ``EarlyStopping`` and ``ModelCheckpoint`` can monitor them. The README lists every tag.

    Args:
        methods: names from ``lightning_cam.METHODS``.
        target_layer: ``"auto"``, a dotted module name (``"layer4"``) or a list of names (maps fused).
        num_samples: how many validation images to explain.
        targets: ``"predicted"``, ``"label"``, a class index, or a list of these (a grid each).
        every_n_epochs: check after every n-th validation epoch (default 1).
        every_n_train_steps: check every n optimizer steps instead (images from training batches
            when there is no validation).
        class_names: class names in index order, for captions and the report.
        image_mean: per-channel normalisation mean, undone for display.
        image_std: per-channel normalisation std, undone for display.
        colormap: ``jet``, ``turbo``, ``viridis``, ``inferno`` or ``gray``.
        alpha: heatmap weight in the overlay, in ``[0, 1]``.
        max_tile_size: grid tiles longer than this many pixels are scaled down to it, so that a long
            run's logs stay small (16 noise images at 512 px, two methods: a 866x4154 grid of 7.9 MB
            instead of 1634x8250 and 37.6 MB); ``None``: full resolution.
        num_slices: volumes and clips ``[B, C, D, H, W]``: evenly spaced slices along ``D`` drawn per sample and
            method (and the slice where the map peaks; timelines and class means show the peak slice).
        display_channel: the input channel drawn in grey (e.g. one of several MRI sequences); ``None``: RGB
            for 3 channels, grey for 1.
        unpack: a function (or its import path) batch -> ``(images, labels, masks[, groups])``.
        image_key: the images' key in dict batches.
        label_key: the labels' key in dict batches.
        mask_key: the masks' key in dict batches (``"masks"`` is read too): a tensor or a dict of named masks.
        group_key: the groups' key in dict batches (site, sex, scanner: ints or strings per image).
        group_names: names of integer group ids, in order.
        dataloader_idx: the validation dataloader to take the images from.
        model_attr: the LightningModule's attribute holding the network to explain (e.g. a compiled ``"net"``).
        output_key: where the logits are in the model's output: an index (tuple), a key (dict, e.g.
            ``"out"`` for torchvision's segmentation models), or a function ``output -> logits`` for any
            other head (Python only; YAML takes the index or key).
        reshape_transform: ``"auto"`` (convolutional, channels-last and token layers), or a function (or
            its import path) tensor -> ``[B, K, h, w]`` for any other layer output.
        task: ``"multiclass"``, ``"binary"``, ``"multilabel"`` (a row per image and positive class) or
            ``"segmentation"`` (each image's largest labelled class, its region outlined and used as mask
            ``label``); ``None`` infers it from the labels' shape and the model's output. ``"detection"``
            (inferred from batches of (list of images, list of ``{"boxes", "labels"}``)): targets
            ``"label"`` explain the ground-truth boxes (:func:`lightning_cam.targets.boxes`), ``"predicted"``
            each image's detections scoring at least ``detection_score_threshold``; the union of an
            image's boxes is outlined and is the mask ``boxes`` (``cam/<method>/mass/boxes``: attention
            on the objects or on their context).
        detection_score_threshold: the detection score from which ``"predicted"`` explains a box.
        method_options: per method, e.g. ``{"scorecam": {"topk": 64}}``.
        perturbation_autocast: run Score-CAM's and Ablation-CAM's forwards under the trainer's mixed precision.
        confidence_metrics: log average drop and increase in confidence (one batched forward).
        timeline_length: checks shown per sample in the timeline (0: none).
        class_means: log the per-class mean map of each method.
        bias_report: at the end of fit, print and log mass and enrichment per method, mask, class and
            group at the first, peak and last check (needs masks).
        summary_every_n_checks: log timelines and class means every n checks (and after the last).
        background_writes: encode and write images on a background thread.
        faithfulness: any of ``"deletion"``, ``"insertion"``, ``"road"``: log ``<name>/<method>/deletion_auc``,
            ``.../insertion_auc``, ``.../road`` (see ``lightning_cam.metrics``).
        faithfulness_every_n_checks: compute them every n checks.
        sanity_every_n_checks: every n checks, log ``<name>/<method>/randomization_spearman`` (the model
            randomisation sanity check; ``None``: never). With either, a trust table ends the fit.
        alerts: ``{tag: threshold}``: warn once (and log it) when a scalar rises above the threshold
            (``"<0.2"``: falls below it).
        stop_on_alert: stop training when an alert fires.
        audit: explain every image of the validation dataloader (each rank its shard, each image once) at the
            end of fit, and log count, accuracy, mass and enrichment per class and group with 95 % bootstrap
            intervals (``audit/...`` tags, a table, mean maps; see ``lightning_cam.audit``).
        audit_every_n_epochs: audit after every n-th validation epoch instead of at the end of fit.
        audit_bootstrap_samples: bootstrap draws for the audit's intervals (0: none).
        audit_dataloader_idx: the validation dataloader the audit explains (default: ``dataloader_idx``),
            e.g. the in-distribution set while the grids show a decorrelated one.
        strategies: with the audit, cluster each class's maps into the strategies the model uses and test
            each on the model (``audit/strategies/...`` tags, a table, prototypes; flags a shortcut suspect
            without any mask of it; see ``lightning_cam.auditing.strategies``; ``pip install
            lightning-cam[strategies]``).
        report: write the audit page ``cam_report.html`` (one self-contained HTML file: curves, grids, tables,
            verdicts) into the log directory at the end of fit and hand it to every logger; ``None``: when a
            bias report, trust table or audit was logged.
        name: the first part of every tag; give two monitors in one Trainer different names.
        strict: raise on any failure instead of reporting it once and carrying on (for tests).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import EarlyStopping
        >>> monitor = CAMMonitor(methods=["gradcam"], num_samples=8, alerts={"cam/gradcam/enrichment/cue": 3.0})
        >>> stop = EarlyStopping(monitor="cam/gradcam/enrichment/cue", mode="min")
        >>> trainer = Trainer(callbacks=[monitor, stop], max_epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        methods: Sequence[str] = ("gradcam", "gradcam++"),
        target_layer: TargetLayer = "auto",
        num_samples: int = 16,
        targets: TargetChoice | Sequence[TargetChoice] = "predicted",
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        class_names: Sequence[str] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        colormap: str = "jet",
        alpha: float = 0.5,
        max_tile_size: int | None = 256,
        num_slices: int = 5,
        display_channel: int | None = None,
        unpack: str | Callable[[Any], Unpacked] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "mask",
        group_key: str = "group",
        group_names: Sequence[str] | None = None,
        dataloader_idx: int = 0,
        model_attr: str | None = None,
        output_key: int | str | Callable[[Any], Any] | None = None,
        reshape_transform: str | Callable[[Any], Any] = "auto",
        task: str | None = None,
        detection_score_threshold: float = 0.5,
        method_options: dict[str, dict[str, Any]] | None = None,
        perturbation_autocast: bool = False,
        confidence_metrics: bool = True,
        timeline_length: int = 8,
        class_means: bool = True,
        bias_report: bool = True,
        summary_every_n_checks: int = 4,
        background_writes: bool = True,
        faithfulness: Sequence[str] = (),
        faithfulness_every_n_checks: int = 1,
        sanity_every_n_checks: int | None = None,
        alerts: dict[str, float | str] | None = None,
        stop_on_alert: bool = False,
        audit: bool = False,
        audit_every_n_epochs: int | None = None,
        audit_bootstrap_samples: int = 1000,
        audit_dataloader_idx: int | None = None,
        strategies: bool = False,
        report: bool | None = None,
        name: str = "cam",
        strict: bool = False,
    ) -> None:
        options = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        super().__init__()
        self.config = config = MonitorConfig(**options)
        self.faults = Faults(config.strict)
        self.publisher = Publisher(config, self.faults)
        self.history = AttentionHistory(config.timeline_length)
        self.capture = Capture(config.num_samples, len(config.class_names or []) or None, self._read_batch)
        self.fixed: FixedBatch | None = None
        self.checks, self.last_check_step = 0, -1
        self.fired_alerts: set[str] = set()
        self.audit_result: AuditResult | None = None
        self.suspects = SuspectHistory()
        self.fit_started_at = (
            -1
        )  # the global step this fit started at: a fit that trains nothing adds nothing

    @property
    @override
    def state_key(self) -> str:
        named = {} if self.config.name == "cam" else {"name": self.config.name}
        config = self.config
        return self._generate_state_key(
            **named, methods=config.methods, targets=list(config.targets), num_samples=config.num_samples
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer, self.config, self.faults)
            explained_network(pl_module, self.config, self.faults, at_setup=True)
        warn_if_silent(trainer, pl_module, self, stage)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        capturing = self.fixed is None and trainer.is_global_zero and _fitting(trainer)
        if capturing and dataloader_idx == self.config.dataloader_idx:
            self._capture(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _fitting(trainer):  # the sanity check, or trainer.validate() (which the setup warning names)
            return
        self._finish_capture()
        if self.config.check_due_after_validation(trainer.current_epoch):
            self.run_check(trainer, pl_module)
        if self.config.audit_due(trainer.current_epoch):
            self.run_audit(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.config.every_n_train_steps is None:
            return
        if self.fixed is None and trainer.is_global_zero and not trainer.enable_validation:
            self._capture(batch)
            if self.capture.complete:
                self._finish_capture()
        if self.config.check_due_after_step(trainer.global_step, self.last_check_step):
            self._finish_capture()
            self.run_check(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trained_from = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trained_from = trainer.global_step  # after a resume: the checkpoint's step

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trained_from in (
            None,
            trainer.global_step,
        ):  # trained nothing: a second fit, a finished resume
            return  # every rank alike: the report, the page and the audit of this step are already out
        if self.config.audit_due(None):
            self.run_audit(trainer, pl_module)
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast under DDP: every rank asks
        if trainer.is_global_zero:
            said = None if self.last_check_step >= 0 else no_check_message(trainer, pl_module, self.config)
            if said is not None:
                self.faults.warn_once("no check", said)
            self.publisher.publish_end(self.history, self.fixed, trainer.global_step)
            self.publisher.publish_problems(self.faults.messages, trainer.global_step)
            with self.faults.guard("report"):
                self.publisher.publish_page(log_dir, trainer.global_step)
        self.publisher.flush()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.publisher.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "fixed": None if self.fixed is None else self.fixed.state_dict(),
            "checks": self.checks,
            "last_check_step": self.last_check_step,
            "history": self.history.state_dict(),
            "fired_alerts": sorted(self.fired_alerts),
            "record": self.publisher.record.state_dict(),
            "suspects": self.suspects.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fixed = state_dict.get("fixed")
        self.fixed = None if fixed is None else FixedBatch(**fixed)
        self.checks = state_dict.get("checks", 0)
        self.last_check_step = state_dict.get("last_check_step", -1)
        self.history.load_state_dict(state_dict.get("history", {}))
        self.fired_alerts = set(state_dict.get("fired_alerts", []))
        self.publisher.record.load_state_dict(state_dict.get("record", {}))
        self.suspects.load_state_dict(state_dict.get("suspects", {}))

    def flush(self) -> None:
        """Wait until every image of the checks so far is written (the end of ``fit`` does this)."""
        self.publisher.flush()

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """One check, called on every rank: rank 0 explains and publishes (under a sharded strategy every
        rank explains rank 0's fixed batch, in step, and rank 0 publishes); its scalars are shared with
        every rank (``trainer.callback_metrics``) and alerts are raised from them."""
        self.last_check_step = trainer.global_step
        scalars: dict[str, float] = {}
        failure: Exception | None = None
        if trainer.is_global_zero or collective_checks(trainer):
            try:
                scalars = self._check_and_publish(trainer, pl_module)
            except Exception as error:  # raised only when strict; shared so that no rank waits
                failure = error
        scalars = share_scalars(trainer, scalars, failure, every_rank=collective_checks(trainer))
        root = self.config.audit_root
        audited = self.config.audit
        self._say_dead_tags(
            trainer, scalars, lambda tag: later_tag(tag) or (audited and tag.startswith(f"{root}/")), "check"
        )
        raise_alerts(trainer, self.config, scalars, self.fired_alerts, self.publisher)
        return scalars

    def run_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> AuditResult | None:
        """The full audit of the validation set, on every rank (collective); rank 0 publishes it. Every
        rank holds the same figures, so alerts on its tags fire (and stop the fit) on every rank alike."""
        self.publisher.attach(trainer.loggers, trainer.default_root_dir)
        result = None
        with self.faults.guard("audit"):
            network = explained_network(pl_module, self.config, self.faults)
            result = self.audit_result = audit_in_fit(trainer, network, self.config)
            step = trainer.global_step
            if self.config.strategies:
                self.suspects.add(trainer.current_epoch, step, result.strategies)
            if trainer.is_global_zero:
                self.publisher.publish_audit(result, step)
                if self.config.strategies:
                    self.publisher.publish_suspects(self.suspects, step)
        if result is not None:
            self._audit_alerts(trainer, result.scalars(self.config.audit_root))
        return self.audit_result

    def _audit_alerts(self, trainer: pl.Trainer, scalars: dict[str, float]) -> None:
        """The audit's tags that alerts and callbacks wait for but it did not log (said once), and the
        alerts its figures cross."""
        root = self.config.audit_root
        wanted = {tag for tag in self._wanted_tags(trainer) if tag.startswith(f"{root}/")}
        self._say_dead_tags(
            trainer, scalars, lambda tag: tag not in wanted or per_strategy_tag(tag, root), "audit"
        )
        raise_alerts(trainer, self.config, scalars, self.fired_alerts, self.publisher)

    def _say_dead_tags(
        self, trainer: pl.Trainer, scalars: dict[str, float], pending: Callable[[str], bool], by: str
    ) -> None:
        """Warn once (per kind: check, audit) about the tags waited for that the first one did not log."""
        dead = (
            dead_tags_message(self._wanted_tags(trainer), scalars, pending, f"the first {by}")
            if scalars
            else None
        )
        if dead is not None and trainer.is_global_zero:
            self.faults.warn_once(f"dead {by} tags", dead)

    def _wanted_tags(self, trainer: pl.Trainer) -> dict[str, list[str]]:
        """This monitor's tags that its alerts and other callbacks' ``monitor`` wait for, and who waits."""
        wanted: dict[str, list[str]] = {rule.tag: ["an alert"] for rule in self.config.alert_rules}
        for callback in trainer.callbacks:
            tag = getattr(callback, "monitor", None)
            if isinstance(tag, str) and tag.startswith(
                (f"{self.config.name}/", f"{self.config.audit_root}/")
            ):
                wanted.setdefault(tag, []).append(f"{type(callback).__name__}(monitor={tag!r})")
        return wanted

    def _check_and_publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Explain the fixed batch (on every rank under a sharded strategy); rank 0 publishes."""
        publishing, step = trainer.is_global_zero, trainer.global_step
        if publishing:
            self.publisher.attach(trainer.loggers, trainer.default_root_dir)
            self.publisher.take_errors()
        if collective_checks(trainer):
            self.fixed = share_fixed(trainer, self.fixed)
        if self.fixed is None:
            if publishing:
                self._skip_check(step)
            return {}
        self.checks += 1
        start, scalars = time.perf_counter(), {}
        with self.faults.guard("check"):
            fixed = self.fixed = self.fixed.to(pl_module.device)
            network = explained_network(pl_module, self.config, self.faults)
            dtype = autocast_dtype(trainer, self.config)
            result = run_check(
                network, fixed, self.config, self.history, self.faults, step, dtype, self.checks
            )
            if publishing:
                self._publish_check(pl_module, network, fixed, result)
            scalars = result.scalars
        scalars[f"{self.config.name}/check_seconds"] = time.perf_counter() - start
        if publishing:
            self.publisher.publish_scalars(scalars, step)
            self.publisher.publish_problems(self.faults.messages, step)
        return scalars

    def _publish_check(
        self, pl_module: pl.LightningModule, network: nn.Module, fixed: FixedBatch, result: CheckResult
    ) -> None:
        """The run's summary (at the first check) and the check's grids, from rank 0."""
        if not self.publisher.record.summary:
            layers = result.targets[0].explanation.target_layers if result.targets else None
            summary = run_summary(pl_module, network, fixed, self.config, layers)
            self.publisher.publish_summary(summary, result.step)
        self.publisher.publish_check(result, self.history, self.checks)

    def _skip_check(self, step: int) -> None:
        """Say at every skipped check why nothing is explained, and list it for the loggers and the page."""
        error = self.faults.errors.get("batch")
        why = f"the batches could not be read ({error})" if error else "no validation batch was seen yet"
        reason = f"no images were captured, because {why}"
        self.faults.warn_each(
            "skipped",
            f"CAMMonitor: the check at step {step} is skipped: {reason}.",
            f"CAMMonitor: checks were skipped: {reason}.",
        )
        self.publisher.publish_problems(self.faults.messages, step)

    def _read_batch(self, batch: Any) -> FixedBatch:
        config = self.config
        return unpack_batch(
            batch, config.unpack, config.image_key, config.label_key, config.mask_key, config.group_key
        )

    def _capture(self, batch: Any) -> None:
        with self.faults.guard("batch"):
            self.capture.add(batch)

    def _finish_capture(self) -> None:
        if self.fixed is None:
            self.fixed = self.capture.finish()
            if self.fixed is not None and len(self.fixed.images) < self.config.num_samples:
                self.faults.warn_once(
                    "few",
                    f"CAMMonitor: only {len(self.fixed.images)} images were available for num_samples="
                    f"{self.config.num_samples}; explaining those.",
                )
            config = self.config
            if self.fixed is not None and self.fixed.groups is None and config.group_names is not None:
                message = missing_groups_message("CAMMonitor", config.group_names, config.group_key)
                self.faults.warn_once("no groups", message)


def _fitting(trainer: pl.Trainer) -> bool:
    """Inside ``trainer.fit``, past the sanity check: the only time the monitor explains."""
    return trainer.state.fn == "fit" and not trainer.sanity_checking
