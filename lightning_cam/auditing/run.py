"""``audit()``: one pass over a whole dataloader, each rank its own shard, per-image rows gathered
once, figures per class and group with bootstrap intervals, and mean maps. No Lightning in it."""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_cam.auditing.aggregate import Figure, aggregate, slices_of
from lightning_cam.auditing.rows import AuditSettings, MapSums, batch_columns, explain_audited
from lightning_cam.auditing.shards import (
    AuditStates,
    agreed,
    exchange,
    index_batches,
    kept_positions,
    loader_of,
    rank_and_world,
    sharded,
)
from lightning_cam.auditing.spray import SMALL_SIZE, small_maps
from lightning_cam.auditing.strategies import Strategy, find_strategies, strategy_scalars
from lightning_cam.auditing.table import audit_summary, audit_table
from lightning_cam.batches import (
    FixedBatch,
    Unpacked,
    chunked,
    group_name,
    missing_groups_message,
    unpack_batch,
)
from lightning_cam.engine import resolve_methods
from lightning_cam.engine.capture import model_device_dtype, preserved_rng
from lightning_cam.engine.detection import check_score_threshold
from lightning_cam.engine.explainer import NON_FINITE
from lightning_cam.engine.layers import TargetLayer
from lightning_cam.engine.layouts import ReshapeTransform
from lightning_cam.engine.logits import OutputKey
from lightning_cam.report.tables import Report

__all__ = ["AuditResult", "audit"]

WORKERS_WORTH_S = 1.0  # the strategies' images read here for longer: through the loader's workers


@dataclass(frozen=True)
class AuditResult:
    """What an audit found. ``rows``: one value per image and column (sorted by dataset index, on the
    CPU; see :func:`~lightning_cam.auditing.rows.batch_columns`); ``figures``: per slice (``all``,
    ``class=<name>``, ``group=<name>``) its :class:`Figure` s; ``mean_maps``: per method ``[S, H, W]``
    mean maps of the slices in ``map_slices``; ``pairs``: the (method, mask) pairs measured;
    ``strategies``: with ``strategies=True``, each class's :class:`~.strategies.Strategy` s;
    ``target_layers``: the layers explained (``"auto"`` resolved; empty for attention methods)."""

    rows: dict[str, Tensor]
    figures: dict[str, dict[str, Figure]]
    mean_maps: dict[str, Tensor]
    map_slices: list[str]
    pairs: list[tuple[str, str]]
    strategies: list[Strategy] = field(default_factory=list)
    target_layers: list[str] = field(default_factory=list)

    def scalars(self, root: str = "audit") -> dict[str, float]:
        """``<root>/<figure>/<slice>`` (and ``.../ci_low``, ``.../ci_high``), the slice being ``all``, a
        group's name or ``class=<name>``: e.g. ``audit/gradcam/enrichment/cue/site_a/ci_low``."""
        scalars = {}
        for part, figures in self.figures.items():
            tag_part = part.removeprefix("group=")
            for key, figure in figures.items():
                scalars[f"{root}/{key}/{tag_part}"] = figure.value
                if not math.isnan(figure.low):
                    scalars[f"{root}/{key}/{tag_part}/ci_low"] = figure.low
                    scalars[f"{root}/{key}/{tag_part}/ci_high"] = figure.high
        return scalars | (strategy_scalars(self.strategies, root) if self.strategies else {})

    def report(self) -> Report:
        """The table (a row per slice, method and mask) and a plain-words reading per group and mask."""
        return audit_table(self)

    def summary(self) -> dict[str, object]:
        """Everything the audit found as plain data (``json.dumps`` takes it; NaN as ``None``): images,
        layers, every figure with its interval, every strategy with its tests and verdict."""
        return audit_summary(self)


