"""One check: (network, fixed batch, config) -> maps, captions and scalars. No Lightning in it.

For each target choice the methods run in one guarded pass (:func:`~lightning_cam.explain_batch`);
a failing method is found, reported once and left out (see :class:`~lightning_cam.monitor.faults.Faults`).
Then the attention metrics of every method are computed on the device and moved to the host in
**one** transfer. The history (previous maps, timeline, first / peak / last mask metrics) is
updated here; drawing and writing are :mod:`lightning_cam.monitor.publish`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_cam import metrics
from lightning_cam.auditing.rows import check_labels
from lightning_cam.batches import FixedBatch
from lightning_cam.engine import Explanation, explain_batch
from lightning_cam.engine.targets import Targets, correctness, num_classes, prediction, segmentation
from lightning_cam.monitor.config import MonitorConfig, TargetChoice
from lightning_cam.monitor.faults import Faults
from lightning_cam.monitor.history import AttentionHistory, series_key
from lightning_cam.monitor.tasks import TaskView, infer_task, task_view
from lightning_cam.report.grids import display_images
from lightning_cam.report.tables import TRUST_METRICS

__all__ = ["CheckResult", "TargetResult", "explain_target", "run_check"]


@dataclass(frozen=True)
class TargetResult:
    """The maps of one target choice, with the caption of each sample and the prefix of its scalars."""

    name: str
    prefix: str
    explanation: Explanation
    captions: list[str]
    boxes: list[Tensor] | None = None
    """A detector's: per sample the detections drawn on its tiles (see :func:`shown_detections`)."""
    box_labels: list[list[str]] | None = None
    """Per sample, each drawn detection's ``"<class> <score>"``."""


@dataclass
class CheckResult:
    """What one check produced: the rows' images as displayed, their labels and label regions (to
    outline, for segmentation), the maps per target choice, the scalars."""

    step: int
    shown: Tensor
    labels: Tensor | None = None
    regions: Tensor | None = None
    targets: list[TargetResult] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Slices:
    """Subsets of the fixed samples: ``all``, each class (``class=<name>``) and group (``group=<name>``)."""

    names: list[str]
    membership: Tensor  # [S, B] bool

    @staticmethod
    def of(fixed: FixedBatch, config: MonitorConfig) -> Slices:
        names, rows = ["all"], [[True] * len(fixed.images)]
        if fixed.labels is not None:
            labels = fixed.labels.tolist()
            for label in sorted(set(labels)):
                names.append(f"class={config.class_name(label)}")
                rows.append([value == label for value in labels])
        if fixed.groups is not None:
            groups = [config.group_name(group) for group in fixed.groups]
            for group in sorted(set(groups)):
                names.append(f"group={group}")
                rows.append([value == group for value in groups])
        return Slices(names, torch.tensor(rows, dtype=torch.bool, device=fixed.images.device))

    def groups(self) -> list[tuple[int, str]]:
        return [
            (i, name.removeprefix("group=")) for i, name in enumerate(self.names) if name.startswith("group=")
        ]


def explain_target(
    network: nn.Module,
    fixed: FixedBatch,
    choice: TargetChoice,
    config: MonitorConfig,
    faults: Faults,
    autocast_dtype: torch.dtype | None = None,
    task_target: Targets = None,
) -> Explanation | None:
    """The maps of every method not failed so far for one target choice (or the task's own target,
    ``task_target``); a method that fails is reported once and left out (all of them at once when
    ``strict``); ``None`` when none is left."""
    if choice == "label" and fixed.labels is None:
        faults.warn_once(
            "label", "CAMMonitor: targets='label' needs labels in the batch; that grid is skipped."
        )
        return None
    methods = [name for name in config.methods if name not in faults.failed_methods]
    if not methods:
        return None
    targets = (
        task_target
        if task_target is not None
        else fixed.targets_for(choice, config.detection_score_threshold)
    )
    perturbing = autocast_dtype is not None and any(m in ("scorecam", "ablationcam") for m in methods)

    def run(names: list[str]) -> Explanation:
        return explain_batch(
            network,
            fixed.images,
            names,
            config.target_layer,
            targets,
            output_key=config.output_key,
            reshape_transform=config.reshape_transform,
            options={"autocast_dtype": autocast_dtype} if perturbing else {},
            method_options={m: o for m, o in config.method_options.items() if m in names},
        )

    try:
        return run(methods)
    except Exception as error:
        if faults.strict or len(methods) == 1:
            faults.fail_method(methods[0], error)
            return None
    return _explain_one_by_one(run, methods, faults)


