"""The strategies a model uses, per class, found in the audit's maps and confirmed on the model.

Each class's maps (the first method's) are clustered (:mod:`.spray`); each cluster is a
:class:`Strategy` with its members, their accuracy and confidence, its mean map, its **region**
(where the strategy's mean map exceeds the rest of its class's by at least half its largest excess,
at most :data:`MAX_REGION_AREA` of the image, the largest excesses first) and two tests on the model:

- **occlusion**: the members' probability of their class, minus the same with the region filled by
  each image's mean colour (``occlusion_drop``; members nearest the cluster's centre, at most
  :data:`MAX_TESTED`);
- **transplant**: the region pasted from the members onto images of the other classes (at most
  :data:`MAX_RECIPIENTS`, spread over the dataset): ``flip_rate`` is the share of those not already
  predicted as the class that the model then assigns to it.

The rule: a strategy is **flagged** as a shortcut suspect when its region is small (at most
:data:`MAX_REGION_AREA` of the image, so not the object at large) and pasting it moves at least
:data:`FLIP_THRESHOLD` of the other classes' images to its class: the spot alone carries the class.
A model that only looks at a spot it does not use moves nothing, and is not flagged. What this finds
best is a shortcut at a fixed position; one that moves from image to image gives no common region.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lightning_cam.auditing.spray import SMALL_SIZE, cluster_maps
from lightning_cam.engine.capture import preserved_state
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.report.tables import Report

__all__ = [
    "FLIP_THRESHOLD",
    "MAX_REGION_AREA",
    "Strategy",
    "find_strategies",
    "strategy_report",
    "strategy_scalars",
]

MAX_REGION_AREA = 0.05
REGION_CELLS = SMALL_SIZE * SMALL_SIZE // 10  # a region covers at most a tenth of the image
MERGE_IOU = 0.5
SPOT_CELLS = (1, 2, 4, 9, 16, 25)  # the spots tried, in cells of the small maps' grid
FLIP_THRESHOLD = 0.5
MAX_TESTED = 8
MAX_RECIPIENTS = 32
PROTOTYPES = 4

Fetch = Callable[[list[int]], Tensor]  # dataset indices -> their images, on the model's device


@dataclass(frozen=True)
class Strategy:
    """One strategy of one class: its members (``indices``, dataset indices, nearest the centre first),
    ``size`` and ``share`` of the class, the members' ``accuracy`` and ``confidence``, ``mean_map``
    ``[H, W]`` (in ``[0, 1]``), ``region`` ``[H, W]`` bool at the input's size and its ``region_area``,
    ``prototypes`` (the dataset indices nearest the centre) and their ``prototype_images``, the tests'
    ``occlusion_drop`` and ``flip_rate``, and whether it is ``flagged``."""

    class_index: int
    class_name: str
    number: int
    indices: list[int]
    size: int
    share: float
    accuracy: float
    confidence: float
    mean_map: Tensor
    region: Tensor
    region_area: float
    prototypes: list[int]
    prototype_images: Tensor
    occlusion_drop: float
    flip_rate: float
    flagged: bool

    def words(self) -> str:
        """The strategy in plain words, e.g. "class `cross`, 41 images (38 %): attention on a 3 % patch
        at the top left; pasting it turns 100 % of other classes' images into `cross`: shortcut suspect"."""
        flip = "n/a" if self.flip_rate != self.flip_rate else f"{self.flip_rate:.0%}"
        verdict = ": shortcut suspect" if self.flagged else ""
        return (
            f"class `{self.class_name}`, {self.size} images ({self.share:.0%}): attention on a {_percent(self.region_area)} "
            f"patch at the {_where(self.region)}; pasting it turns {flip} more of other classes' images into "
            f"`{self.class_name}` than other content there does; covering it drops their confidence by "
            f"{self.occlusion_drop:.2f}{verdict}"
        )


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else f"{share:.1%}"


def _where(region: Tensor) -> str:
    """Where a region's centre lies, in words ("top left", "centre", ...)."""
    rows, columns = region.nonzero(as_tuple=True)
    if not len(rows):
        return "nowhere"
    height, width = region.shape
    vertical = ("top", "middle", "bottom")[min(2, int(3 * rows.float().mean() / height))]
    horizontal = ("left", "centre", "right")[min(2, int(3 * columns.float().mean() / width))]
    return "centre" if (vertical, horizontal) == ("middle", "centre") else f"{vertical} {horizontal}"