def audit(
    model: nn.Module,
    dataloader: DataLoader,
    methods: str | Sequence[str] = "gradcam",
    target_layer: TargetLayer = "auto",
    targets: str | int = "label",
    unpack: Callable[[Any], Unpacked] | None = None,
    group_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    keys: Mapping[str, str] | None = None,
    output_key: OutputKey = None,
    reshape_transform: ReshapeTransform | str = "auto",
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    strategies: bool = False,
    detection_score_threshold: float = 0.5,
) -> AuditResult:
    """Explain every image of ``dataloader`` and return per-image rows and per-slice figures.

    Batches are read as CAMMonitor reads them (``(images, labels[, masks[, groups]])`` or a dict with
    ``keys``: ``image``, ``label``, ``mask``, ``group``; or ``unpack``). Under ``torch.distributed``
    every rank explains its own shard (a loader whose sampler does not shard gets a
    ``DistributedSampler``); each image is counted once, padded copies are dropped, and every rank
    returns the same result. The model's modes, gradients and RNG states are left as they were.

    ``strategies=True`` also clusters each class's maps (the first method's) into the strategies the
    model uses and tests each region on the model (:mod:`lightning_cam.auditing.strategies`; needs
    scikit-learn: ``pip install lightning-cam[strategies]``): ``AuditResult.strategies``.

    Detection batches (a list of images and of ``{"boxes", "labels"}`` targets): ``targets="label"``
    explains the ground-truth boxes, ``"predicted"`` each image's detections scoring at least
    ``detection_score_threshold``.

    Example::

        >>> result = audit(model, val_loader, ["gradcam", "gradcam++"], group_names=["site A", "site B"])  # doctest: +SKIP
        >>> result.figures["group=site A"]["gradcam/enrichment/cue"]  # doctest: +SKIP
        Figure(value=8.9, low=8.1, high=9.7)
    """
    settings = AuditSettings(
        [m.name for m in resolve_methods(methods)],
        target_layer,
        targets,
        output_key,
        reshape_transform,
        {name: dict(options) for name, options in (method_options or {}).items()},
        strategies,
        check_score_threshold(detection_score_threshold),
    )
    with preserved_rng():  # listing a sampler and starting a loader draw from the global generators
        loader, batches = index_batches(dataloader)
        kept = kept_positions(exchange([i for batch in batches for i in batch]), rank_and_world()[0])
        device = model_device_dtype(model, torch.empty(0))[0]
        read = _reader(unpack, dict(keys or {}))
        pass_result = agreed(  # one rank's failure (out of memory, a bad batch) stops every rank here
            "the audit",
            lambda: _explain_all(model, loader, batches, kept, settings, read, device, group_names, progress),
        )
        result, small = _gathered(pass_result, settings.methods, class_names, bootstrap_samples, seed)
        _warn_nan_outputs(result.rows)
        if small is not None:
            fetch, name = (
                _fetcher(loader, read, device, max(map(len, batches), default=1)),
                _namer(class_names),
            )
            result = replace(
                result, strategies=find_strategies(model, result.rows, small, fetch, name, output_key)
            )
    if group_names is not None and not any(part.startswith("group=") for part in result.figures):
        group_key = (keys or {}).get("group", "group")
        warnings.warn(missing_groups_message("audit", group_names, group_key), UserWarning, stacklevel=2)
    return result


def _warn_nan_outputs(rows: dict[str, Tensor]) -> None:
    """One warning naming, by dataset index, the images whose output is NaN (a NaN image, NaN weights):
    they predict nothing and their maps are all zeros."""
    nan = rows["confidence"].isnan() & rows["predicted"].eq(-1)
    if bool(nan.any()):
        indices = rows["index"][nan].tolist()
        shown = ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "")
        warnings.warn(
            f"audit: {len(indices)} of {len(nan)} images give a NaN output (a NaN image or NaN weights; dataset "
            f"indices {shown}): they predict nothing (left out of the accuracy) and their maps are all zeros "
            "(left out of every mean as flat maps).",
            RuntimeWarning,
            stacklevel=3,
        )


def _reader(unpack: Callable[[Any], Unpacked] | None, keys: dict[str, str]) -> Callable[[Any], FixedBatch]:
    names = {"image": "image", "label": "label", "mask": "mask", "group": "group"} | keys
    return lambda batch: unpack_batch(
        batch, unpack, names["image"], names["label"], names["mask"], names["group"]
    )


@dataclass
class _PassResult:
    columns: dict[str, list[Tensor]]
    sums: MapSums
    groups: list[str]
    layers: list[str] = field(default_factory=list)


def _group_codes(batch: FixedBatch, vocabulary: list[str], group_names: Sequence[str] | None) -> Tensor:
    if batch.groups is None:
        return torch.full((len(batch.images),), -1, dtype=torch.long)
    codes = []
    for group in batch.groups:
        name = group_name(group, group_names)
        if name not in vocabulary:
            vocabulary.append(name)
        codes.append(vocabulary.index(name))
    return torch.tensor(codes, dtype=torch.long)