def _explain_one_by_one(run: object, methods: list[str], faults: Faults) -> Explanation | None:
    """Find the failing methods one by one; each is reported once and left out from now on."""
    results = []
    for name in methods:
        try:
            results.append(run([name]))  # type: ignore[operator]
        except Exception as error:
            faults.fail_method(name, error)
    if not results:
        return None
    return Explanation(
        maps={name: value for result in results for name, value in result.maps.items()},
        logits=results[0].logits,
        targets=results[0].targets,
        seconds={name: value for result in results for name, value in result.seconds.items()},
        scorer=results[0].scorer,
    )


SHOWN_DETECTIONS = 3


def shown_detections(explanation: Explanation, threshold: float) -> list[dict[str, Tensor]] | None:
    """A detector's detections scoring at least ``threshold``, the best ``SHOWN_DETECTIONS`` per image, on
    the CPU (once per check); ``None`` for other models."""
    if explanation.detections is None:
        return None
    return [
        {key: value[item["scores"] >= threshold][:SHOWN_DETECTIONS].cpu() for key, value in item.items()}
        for item in explanation.detections
    ]


def captions(
    fixed: FixedBatch,
    explanation: Explanation,
    config: MonitorConfig,
    faults: Faults,
    detection_labels: list[list[str]] | None = None,
) -> list[str]:
    """``"true: <label>\\npred: <class> <confidence>"`` per sample, from one host transfer; for a
    detector ``"boxes: <classes>\\ndet: <class> <score>, ..."`` (the labels of the detections drawn)."""
    classes = num_classes(explanation.scorer, explanation.logits)
    if config.class_names is not None and classes and len(config.class_names) != classes:
        faults.warn_once(
            "class_names",
            f"CAMMonitor: class_names has {len(config.class_names)} names but the model has {classes} "
            f"classes; pass one name per class. Showing class indices where a name is missing.",
        )
    if fixed.labels is not None and fixed.labels.dim() == 1 and classes:
        with faults.guard("labels"):  # a warning (an error when strict), listed for the page
            check_labels(fixed.labels, classes, torch.arange(len(fixed.labels)), "fixed samples")
    confidence, predicted = prediction(explanation.scorer, explanation.logits)
    rows = [confidence.double(), predicted.double()]
    if fixed.labels is not None:
        rows.append(fixed.labels.to(confidence.device).double())
    values = torch.stack(rows).tolist()  # one transfer for every caption
    labels = [int(label) for label in values[2]] if fixed.labels is not None else [None] * len(values[0])
    if fixed.boxes is not None and detection_labels is not None:  # a detector: its boxes, its detections
        return [
            "boxes: "
            + (", ".join(config.class_name(int(c)) for c in truth["labels"].tolist()) or "none")
            + "\ndet: "
            + (", ".join(found) or "none")
            for truth, found in zip(fixed.boxes, detection_labels, strict=True)
        ]
    return [
        (f"true: {config.class_name(label)}\n" if label is not None else "")
        + (
            f"pred: {config.class_name(int(pred))} {conf:.0%}"
            if pred >= 0
            else ("pred: none (NaN output)" if classes else "")
            if conf != conf
            else f"p = {conf:.0%}"
        )
        for label, pred, conf in zip(labels, values[1], values[0], strict=True)
    ]


def _fitting_masks(fixed: FixedBatch, faults: Faults) -> dict[str, Tensor]:
    expected = (fixed.images.shape[0], *fixed.images.shape[2:])  # [B, H, W], or [B, D, H, W] for volumes
    masks = {}
    for name, mask in (fixed.masks or {}).items():
        if tuple(mask.shape) == expected:
            masks[name] = mask
            continue
        faults.warn_once(
            f"mask:{name}",
            f"CAMMonitor: mask {name!r} has shape {list(mask.shape)} but the images need "
            f"{list(expected)}; its metrics are skipped.",
        )
    return masks


