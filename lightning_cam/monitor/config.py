"""CAMMonitor's options: plain values checked once, at construction, with errors that say what would work."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_cam.batches import Unpacked, group_name
from lightning_cam.engine import OutputKey, resolve_methods, resolve_options
from lightning_cam.engine.detection import check_score_threshold
from lightning_cam.engine.layers import TargetLayer
from lightning_cam.engine.layouts import ReshapeTransform
from lightning_cam.monitor.alerts import Alert, parse_alerts
from lightning_cam.monitor.tasks import TASKS
from lightning_cam.report.grids import COLORMAPS

__all__ = ["MonitorConfig", "TargetChoice", "import_object"]

TargetChoice = str | int
FAITHFULNESS = ("deletion", "insertion", "road")


def import_object(path: str) -> Any:
    """The object at a dotted import path such as ``"my_package.data.unpack_batch"``."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted import path such as 'my_package.data.unpack_batch'.")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from error


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CAMMonitor: {name} must be a positive integer; got {value!r}.")


def _target_choices(targets: TargetChoice | Sequence[TargetChoice]) -> tuple[TargetChoice, ...]:
    if callable(targets) or not isinstance(targets, (str, int, Sequence)):
        raise ValueError(
            f"CAMMonitor(targets={targets!r}): the monitor takes plain choices ('predicted', 'label', a class "
            f"index, or a list of these) so that YAML can set them. For a head whose output is not logits "
            f"[B, C], pass output_key=a function output -> logits; a callable target is lc.explain()'s."
        )
    choices = (targets,) if isinstance(targets, (str, int)) else tuple(targets)
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