def _explain_all(
    model: nn.Module,
    loader: DataLoader,
    batches: list[list[int]],
    kept: Tensor,
    settings: AuditSettings,
    read: Callable[[Any], FixedBatch],
    device: torch.device,
    group_names: Sequence[str] | None,
    progress: bool,
) -> _PassResult:
    result = _PassResult({}, MapSums(list(settings.methods)), [])
    start, collective = 0, sharded(model)
    for indices, raw in zip(batches, _progress(loader, len(batches), progress), strict=True):
        keep = kept[start : start + len(indices)]
        start += len(indices)
        batch = _kept(read(raw), keep, device)
        if not len(batch.images):
            if collective:  # a sharded forward needs every rank: explain the padded copies, keep nothing
                explain_audited(model, read(raw).to(device), settings)
            continue
        # the engine names such images by batch position; _warn_nan_outputs names them by dataset index
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", f"[^:]*: {NON_FINITE}", RuntimeWarning)
            explanation = explain_audited(model, batch, settings)
        result.layers = explanation.target_layers
        codes = _group_codes(batch, result.groups, group_names)
        columns = batch_columns(batch, explanation, torch.tensor(indices)[keep], codes)
        if settings.strategies:  # travels with the rows: every rank clusters the same maps
            columns["small_map"] = small_maps(explanation.maps[settings.methods[0]])
        for name, values in columns.items():
            result.columns.setdefault(name, []).append(values)
        classes = columns["label"] if batch.labels is not None else columns["target"]
        members = {f"class={int(c)}": classes == c for c in classes.unique()}
        members |= {f"group={g}": columns["group"] == i for i, g in enumerate(result.groups)}
        result.sums.add(explanation, members | {"all": torch.ones_like(classes, dtype=torch.bool)})
    return result


def _kept(batch: FixedBatch, keep: Tensor, device: torch.device) -> FixedBatch:
    """The batch's images not already held by an earlier rank or position, on ``device``."""
    if bool(keep.all()):
        return batch.to(device)
    rows = keep.nonzero().squeeze(1).tolist()
    masks = None if batch.masks is None else {name: mask[keep] for name, mask in batch.masks.items()}
    labels = None if batch.labels is None else batch.labels[keep]
    groups = None if batch.groups is None else [batch.groups[i] for i in rows]
    return FixedBatch(batch.images[keep], labels, masks, groups).to(device)


def _progress(loader: Iterable[Any], total: int, show: bool) -> Iterable[Any]:
    """The loader with a progress bar on rank 0 (tqdm, installed with Lightning) when ``show``."""
    if not show or rank_and_world()[0] != 0:
        return loader
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return loader
    return tqdm(loader, total=total, desc="lightning-cam audit", unit="batch", leave=False)


def _gathered(
    local: _PassResult,
    methods: list[str],
    class_names: Sequence[str] | None,
    resamples: int,
    seed: int,
) -> tuple[AuditResult, Tensor | None]:
    """Every rank's rows and map sums (torchmetrics sync), sorted by dataset index, then the figures;
    and the small maps (rows' order) when the strategies are asked for."""
    shared = exchange(
        (sorted(local.columns), sorted(local.sums.sums), local.groups, local.sums.size, local.layers)
    )
    groups = sorted({name for _, _, vocabulary, _, _ in shared for name in vocabulary})
    names = sorted({name for column_names, _, _, _, _ in shared for name in column_names})
    map_keys = sorted({key for _, keys, _, _, _ in shared for key in keys}, key=_slice_order)
    size = next((s for _, _, _, s, _ in shared if s is not None), None)
    layers = next((layers for *_, layers in shared if layers), [])
    if not names or size is None:
        raise ValueError("audit found no images in the dataloader; pass a loader with at least one batch.")
    columns = _local_columns(local, names, groups)
    device = columns["index"].device
    sums = torch.zeros(len(map_keys), len(methods), *size, device=device)
    for position, key in enumerate(map_keys):
        if key in local.sums.sums:
            sums[position] = local.sums.sums[key]
    states = AuditStates(names, sums.shape).to(device)
    states.update(columns, sums)
    columns, sums = states.compute()
    order = columns["index"].argsort()
    rows = {name: values[order] for name, values in columns.items()}
    small = rows.pop("small_map", None)
    result = _result(rows, sums, map_keys, methods, class_names, groups, resamples, seed)
    return replace(result, target_layers=layers), small


def _slice_order(key: str) -> tuple[int, int, str]:
    """``all``, then classes by index, then groups by name."""
    kind, _, value = key.partition("=")
    rank = {"all": 0, "class": 1, "group": 2}[kind]
    return (rank, int(value) if kind == "class" else 0, value)