def _map_values(
    explanation: Explanation,
    prefix: str,
    target: str,
    masks: dict[str, Tensor],
    slices: Slices,
    history: AttentionHistory,
) -> dict[str, Tensor]:
    """The share of all-zero maps (an untrained transformer's zero head gives only those), drift and,
    per mask, mass and enrichment per slice (``[S]``) and the pointing game, on the device."""
    values: dict[str, Tensor] = {}
    for method, maps in explanation.maps.items():
        values[f"{prefix}/{method}/flat_fraction"] = metrics.flat_maps(maps).float().mean()
        previous = history.swap_previous(series_key(target, method), maps)
        if previous is not None and previous.shape == maps.shape:
            values[f"{prefix}/{method}/drift"] = metrics.nanmean(metrics.drift(maps, previous))
        for mask_name, mask in masks.items():
            for metric in (metrics.mass_in_mask, metrics.enrichment):
                name = "mass" if metric is metrics.mass_in_mask else "enrichment"
                values[f"{prefix}/{method}/{name}/{mask_name}"] = metrics.slice_means(
                    metric(maps, mask).float(), slices.membership
                )
            values[f"{prefix}/{method}/pointing_game/{mask_name}"] = metrics.nanmean(
                metrics.pointing_game(maps, mask)
            )
    return values


def _confidence_values(
    network: nn.Module, fixed: FixedBatch, explanation: Explanation, prefix: str, config: MonitorConfig
) -> dict[str, Tensor]:
    """Average drop and increase in confidence of every method, from one batched forward (not for
    detectors: a box score is no probability)."""
    if not config.confidence_metrics or not explanation.maps or fixed.boxes is not None:
        return {}
    assert explanation.scorer is not None
    confidence = explanation.scorer.probability(explanation.logits)
    masked = metrics.masked_confidence(
        network, fixed.images, explanation.maps, explanation.scorer, config.output_key
    )
    values = {}
    for method, probability in masked.items():
        values[f"{prefix}/{method}/average_drop"] = metrics.nanmean(
            metrics.average_drop(confidence, probability)
        )
        values[f"{prefix}/{method}/increase_in_confidence"] = metrics.nanmean(
            metrics.increase_in_confidence(confidence, probability)
        )
    return values


def _trust_values(
    network: nn.Module,
    fixed: FixedBatch,
    explanation: Explanation,
    prefix: str,
    config: MonitorConfig,
    check_index: int,
) -> dict[str, Tensor]:
    """Deletion / insertion AUC, ROAD and the randomisation Spearman of every method, when due."""
    faithful, sane = config.trust_due(check_index)
    maps, targets, values = explanation.maps, explanation.targets, {}
    if faithful and {"deletion", "insertion"} & set(config.faithfulness):
        scores = metrics.deletion_insertion(
            network, fixed.images, maps, targets, output_key=config.output_key
        )
        for method, (deletion, insertion) in scores.items():
            values |= {
                f"{prefix}/{method}/deletion_auc": metrics.nanmean(deletion),  # flat maps: NaN, left out
                f"{prefix}/{method}/insertion_auc": metrics.nanmean(insertion),
            }
        wanted = {f"{name}_auc" for name in config.faithfulness}
        values = {key: value for key, value in values.items() if key.rsplit("/", 1)[1] in wanted}
    if faithful and "road" in config.faithfulness:
        for method, result in metrics.road(
            network, fixed.images, maps, targets, output_key=config.output_key
        ).items():
            values[f"{prefix}/{method}/road"] = metrics.nanmean(result["combined"])
    if sane:
        correlations = metrics.model_randomization(
            network,
            fixed.images,
            list(maps),
            config.target_layer,
            targets,
            output_key=config.output_key,
            method_options={m: o for m, o in config.method_options.items() if m in maps},
        )
        values |= {
            f"{prefix}/{method}/randomization_spearman": metrics.nanmean(value)
            for method, value in correlations.items()
        }
    return values