def _excess(members: Tensor, rest: Tensor) -> Tensor:
    """``[SMALL_SIZE ** 2]``: the members' mean small map minus the rest's (uniform when there is no rest)."""
    baseline = rest.mean(dim=0) if len(rest) else torch.full_like(members[0], 1.0 / members.shape[1])
    return members.mean(dim=0) - baseline


def small_region(members: Tensor, rest: Tensor) -> Tensor:
    """``[SMALL_SIZE ** 2]`` bool, on the small maps' grid: where the members' mean small map exceeds the
    rest's by at least half the largest excess, at most :data:`REGION_CELLS` of the cells (the largest
    excesses first)."""
    excess = _excess(members, rest)
    region = (excess > 0) & (excess >= 0.5 * excess.max())
    if int(region.sum()) > REGION_CELLS:
        region = excess >= excess.topk(REGION_CELLS).values[-1]
    return region


def _at_size(region: Tensor, size: tuple[int, int]) -> Tensor:
    """A small-grid region ``[SMALL_SIZE ** 2]`` at the input's size ``[H, W]`` (nearest)."""
    cells = region.view(1, 1, SMALL_SIZE, SMALL_SIZE).float()
    return F.interpolate(cells, size=size, mode="nearest")[0, 0] > 0.5


def _probability_and_prediction(output: Tensor, class_index: int) -> tuple[Tensor, Tensor]:
    """The class's probability and the predicted class of logits ``[n, K]`` (one logit: binary)."""
    logits = output.float()
    if logits.shape[1] == 1:
        positive = logits[:, 0].sigmoid()
        return (positive if class_index == 1 else 1 - positive), (logits[:, 0] > 0).long()
    probabilities = logits.softmax(dim=1)
    return probabilities[:, class_index], probabilities.argmax(dim=1)


@dataclass(frozen=True)
class _Model:
    network: nn.Module
    output_key: OutputKey

    def __call__(self, images: Tensor, class_index: int) -> tuple[Tensor, Tensor]:
        """The class's probability and the predictions (the caller holds the state guard)."""
        output = select_output(self.network(images), self.output_key)
        return _probability_and_prediction(output, class_index)


def _occlusion_drop(model: _Model, members: Tensor, region: Tensor, class_index: int) -> float:
    """The members' mean drop in their class's probability when the region takes each image's mean colour."""
    filled = torch.where(region, members.mean(dim=(2, 3), keepdim=True), members)
    return float((model(members, class_index)[0] - model(filled, class_index)[0]).mean())


def _flip_rates(
    model: _Model, donors: Tensor, recipients: Tensor, regions: Tensor, class_index: int
) -> Tensor:
    """Per region ``[R, H, W]``, of the recipients (images of other classes not predicted as the class):
    the share turned to the class when the region is pasted from the donors (in turn), minus the share
    turned when it is pasted from another recipient (the same spot with other content: a model that moves
    to the class at any change there is not reading the strategy's spot). NaN with fewer than two."""
    if len(recipients) < 2:
        return torch.full((len(regions),), float("nan"))
    sources = donors[torch.arange(len(recipients), device=donors.device) % len(donors)]
    contents = torch.stack([sources, recipients.roll(1, dims=0)])  # [2, n, C, H, W]
    pasted = torch.where(regions[None, :, None, None], contents[:, None], recipients[None, None])
    flat = pasted.flatten(0, 2)
    turned = torch.cat([model(chunk, class_index)[1] for chunk in flat.split(256)]) == class_index
    rates = turned.view(2, len(regions), len(recipients)).float().mean(dim=2).cpu()
    return rates[0] - rates[1]