def _local_columns(local: _PassResult, names: list[str], groups: list[str]) -> dict[str, Tensor]:
    """This rank's columns concatenated, its group codes renumbered to the shared sorted ``groups``, and
    a NaN column for any name only another rank has."""
    columns = {name: torch.cat(values) for name, values in local.columns.items()}
    if not columns:  # this rank had no image to explain (fewer images than ranks)
        integer = ("index", "label", "target", "predicted", "group")
        return {
            name: torch.empty(0, dtype=torch.long if name in integer else torch.float32) for name in names
        } | ({"small_map": torch.empty(0, SMALL_SIZE * SMALL_SIZE)} if "small_map" in names else {})
    count = len(columns["index"])
    renumber = torch.tensor([groups.index(name) for name in local.groups] + [-1], dtype=torch.long)
    columns["group"] = renumber.to(columns["group"].device)[columns["group"]]
    nan = torch.full((count,), float("nan"), device=columns["index"].device)
    return {name: columns.get(name, nan) for name in names}


def _namer(class_names: Sequence[str] | None) -> Callable[[int], str]:
    """A class index's name: from ``class_names``, else the index."""
    return lambda index: (
        class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)
    )


def _fetcher(
    loader: DataLoader, read: Callable[[Any], FixedBatch], device: torch.device, batch_size: int
) -> Callable[[list[list[int]]], Iterator[Tensor]]:
    """Images by dataset index for the strategies' tests: each part's, in turn, on ``device``, read as
    the audit read them, the audit's ``batch_size`` at a time (the audit's loader has a batch sampler, so
    its own is None). The first part is read here; the rest through one pass of a loader like the
    audit's, whose workers decode them, where reading them here would take more than
    :data:`WORKERS_WORTH_S` (estimated from the first part: starting workers costs a fraction of a
    second, a thousand classes of JPEGs read here tens of seconds)."""

    def fetch(parts: list[list[int]]) -> Iterator[Tensor]:
        start = time.perf_counter()
        first = [read_here(chunk) for chunk in chunked(parts[0], batch_size)]
        per_image = (time.perf_counter() - start) / max(len(parts[0]), 1)
        rest = [index for part in parts[1:] for index in part]
        if loader.num_workers and per_image * len(rest) > WORKERS_WORTH_S:
            later = (read(raw).images for raw in loader_of(loader, chunked(rest, batch_size)))
        else:
            later = (read_here(chunk) for chunk in chunked(rest, batch_size))
        return _regrouped(itertools.chain(first, later), [len(part) for part in parts], device)

    def read_here(indices: Sequence[int]) -> Tensor:
        return read(loader.collate_fn([loader.dataset[index] for index in indices])).images

    return fetch


def _regrouped(batches: Iterator[Tensor], sizes: list[int], device: torch.device) -> Iterator[Tensor]:
    """The images of ``batches`` regrouped in parts of ``sizes``, on ``device``; ``ValueError`` where they
    come in several sizes (any batch unlike the first)."""
    held: list[Tensor] = []
    seen: set[tuple[int, ...]] = set()
    for size in sizes:
        while sum(map(len, held)) < size:
            held.append(next(batches).to(device))
            seen.add(tuple(held[-1].shape[1:]))
            if len(seen) > 1:
                raise ValueError(
                    "strategies=True compares images pixel by pixel, and this dataset's images come in several "
                    f"sizes ({', '.join('x'.join(map(str, shape)) for shape in sorted(seen))}): resize them to "
                    "one size in the dataset's transform, or audit with strategies=False (the rest of the "
                    "audit takes mixed sizes)."
                )
        joined = torch.cat(held) if held else torch.empty(0, device=device)
        held = [joined[size:]]
        yield joined[:size]


def _result(
    rows: dict[str, Tensor],
    sums: Tensor,
    map_keys: list[str],
    methods: list[str],
    class_names: Sequence[str] | None,
    groups: list[str],
    resamples: int,
    seed: int,
) -> AuditResult:
    class_name = _namer(class_names)
    slices = slices_of(rows, class_name, groups)
    masks = sorted({name.split("/", 1)[1] for name in rows if name.startswith("area/")})
    pairs = [(method, mask) for method in methods for mask in masks]
    figures = aggregate(rows, pairs, slices, resamples, seed)
    shown = [key if not key.startswith("class=") else f"class={class_name(int(key[6:]))}" for key in map_keys]
    none = torch.zeros((), dtype=torch.long, device=sums.device)
    counts = torch.stack([slices[name].sum() if name in slices else none for name in shown])
    means = (sums / counts.clamp(min=1).view(-1, *([1] * (sums.dim() - 1)))).cpu()
    mean_maps = {method: means[:, i] for i, method in enumerate(methods)}
    return AuditResult(
        {name: values.cpu() for name, values in rows.items()}, figures, mean_maps, shown, pairs
    )