def _slice_values(
    fixed: FixedBatch, explanation: Explanation, masks: dict[str, Tensor], slices: Slices
) -> dict[str, Tensor]:
    """Per slice: the number of samples, the accuracy (NaN without labels) and each mask's area."""
    values = {"count": slices.membership.sum(dim=1).float()}
    predicted = prediction(explanation.scorer, explanation.logits)[1]
    values["accuracy"] = metrics.slice_means(correctness(predicted, fixed.labels), slices.membership)
    for name, mask in masks.items():
        area = (mask > 0.5).flatten(1).float().mean(dim=1)
        carried = torch.where(
            area > 0, area, torch.full_like(area, float("nan"))
        )  # as enrichment: empty left out
        values[f"area/{name}"] = metrics.slice_means(carried, slices.membership)
    return values


def _to_host(values: dict[str, Tensor]) -> dict[str, list[float]]:
    """Every tensor's values as floats, from **one** device-to-host transfer."""
    if not values:
        return {}
    flat = [value.detach().reshape(-1).float() for value in values.values()]
    numbers = torch.cat(flat).tolist()
    out, start = {}, 0
    for key, value in zip(values, flat, strict=True):
        out[key] = numbers[start : start + value.numel()]
        start += value.numel()
    return out


def run_check(
    network: nn.Module,
    fixed: FixedBatch,
    config: MonitorConfig,
    history: AttentionHistory,
    faults: Faults,
    step: int,
    autocast_dtype: torch.dtype | None = None,
    check_index: int = 1,
) -> CheckResult:
    """Explain ``fixed`` for every target choice; compute and return the scalars; update ``history``.

    The task (:mod:`lightning_cam.monitor.tasks`) decides the rows: multi-label images get a row per positive
    class, segmentation images their largest labelled class (its region is the mask ``label``).
    Scalars of the first target choice are tagged ``<name>/<method>/...``, those of a later choice
    ``<name>/<target>/<method>/...``; mask metrics also per group (``.../<mask>/<group>``). The trust
    metrics (first target choice only) run when ``check_index`` (this check's number, from 1) is due.
    """
    view = task_view(fixed, infer_task(config.task, fixed.labels, fixed.boxes), config.num_samples)
    fixed = view.fixed
    outlined = {"segmentation": "label", "detection": "boxes"}.get(view.task)
    regions = (fixed.masks or {}).get(outlined) if outlined else None
    result = CheckResult(
        step,
        display_images(fixed.images, config.image_mean, config.image_std, config.display_channel),
        fixed.labels,
        regions,
    )
    masks, slices = _fitting_masks(fixed, faults), Slices.of(fixed, config)
    values: dict[str, Tensor] = {}
    for index, (choice, task_target) in enumerate(_choices(view, config)):
        explanation = explain_target(network, fixed, choice, config, faults, autocast_dtype, task_target)
        if explanation is None:
            continue
        name = config.target_name(choice)
        prefix = config.name if index == 0 else f"{config.name}/{name}"
        values |= _target_values(network, fixed, explanation, prefix, name, masks, slices, history, config)
        result.scalars |= _seconds(explanation, prefix)
        result.targets.append(_target_result(fixed, explanation, name, prefix, config, faults))
        if index == 0:
            values |= _trust_values(network, fixed, explanation, prefix, config, check_index)
            for method, maps in explanation.maps.items():
                history.add_to_timeline(series_key(name, method), step, maps)
            values |= {f"slice/{k}": v for k, v in _slice_values(fixed, explanation, masks, slices).items()}
    host = _to_host(values)
    result.scalars |= _scalars(host, slices, config)
    if result.targets and result.targets[0].prefix == config.name:
        _record(history, result, host, slices, masks)
        _record_trust(history, result, len(fixed.images))
    return result