@dataclass
class MonitorConfig:
    """Every CAMMonitor option (see :class:`~lightning_cam.CAMMonitor` for their meaning), validated
    and normalised in ``__post_init__``. No Lightning in it: the check reads it too."""

    methods: Sequence[str] = ("gradcam", "gradcam++")
    target_layer: TargetLayer = "auto"
    num_samples: int = 16
    targets: TargetChoice | Sequence[TargetChoice] = "predicted"
    every_n_epochs: int | None = None
    every_n_train_steps: int | None = None
    class_names: Sequence[str] | None = None
    image_mean: Sequence[float] | None = None
    image_std: Sequence[float] | None = None
    colormap: str = "jet"
    alpha: float = 0.5
    max_tile_size: int | None = 256
    num_slices: int = 5
    display_channel: int | None = None
    unpack: str | Callable[[Any], Unpacked] | None = None
    image_key: str = "image"
    label_key: str = "label"
    mask_key: str = "mask"
    group_key: str = "group"
    group_names: Sequence[str] | None = None
    dataloader_idx: int = 0
    model_attr: str | None = None
    output_key: OutputKey = None
    reshape_transform: ReshapeTransform | str = "auto"
    task: str | None = None
    detection_score_threshold: float = 0.5
    method_options: Mapping[str, Mapping[str, Any]] | None = None
    perturbation_autocast: bool = False
    confidence_metrics: bool = True
    timeline_length: int = 8
    class_means: bool = True
    bias_report: bool = True
    summary_every_n_checks: int = 4
    background_writes: bool = True
    faithfulness: Sequence[str] = ()
    faithfulness_every_n_checks: int = 1
    sanity_every_n_checks: int | None = None
    alerts: Mapping[str, float | str] | None = None
    stop_on_alert: bool = False
    audit: bool = False
    audit_every_n_epochs: int | None = None
    audit_dataloader_idx: int | None = None
    strategies: bool = False
    audit_bootstrap_samples: int = 1000
    report: bool | None = None
    name: str = "cam"
    strict: bool = False
    alert_rules: list[Alert] = field(init=False)

    def __post_init__(self) -> None:
        self.methods = [method.name for method in resolve_methods(self.methods)]
        if not isinstance(self.target_layer, str) and not hasattr(self.target_layer, "forward"):
            self.target_layer = list(self.target_layer)
        _positive_int("num_samples", self.num_samples)
        self.targets = _target_choices(self.targets)
        self._check_schedule()
        self._check_display()
        self._check_reading()
        self.method_options = {name: dict(options) for name, options in (self.method_options or {}).items()}
        resolve_options(resolve_methods(self.methods), method_options=self.method_options)  # fail now
        if not isinstance(self.timeline_length, int) or self.timeline_length < 0:
            raise ValueError(
                f"timeline_length must be an integer >= 0 (0 turns the timeline off); got {self.timeline_length!r}."
            )
        _positive_int("summary_every_n_checks", self.summary_every_n_checks)
        _positive_int("num_slices", self.num_slices)
        if self.display_channel is not None and (
            not isinstance(self.display_channel, int) or self.display_channel < 0
        ):
            raise ValueError(
                f"display_channel is the input channel to draw (an int >= 0, or None); got {self.display_channel!r}."
            )
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(
                f"name is the first part of every tag, e.g. 'cam' or 'cam_fast'; got {self.name!r}."
            )
        self.alert_rules = parse_alerts(self.alerts or {})
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose {', '.join(TASKS)} (or None).")
        check_score_threshold(self.detection_score_threshold)
        self._check_trust()

    def _check_schedule(self) -> None:
        if self.every_n_epochs is not None and self.every_n_train_steps is not None:
            raise ValueError(
                "CAMMonitor: set every_n_epochs or every_n_train_steps, not both "
                f"(got every_n_epochs={self.every_n_epochs}, every_n_train_steps={self.every_n_train_steps})."
            )
        for option in ("every_n_epochs", "every_n_train_steps"):
            if getattr(self, option) is not None:
                _positive_int(option, getattr(self, option))
        if self.every_n_epochs is None and self.every_n_train_steps is None:
            self.every_n_epochs = 1

    def _check_display(self) -> None:
        self.class_names = list(self.class_names) if self.class_names is not None else None
        self.group_names = list(self.group_names) if self.group_names is not None else None
        mean, std = self.image_mean, self.image_std
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(
                f"image_mean and image_std must have one value per channel each; got {len(mean)} and {len(std)}."
            )
        self.image_mean = list(mean) if mean is not None else None
        self.image_std = list(std) if std is not None else None
        if self.colormap not in COLORMAPS:
            raise ValueError(f"unknown colormap {self.colormap!r}; choose one of {', '.join(COLORMAPS)}.")
        if self.max_tile_size is not None and self.max_tile_size < 16:
            raise ValueError(
                f"max_tile_size is the longest side of a grid tile in pixels (at least 16), or None for full "
                f"resolution; got {self.max_tile_size}."
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"alpha is the heatmap's weight in the overlay and must be in [0, 1]; got {self.alpha}."
            )

    def _check_reading(self) -> None:
        if isinstance(self.unpack, str):
            self.unpack = import_object(self.unpack)
        if isinstance(self.reshape_transform, str) and self.reshape_transform != "auto":
            self.reshape_transform = import_object(self.reshape_transform)
        if self.unpack is not None and not callable(self.unpack):
            raise ValueError(
                f"unpack must be a function batch -> (images, labels, masks[, groups]); got {self.unpack!r}."
            )

    def _check_trust(self) -> None:
        self.faithfulness = (
            [self.faithfulness] if isinstance(self.faithfulness, str) else list(self.faithfulness)
        )
        unknown = sorted(set(self.faithfulness) - set(FAITHFULNESS))
        if unknown:
            raise ValueError(
                f"unknown faithfulness metric(s) {unknown}; choose from {', '.join(FAITHFULNESS)}."
            )
        _positive_int("faithfulness_every_n_checks", self.faithfulness_every_n_checks)
        if self.sanity_every_n_checks is not None:
            _positive_int("sanity_every_n_checks", self.sanity_every_n_checks)
        if self.audit_every_n_epochs is not None:
            _positive_int("audit_every_n_epochs", self.audit_every_n_epochs)
        if self.strategies and not self.audit:
            raise ValueError(
                "strategies=True clusters the full audit's maps; turn the audit on: CAMMonitor(audit=True, "
                "strategies=True)."
            )
        if not isinstance(self.audit_bootstrap_samples, int) or self.audit_bootstrap_samples < 0:
            raise ValueError(
                "audit_bootstrap_samples is the number of bootstrap draws for the audit's intervals (0: none); "
                f"got {self.audit_bootstrap_samples!r}."
            )

    def trust_due(self, check_index: int) -> tuple[bool, bool]:
        """Whether check number ``check_index`` (from 1) computes the faithfulness and the sanity metrics."""
        faithful = bool(self.faithfulness) and check_index % self.faithfulness_every_n_checks == 0
        sane = self.sanity_every_n_checks is not None and check_index % self.sanity_every_n_checks == 0
        return faithful, sane

    def check_due_after_validation(self, epoch: int) -> bool:
        """Whether the validation epoch that ends in training epoch ``epoch`` (from 0) is a check."""
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    def check_due_after_step(self, step: int, last_check_step: int) -> bool:
        """Whether optimizer step ``step`` is a check (once per step, also with gradient accumulation)."""
        every = self.every_n_train_steps
        return every is not None and step > 0 and step % every == 0 and step != last_check_step

    def audit_due(self, epoch: int | None) -> bool:
        """Whether an audit runs after the validation of training epoch ``epoch`` (``None``: the end of fit,
        where it runs when ``audit`` is on and no epoch schedule is set)."""
        if not self.audit:
            return False
        if epoch is None:
            return self.audit_every_n_epochs is None
        return self.audit_every_n_epochs is not None and (epoch + 1) % self.audit_every_n_epochs == 0

    def report_due(self, tables: Mapping[str, object]) -> bool:
        """Whether the end of fit writes the audit page: ``report=True``, or ``None`` (the default) and a
        bias report, trust table or audit was logged (``tables``: the logged tables by tag)."""
        if self.report is not None:
            return bool(self.report)
        return any(tag.endswith(("/bias_report", "/trust_report", "audit/table")) for tag in tables)

    @property
    def audit_root(self) -> str:
        """The first part of the audit's tags: ``audit`` (``<name>/audit`` for a monitor named otherwise)."""
        return "audit" if self.name == "cam" else f"{self.name}/audit"

    def target_name(self, choice: TargetChoice) -> str:
        """``"predicted"``, ``"label"`` or ``"class_<name or index>"``: the ``<target>`` in tags."""
        return choice if isinstance(choice, str) else f"class_{self.class_name(choice)}"

    def grid_tag_for(self, tag: str) -> str:
        """The grid whose maps a scalar ``tag`` was computed from (the first target's for its own tags)."""
        for choice in self.targets[1:]:
            if tag.startswith(f"{self.name}/{self.target_name(choice)}/"):
                return f"{self.name}/{self.target_name(choice)}/grid"
        return f"{self.name}/{self.target_name(self.targets[0])}/grid"

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (its index where no name is given)."""
        if self.class_names is not None and index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def group_name(self, group: object) -> str:
        """The name of a group id (an int indexing ``group_names``, or a string), safe inside a tag."""
        return group_name(group, self.group_names)