def _spread(indices: Tensor, count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spaced."""
    if len(indices) <= count:
        return indices.tolist()
    return indices[torch.linspace(0, len(indices) - 1, count).round().long()].tolist()


@dataclass(frozen=True)
class _ClassData:
    class_index: int
    class_name: str
    indices: Tensor  # dataset indices of the class's images
    small: Tensor  # their small maps
    correct: Tensor
    confidence: Tensor
    recipients: Tensor  # images of the other classes, on the device

    @property
    def usable(self) -> Tensor:
        """The class's images whose map is not flat."""
        return ~self.small.isnan().any(dim=1)


def _merged(clusters: Tensor, data: _ClassData) -> list[Tensor]:
    """The clusters (labels ``[n]``, ``-1`` for flat maps) as member masks, those whose regions overlap
    (intersection over union at least :data:`MERGE_IOU`) merged into one: the same spot found twice is
    one strategy. Largest first."""
    groups = [clusters == number for number in range(int(clusters.max()) + 1)]
    regions = [small_region(data.small[g], data.small[~g & data.usable]) for g in groups]
    owner = list(range(len(groups)))
    for later in range(len(groups)):
        for earlier in range(later):
            union = (regions[earlier] | regions[later]).sum()
            if union and (regions[earlier] & regions[later]).sum() / union >= MERGE_IOU:
                owner[later] = owner[earlier]
                break
    merged = [
        torch.stack([g for g, o in zip(groups, owner, strict=True) if o == root]).any(dim=0)
        for root in sorted(set(owner))
    ]
    return sorted(merged, key=lambda members: -int(members.sum()))


def _essential_region(
    model: _Model, donors: Tensor, data: _ClassData, excess: Tensor, region: Tensor
) -> tuple[Tensor, float, bool]:
    """``(region [H, W], flip_rate, essential)``: when the whole region (``small_region``) turns at least
    :data:`FLIP_THRESHOLD` of the recipients, the smallest spot (the strategy's largest excesses, in
    :data:`SPOT_CELLS` steps) that does too, its rate and ``True``; else the whole region, its rate and
    ``False``."""
    size = (donors.shape[-2], donors.shape[-1])
    whole = _at_size(region, size).to(donors.device)
    if not len(data.recipients):
        return whole, float("nan"), False
    rate = float(_flip_rates(model, donors, data.recipients, whole[None], data.class_index)[0])
    if not rate >= FLIP_THRESHOLD:  # NaN too
        return whole, rate, False
    ranked = excess.argsort(descending=True)[: int((excess > 0).sum())]
    spots = [ranked[:count] for count in SPOT_CELLS if count <= len(ranked)]
    cells = [torch.zeros_like(region).index_fill(0, spot, True) for spot in spots]
    candidates = torch.stack([_at_size(cell, size) for cell in cells]).to(donors.device)
    for candidate, spot_rate in zip(
        candidates,
        _flip_rates(model, donors, data.recipients, candidates, data.class_index).tolist(),
        strict=True,
    ):
        if spot_rate >= FLIP_THRESHOLD:
            return candidate, spot_rate, True
    return whole, rate, False


def _strategy(model: _Model, data: _ClassData, members: Tensor, number: int, fetch: Fetch) -> Strategy:
    """The strategy of the class's images ``members`` (bool over the class)."""
    small = data.small[members]
    centre = small.mean(dim=0)
    order = (small - centre).norm(dim=1).argsort()
    indices = data.indices[members][order]
    tested = fetch(indices[:MAX_TESTED].tolist())
    size = (tested.shape[-2], tested.shape[-1])
    rest = data.small[~members & data.usable]
    region, flip, essential = _essential_region(
        model, tested, data, _excess(small, rest), small_region(small, rest)
    )
    occlusion = _occlusion_drop(model, tested, region, data.class_index)
    mean = F.interpolate(
        centre.view(1, 1, SMALL_SIZE, SMALL_SIZE), size=size, mode="bilinear", align_corners=False
    )
    area = float(region.float().mean())
    return Strategy(
        class_index=data.class_index,
        class_name=data.class_name,
        number=number,
        indices=indices.tolist(),
        size=int(members.sum()),
        share=float(members.float().mean()),
        accuracy=float(data.correct[members].nanmean()),
        confidence=float(data.confidence[members].mean()),
        mean_map=(mean[0, 0] / mean.max().clamp(min=1e-12)).cpu(),
        region=region.cpu(),
        region_area=area,
        prototypes=indices[:PROTOTYPES].tolist(),
        prototype_images=tested[:PROTOTYPES].cpu(),
        occlusion_drop=occlusion,
        flip_rate=flip,
        flagged=essential and area <= MAX_REGION_AREA,
    )


def find_strategies(
    network: nn.Module,
    rows: dict[str, Tensor],
    small: Tensor,
    fetch: Fetch,
    class_name: Callable[[int], str],
    output_key: OutputKey = None,
) -> list[Strategy]:
    """Every class's strategies (the class: the label; the target where there are no labels), from the
    audit's ``rows`` and the first method's small maps ``small`` ``[N, d]`` (rows' order); ``fetch``
    loads images by dataset index. Every rank holding the same rows finds the same strategies."""
    classes = rows["label"] if bool((rows["label"] >= 0).any()) else rows["target"]
    model, found = _Model(network, output_key), []
    device_type = next((p.device.type for p in network.parameters()), "cpu")
    with preserved_state(network, device_type), torch.inference_mode():
        for value in classes.unique().tolist():
            found += _class_strategies(model, rows, small, classes == value, value, class_name(value), fetch)
    return found


def _class_strategies(
    model: _Model, rows: dict[str, Tensor], small: Tensor, inside: Tensor, value: int, name: str, fetch: Fetch
) -> list[Strategy]:
    """The strategies of class ``value`` (its images: ``inside``)."""
    eligible = ~inside & (rows["predicted"] != value)  # the audit's own predictions: no forward needed
    recipients = fetch(_spread(rows["index"][eligible], MAX_RECIPIENTS)) if bool(eligible.any()) else None
    data = _ClassData(
        value,
        name,
        rows["index"][inside],
        small[inside],
        rows["correct"][inside],
        rows["confidence"][inside],
        recipients if recipients is not None else torch.empty(0),
    )
    merged = _merged(cluster_maps(data.small), data)
    return [_strategy(model, data, members, number, fetch) for number, members in enumerate(merged)]


def strategy_scalars(strategies: list[Strategy], root: str = "audit") -> dict[str, float]:
    """``<root>/strategies/<class>/count``, ``.../<class>/<k>/size``, ``.../flip_rate``,
    ``.../occlusion_drop`` and ``<root>/strategies/flagged`` (how many are flagged)."""
    scalars: dict[str, float] = {f"{root}/strategies/flagged": float(sum(s.flagged for s in strategies))}
    counts = Counter(strategy.class_name.replace("/", "_") for strategy in strategies)
    scalars |= {f"{root}/strategies/{name}/count": float(count) for name, count in counts.items()}
    for strategy in strategies:
        part = f"{root}/strategies/{strategy.class_name.replace('/', '_')}/{strategy.number}"
        scalars |= {
            f"{part}/size": float(strategy.size),
            f"{part}/flip_rate": strategy.flip_rate,
            f"{part}/occlusion_drop": strategy.occlusion_drop,
        }
    return scalars


STRATEGY_COLUMNS = [
    "class",
    "strategy",
    "images",
    "share of class",
    "accuracy",
    "confidence",
    "region area",
    "occlusion drop",
    "flip rate",
    "shortcut suspect",
]


def strategy_report(strategies: list[Strategy]) -> Report:
    """A row per strategy; the readings: each flagged strategy in words (flagged first), else one line
    saying that no spot carries a class alone."""

    def share(value: float) -> str:
        return "n/a" if value != value else _percent(value)

    rows: list[list[object]] = [
        [
            s.class_name,
            s.number,
            s.size,
            share(s.share),
            share(s.accuracy),
            f"{s.confidence:.2f}",
            share(s.region_area),
            f"{s.occlusion_drop:.2f}",
            share(s.flip_rate),
            "yes" if s.flagged else "no",
        ]
        for s in strategies
    ]
    flagged = [s.words() for s in strategies if s.flagged]
    classes = len({s.class_index for s in strategies})
    readings = flagged or [
        f"no shortcut suspect: {len(strategies)} strategies over {classes} classes, and no small spot of theirs "
        f"turns other classes' images into their class"
    ]
    return Report(list(STRATEGY_COLUMNS), rows, readings)