def _choices(view: TaskView, config: MonitorConfig) -> list[tuple[TargetChoice, Targets]]:
    """Each target choice with the target it explains (``None``: the choice's own). A multi-label model
    explains each positive class (``"label"``); a segmentation model explains a class index ``c`` as
    the sum of its logits over the pixels predicted as ``c``, and ``"predicted"`` / ``"label"`` as each
    image's largest labelled class over its label region (one grid for both)."""
    if view.target is None:
        return [(choice, None) for choice in config.targets]
    if view.task != "segmentation":
        return [("label", view.target)]
    pairs: list[tuple[TargetChoice, Targets]] = []
    for choice in config.targets:
        pair = (choice, segmentation(choice)) if isinstance(choice, int) else ("label", view.target)
        if pair[0] not in [chosen for chosen, _ in pairs]:
            pairs.append(pair)
    return pairs


def _target_result(
    fixed: FixedBatch, explanation: Explanation, name: str, prefix: str, config: MonitorConfig, faults: Faults
) -> TargetResult:
    """One target choice's maps with each sample's caption and, for a detector, the detections drawn
    with their class and score."""
    shown = shown_detections(explanation, config.detection_score_threshold)
    if shown is None:
        return TargetResult(name, prefix, explanation, captions(fixed, explanation, config, faults))
    labels = [
        [
            f"{config.class_name(int(c))} {s:.0%}"
            for c, s in zip(item["labels"].tolist(), item["scores"].tolist(), strict=True)
        ]
        for item in shown
    ]
    caption = captions(fixed, explanation, config, faults, labels)
    return TargetResult(name, prefix, explanation, caption, [item["boxes"] for item in shown], labels)


def _target_values(
    network: nn.Module,
    fixed: FixedBatch,
    explanation: Explanation,
    prefix: str,
    name: str,
    masks: dict[str, Tensor],
    slices: Slices,
    history: AttentionHistory,
    config: MonitorConfig,
) -> dict[str, Tensor]:
    return _map_values(explanation, prefix, name, masks, slices, history) | _confidence_values(
        network, fixed, explanation, prefix, config
    )


def _seconds(explanation: Explanation, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{name}/seconds" if name != "pass" else f"{prefix}/pass_seconds": value
        for name, value in explanation.seconds.items()
        if name == "pass" or name in explanation.maps
    }


def _scalars(host: dict[str, list[float]], slices: Slices, config: MonitorConfig) -> dict[str, float]:
    """The logged scalars: each metric over all samples, and mass / enrichment / accuracy per group."""
    scalars: dict[str, float] = {}
    for key, numbers in host.items():
        if key.startswith("slice/"):
            continue
        scalars[key] = numbers[0]
        if len(numbers) > 1:
            scalars |= {f"{key}/{group}": numbers[i] for i, group in slices.groups()}
    if "slice/accuracy" in host:
        accuracy = host["slice/accuracy"]
        scalars |= {f"{config.name}/accuracy/{group}": accuracy[i] for i, group in slices.groups()}
    return scalars


def _record(
    history: AttentionHistory,
    result: CheckResult,
    host: dict[str, list[float]],
    slices: Slices,
    masks: dict[str, Tensor],
) -> None:
    """Keep the first target's mass and enrichment per method, mask and slice for the bias report."""
    first = result.targets[0]
    for method in first.explanation.maps:
        for mask_name in masks:
            mass = host[f"{first.prefix}/{method}/mass/{mask_name}"]
            enrichment = host[f"{first.prefix}/{method}/enrichment/{mask_name}"]
            for i, part in enumerate(slices.names):
                history.record(
                    series_key(method, mask_name, part),
                    {
                        "mass": mass[i],
                        "enrichment": enrichment[i],
                        "area": host[f"slice/area/{mask_name}"][i],
                        "count": host["slice/count"][i],
                        "accuracy": host["slice/accuracy"][i],
                        "step": float(result.step),
                    },
                )


def _record_trust(history: AttentionHistory, result: CheckResult, batch: int) -> None:
    """Keep each method's latest trust metrics and its own time per image, for the trust table."""
    first = result.targets[0]
    for method in first.explanation.maps:
        kept = history.trust.setdefault(method, {})
        kept["seconds_per_image"] = first.explanation.seconds.get(method, float("nan")) / batch
        for metric in TRUST_METRICS:
            tag = f"{first.prefix}/{method}/{metric}"
            if tag in result.scalars:
                kept[metric] = result.scalars[tag]
