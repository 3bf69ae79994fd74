"""The strategies a model uses, per class, found in the audit's maps and confirmed on the model.

Each class's maps (the first method's) are clustered (:mod:`.spray`); each cluster is a
:class:`Strategy` with its members, their accuracy and confidence, its mean map and where it looks:
its **attention region** (where the strategy's mean map exceeds the rest of its class's by at least
half its largest excess, at most a tenth of the image, the largest excesses first).

What sets a shortcut apart from the object is measured, not assumed (:mod:`.patterns`): a shortcut is
the same pattern at the same place in the strategy's images, whatever the object does. Its figures:

- **repetition** (``[0, 1]``): the share of the strategy's attention (its excess over the rest of the
  class, on the attention region) that lies on pixels where its images hold one content that other
  classes' images lack there (at most :data:`MAX_TESTED` members, spread from the cluster's centre
  outwards, against at most :data:`MAX_OTHERS` images of other classes). An object that moves and changes colour scores low;
  a tag, a caption, a line along an edge, a logo score near 1.
- the **region** the tests use: the whole repeated pattern the attention sits on, of any shape (a
  row, a strip, glyphs, several blobs), grown from the attention region along the pattern
  (:func:`.patterns.pattern_region`); where the attention sits on no pattern, the attention region.
- **occlusion drop**: the members' mean probability of their class minus the same with the region
  showing what other classes' images typically show there (their per-pixel median): covering the
  object lowers it too, so it measures reliance, not its kind;
- **transplant**: the region pasted from the members onto other classes' images that the model does
  not put in the class, against the same region pasted from another such image (the same place with
  other content): ``transplant_gain``, the mean rise of the class's probability, and ``flip_rate``,
  the share turned into the class, each minus the control's;
- **reliance** = the mean of the occlusion drop and the transplant gain, in ``[0, 1]``: covering the
  region lowers the class's probability and pasting it raises it; partial where either is small (a
  spot the model sees because it lies on the object, and that does not move other images, is half);
- **evidence** = repetition x reliance: the figure that ranks the strategies.

The rule: a strategy is **flagged** as a shortcut suspect when its evidence is at least
:data:`EVIDENCE_THRESHOLD`, its region is a repeated pattern and covers at most
:data:`MAX_PATTERN_AREA` of the image (a difference everywhere, such as a colour tint, has no place
to point at: its verdict is "global difference"). Evidence of at least :data:`LEAN_THRESHOLD`, with
both tests moving the class's probability, is reported as partial reliance ("leans on it"). A spot the
model looks at without using it has no reliance; an object that carries its class has no repetition:
neither is flagged. Where a figure cannot be measured (fewer than :data:`MIN_MEMBERS` images, no image of
another class, no image the model does not already put in the class) it is NaN and ``unknown`` says
why: "cannot tell", never "no suspect".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lightning_cam.auditing.patterns import (
    ON_PATTERN,
    dilated,
    kth_smallest,
    pattern_floor,
    pattern_near,
    repetition,
)
from lightning_cam.auditing.shards import agreed, exchange, rank_and_world, sharded
from lightning_cam.auditing.spray import SMALL_SIZE, cluster_classes
from lightning_cam.batches import chunked
from lightning_cam.engine.capture import preserved_state
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.report.tables import Report

__all__ = [
    "EVIDENCE_THRESHOLD",
    "LEAN_THRESHOLD",
    "MAX_PATTERN_AREA",
    "Strategy",
    "find_strategies",
    "strategy_rank",
    "strategy_report",
    "strategy_scalars",
]

EVIDENCE_THRESHOLD = 0.5
LEAN_THRESHOLD = 0.2
LEAN_EFFECT = 0.05
MAX_PATTERN_AREA = 0.25
MIN_MEMBERS = 4
REGION_CELLS = SMALL_SIZE * SMALL_SIZE // 10  # an attention region covers at most a tenth of the image
MERGE_IOU = 0.5
MAX_TESTED = 8
MAX_OTHERS = 32
OTHERS_POOL = (
    2 * MAX_OTHERS
)  # images spread over the whole set, fetched once; each class's others come from them
PROTOTYPES = 4
FETCHED_STRATEGIES = 32  # strategies whose tested images are fetched together (256 images at most)
TAGGED_STRATEGIES = 5  # per-strategy tags: the flagged ones and this many more, by evidence

Fetch = Callable[[list[list[int]]], Iterator[Tensor]]  # parts of dataset indices -> their images, in turn


@dataclass(frozen=True)
class Strategy:
    """One strategy of one class: its members (``indices``, dataset indices, nearest the centre first),
    ``size`` and ``share`` of the class, the members' ``accuracy`` and ``confidence``, ``mean_map``
    ``[H, W]`` (in ``[0, 1]``), the ``region`` ``[H, W]`` bool the tests use (at the input's size), its
    ``region_area`` and whether it is a repeated pattern (``on_pattern``), ``prototypes`` (dataset
    indices of tested members, from the centre outwards) and their ``prototype_images``; the figures ``repetition``,
    ``occlusion_drop``, ``transplant_gain``, ``flip_rate``, ``reliance`` and ``evidence`` (NaN where a
    test cannot tell, ``unknown`` saying why), and whether it is ``flagged`` (see the module's rule).
    ``tested``: whether the model was tested at all: a strategy that looks at no pattern repeated at one
    place, or whose repetition is under :data:`LEAN_THRESHOLD`, cannot lean on a shortcut whatever the
    tests say (evidence is at most its repetition), so its tests are skipped (their figures NaN) and its
    verdict is ``"no"``."""

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
    on_pattern: bool
    prototypes: list[int]
    prototype_images: Tensor
    repetition: float
    occlusion_drop: float
    transplant_gain: float
    flip_rate: float
    reliance: float
    evidence: float
    flagged: bool
    unknown: str = ""
    tested: bool = True

    @property
    def verdict(self) -> str:
        """``"shortcut suspect"``; ``"leans on it"`` (partial reliance: evidence at least
        :data:`LEAN_THRESHOLD` on a pattern at one place, covering it lowers the class's probability and
        pasting it raises it, each by at least :data:`LEAN_EFFECT`); ``"global difference"`` (the same,
        over more than :data:`MAX_PATTERN_AREA` of the image); ``"cannot tell"``; or ``"no"``."""
        if self.flagged:
            return "shortcut suspect"
        if not self.tested:
            return "no"
        if self.evidence != self.evidence:
            return "cannot tell"
        effects = min(self.occlusion_drop, self.transplant_gain)
        if not (self.on_pattern and self.evidence >= LEAN_THRESHOLD and effects >= LEAN_EFFECT):
            return "no"
        return "leans on it" if self.region_area <= MAX_PATTERN_AREA else "global difference"

    def place(self) -> str:
        """Where the strategy looks, in words: "a pattern repeated in these images, a 2% region at the top
        left", or "a 10% region at the centre with no pattern repeated across these images"."""
        where = f"a {_percent(self.region_area)} region at the {_where(self.region)}"
        if not self.on_pattern:
            return f"{where} with no pattern repeated across these images"
        if self.region_area > MAX_PATTERN_AREA:
            return f"a difference over {where}: much of the image (a colour, a background), not one place"
        return f"a pattern repeated in these images, {where}"

    def words(self) -> str:
        """The strategy in plain words, e.g. "class `cross`, 41 images (38 %): attention on a pattern
        repeated in these images, a 2% region at the top left (repetition 0.97); covering it drops their
        confidence by 0.71; pasting it raises other classes' images' probability of `cross` by 0.64 and
        turns 90% more of them than other content there does: evidence 0.69, shortcut suspect"."""
        if not self.tested:
            return (
                f"class `{self.class_name}`, {self.size} images ({self.share:.0%}): attention on {self.place()} "
                f"(repetition {_figure(self.repetition)}): nothing there to lean on, not tested"
            )
        pasting = (
            f"pasting it raises other classes' images' probability of `{self.class_name}` by "
            f"{self.transplant_gain:.2f} and turns {self.flip_rate:.0%} more of them than other content there does"
            if self.transplant_gain == self.transplant_gain
            else "pasting it cannot be tested"
        )
        verdict = {"cannot tell": f"cannot tell ({self.unknown})", "no": "no shortcut suspect"}.get(
            self.verdict, self.verdict
        )
        return (
            f"class `{self.class_name}`, {self.size} images ({self.share:.0%}): attention on {self.place()} "
            f"(repetition {_figure(self.repetition)}); covering it drops their confidence by "
            f"{self.occlusion_drop:.2f}; {pasting}: evidence {_figure(self.evidence)}, {verdict}"
        )


def _figure(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


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


def small_region(excess: Tensor) -> Tensor:
    """``[SMALL_SIZE ** 2]`` bool, on the small maps' grid: where the members' mean small map exceeds the
    rest's (``excess``, :func:`_excess`) by at least half the largest excess, at most
    :data:`REGION_CELLS` of the cells (the largest excesses first)."""
    region = (excess > 0) & (excess >= 0.5 * excess.max())
    if int(region.sum()) > REGION_CELLS:
        region = excess >= excess.topk(REGION_CELLS).values[-1]
    return region


def _at_size(cells: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Values on the small grid ``[..., SMALL_SIZE ** 2]`` at the input's size ``[..., H, W]`` (float)."""
    grid = cells.reshape(-1, 1, SMALL_SIZE, SMALL_SIZE).float()
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(grid, size=size, mode=mode, **options).view(*cells.shape[:-1], *size)


@dataclass(frozen=True)
class _Look:
    """Where a strategy looks, at the input's size: its ``attention`` region ``[H, W]`` bool, the attention's
    ``weights`` (its excess there), the region grown by ``cell`` pixels (``near``: the maps' resolution)
    and its ``mean_map`` (the members' mean small map, in ``[0, 1]``, on the CPU)."""

    attention: Tensor
    weights: Tensor
    near: Tensor
    cell: int
    mean_map: Tensor


def _looks(smalls: list[tuple[Tensor, Tensor]], size: tuple[int, int], device: torch.device) -> list[_Look]:
    """:class:`_Look` of each strategy (its members' small maps and the rest of its class's), at ``size``:
    the strategies of a part at once (one interpolation and one dilation for all)."""
    excess = torch.stack([_excess(members, rest) for members, rest in smalls])
    cells = torch.stack([small_region(values) for values in excess])
    attention = _at_size(cells, size).to(device) > 0.5
    weights = _at_size(excess, size, "bilinear").to(device).clamp(min=0) * attention
    cell = max(1, round(2 * max(size) / SMALL_SIZE))  # two cells: the maps are coarser than the small grid
    near = dilated(attention, cell)
    means = _at_size(torch.stack([members.mean(dim=0) for members, _ in smalls]), size, "bilinear")
    means = (means / means.flatten(1).max(dim=1).values.clamp(min=1e-12).view(-1, 1, 1)).cpu()
    return [_Look(*parts, cell, mean) for *parts, mean in zip(attention, weights, near, means, strict=True)]


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
        """The class's probability and the predictions (the caller holds the state guard), in chunks."""
        outputs = [select_output(self.network(chunk), self.output_key) for chunk in images.split(256)]
        return _probability_and_prediction(torch.cat(outputs), class_index)


def _occlusion_drop(
    model: _Model, members: Tensor, region: Tensor, class_index: int, others: Tensor
) -> float:
    """The members' mean drop in their class's probability when the region shows what other classes'
    images typically show there (their per-pixel median; each image's mean colour without others)."""
    fill = (
        kth_smallest(others, (len(others) - 1) // 2)
        if len(others)
        else members.mean(dim=(2, 3), keepdim=True)
    )
    filled = torch.where(region, fill, members)
    probability = model(torch.cat([members, filled]), class_index)[0].view(2, len(members))
    return float((probability[0] - probability[1]).mean())


def _transplant(
    model: _Model, donors: Tensor, recipients: Tensor, region: Tensor, class_index: int
) -> Tensor:
    """``[gain, flip rate]`` of pasting the region from the donors (in turn) onto the recipients (images of
    other classes not predicted as the class), each minus the same with the region pasted from another
    recipient (the same place with other content: a model that moves to the class at any change there is
    not reading the strategy's region). NaN with fewer than two recipients."""
    if len(recipients) < 2:
        return torch.full((2,), float("nan"))
    sources = donors[torch.arange(len(recipients), device=donors.device) % len(donors)]
    contents = torch.stack([sources, recipients.roll(1, dims=0)])  # [2, n, C, H, W]
    pasted = torch.where(region, contents, recipients[None]).flatten(0, 1)
    probability, predicted = model(pasted, class_index)
    turned = (predicted == class_index).float().view(2, -1)
    figures = torch.stack([probability.view(2, -1).mean(dim=1), turned.mean(dim=1)])  # [figure, pasted from]
    return (figures[:, 0] - figures[:, 1]).cpu()


def _spread(indices: Tensor, count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spaced."""
    if len(indices) <= count:
        return indices.tolist()
    return indices[torch.linspace(0, len(indices) - 1, count).round().long()].tolist()


@dataclass(frozen=True)
class _Pool:
    """Images spread over the whole set, fetched once: every class takes its others from them."""

    images: Tensor  # on the device
    floors: dict[tuple[int, ...], Tensor] = field(default_factory=dict)

    def others(self, outside: Tensor) -> Tensor:
        """The images at the positions ``outside``: a copy made when asked (a thousand classes' copies kept
        at once would take 32 x 1,000 images)."""
        return self.images[outside.to(self.images.device)]

    def floor(self, outside: Tensor, others: Tensor) -> Tensor:
        """:func:`.patterns.pattern_floor` of ``others``, the images at the positions ``outside``, computed
        once for the classes that take the same others."""
        key = tuple(outside.tolist())
        if key not in self.floors:
            self.floors[key] = pattern_floor(others)
        return self.floors[key]


@dataclass(frozen=True)
class _ClassData:
    class_index: int
    class_name: str
    indices: Tensor  # dataset indices of the class's images
    small: Tensor  # their small maps
    correct: Tensor
    confidence: Tensor
    outside: Tensor  # the positions in the pool of the class's others (other classes, at most MAX_OTHERS)
    recipient: Tensor  # [len(outside)] bool: the model does not put that image in the class

    @property
    def usable(self) -> Tensor:
        """The class's images whose map is not flat."""
        return ~self.small.isnan().any(dim=1)


def _merged(clusters: Tensor, data: _ClassData) -> list[Tensor]:
    """The clusters (labels ``[n]``, ``-1`` for flat maps) as member masks, those whose regions overlap
    (intersection over union at least :data:`MERGE_IOU`) merged into one: the same spot found twice is
    one strategy. Largest first."""
    groups = [clusters == number for number in range(int(clusters.max()) + 1)]
    if len(groups) < 2:
        return groups  # nothing to merge
    regions = [small_region(_excess(data.small[g], data.small[~g & data.usable])) for g in groups]
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


@dataclass(frozen=True)
class _Pattern:
    region: Tensor  # [H, W] bool on the device: what the tests cover and paste
    on_pattern: bool
    repetition: float
    unknown: str


def _pattern(tested: Tensor, others: Tensor, floor: Tensor, look: _Look) -> _Pattern:
    """How much of the strategy's attention (``look``) lies on a pattern repeated in its images (against
    the ``others``, images of other classes, and their ``floor``), and the whole pattern it sits on."""
    if len(tested) < MIN_MEMBERS or not len(others):
        why = f"fewer than {MIN_MEMBERS} images" if len(tested) < MIN_MEMBERS else "no image of another class"
        return _Pattern(look.attention, False, float("nan"), f"repetition: {why}")
    pattern, repeated = pattern_near(tested, others, look.near, floor)
    everywhere = repeated >= ON_PATTERN
    if bool(pattern.any()) and float(everywhere.float().mean()) > MAX_PATTERN_AREA:
        pattern = everywhere  # a difference over much of the image (a tint, a background): all of it
    found = bool(pattern.any())
    return _Pattern(
        pattern if found else look.attention, found, repetition(repeated, look.weights, look.cell), ""
    )


def _reliance(drop: float, gain: float) -> tuple[float, str]:
    """The mean of the occlusion drop and the transplant gain (in ``[0, 1]``), and why it cannot tell."""
    if gain != gain:
        return float(
            "nan"
        ), "pasting: no image of another class that the model does not already put in the class"
    return max(0.0, min(1.0, (drop + gain) / 2)), ""


def _tested(
    model: _Model, data: _ClassData, others: Tensor, tested: Tensor, region: Tensor, testable: bool
) -> tuple[float, float, float, float, str]:
    """The tests on the model (``others``: the class's others, :meth:`_Pool.others`): occlusion drop,
    transplant gain, flip rate, reliance and why it cannot tell; all NaN (and nothing said) when the
    strategy is not ``testable``."""
    nan = float("nan")
    if not testable:
        return nan, nan, nan, nan, ""
    drop = _occlusion_drop(model, tested, region, data.class_index, others)
    recipients = others[data.recipient.to(others.device)] if len(others) else others
    gain, flip = _transplant(model, tested, recipients, region, data.class_index).tolist()
    return (drop, gain, flip, *_reliance(drop, gain))


def _members(data: _ClassData, members: Tensor) -> tuple[Tensor, list[int]]:
    """The dataset indices of the class's images ``members`` (bool over the class), nearest their centre
    first, and the :data:`MAX_TESTED` of them to test, from the centre outwards (the cluster, not its
    densest core)."""
    small = data.small[members]
    indices = data.indices[members][(small - small.mean(dim=0)).norm(dim=1).argsort()]
    return indices, _spread(indices, MAX_TESTED)


def _strategy(
    model: _Model,
    pool: _Pool,
    data: _ClassData,
    members: Tensor,
    number: int,
    chosen: tuple[Tensor, list[int], Tensor],
    look: _Look,
) -> Strategy:
    """The strategy of the class's images ``members`` (bool over the class); ``chosen``: their
    :func:`_members` and the tested ones' images; ``look``: where it looks; ``pool``: where the class's
    others are."""
    indices, chosen_indices, tested = chosen
    others = pool.others(data.outside)
    pattern = _pattern(tested, others, pool.floor(data.outside, others), look)
    testable = pattern.on_pattern and pattern.repetition >= LEAN_THRESHOLD  # else evidence < LEAN_THRESHOLD
    drop, gain, flip, reliance, why_not = _tested(model, data, others, tested, pattern.region, testable)
    evidence = pattern.repetition * reliance
    area = float(pattern.region.float().mean())
    return Strategy(
        class_index=data.class_index,
        class_name=data.class_name,
        number=number,
        indices=indices.tolist(),
        size=int(members.sum()),
        share=float(members.float().mean()),
        accuracy=float(data.correct[members].nanmean()),
        confidence=float(data.confidence[members].mean()),
        mean_map=look.mean_map,
        region=pattern.region.cpu(),
        region_area=area,
        on_pattern=pattern.on_pattern,
        prototypes=chosen_indices[:PROTOTYPES],
        prototype_images=tested[:PROTOTYPES].cpu(),
        repetition=pattern.repetition,
        occlusion_drop=drop,
        transplant_gain=gain,
        flip_rate=flip,
        reliance=reliance,
        evidence=evidence,
        flagged=pattern.on_pattern and area <= MAX_PATTERN_AREA and evidence >= EVIDENCE_THRESHOLD,
        unknown="; ".join(why for why in (pattern.unknown, why_not) if why),
        tested=testable or pattern.repetition != pattern.repetition,
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
    loads images by dataset index. Under ``torch.distributed`` each rank finds the strategies of every
    ``world``-th class and they are exchanged: every rank ends with the same list, in class order. A
    sharded network's forwards are collective: every rank then finds them all, in step."""
    classes = rows["label"] if bool((rows["label"] >= 0).any()) else rows["target"]
    values = classes.unique().tolist()
    rank, world = (0, 1) if sharded(network) else rank_and_world()
    mine = values[rank::world]
    found = agreed(
        "the strategies",
        lambda: _strategies_of(network, rows, small, fetch, classes, mine, class_name, output_key),
    )
    if world == 1:
        return found
    gathered = [strategy for part in exchange(found) for strategy in part]
    order = {value: position for position, value in enumerate(values)}
    return sorted(gathered, key=lambda s: (order[s.class_index], s.number))


def _strategies_of(
    network: nn.Module,
    rows: dict[str, Tensor],
    small: Tensor,
    fetch: Fetch,
    classes: Tensor,
    values: list[int],
    class_name: Callable[[int], str],
    output_key: OutputKey,
) -> list[Strategy]:
    """The strategies of the classes ``values`` (``classes``: each row's class)."""
    model = _Model(network, output_key)
    device_type = next((p.device.type for p in network.parameters()), "cpu")
    with preserved_state(network, device_type), torch.inference_mode():
        spread = torch.tensor(_spread(torch.arange(len(classes)), OTHERS_POOL), dtype=torch.long)
        prepared = [
            _class_data(rows, small, inside, value, class_name(value), spread, classes[spread] != value)
            for value, inside in zip(values, _class_rows(classes, values), strict=True)
        ]
        clusters = cluster_classes([data.small for data in prepared])  # batched over classes
        groups = [
            (data, number, members)
            for data, labels in zip(prepared, clusters, strict=True)
            for number, members in enumerate(_merged(labels, data))
        ]
        parts = chunked(groups, FETCHED_STRATEGIES)
        chosen = [[_members(data, members) for data, _, members in part] for part in parts]
        # one fetch: the pool, then each part's tested members (through the loader's workers where slow)
        images = fetch(
            [rows["index"][spread].tolist()] + [[i for _, t in picked for i in t] for picked in chosen]
        )
        pool = _Pool(next(images))
        return [
            strategy
            for part, picked, fetched in zip(parts, chosen, images, strict=True)
            for strategy in _tested_part(model, pool, part, picked, fetched)
        ]


def _tested_part(
    model: _Model,
    pool: _Pool,
    groups: list[tuple[_ClassData, int, Tensor]],
    chosen: list[tuple[Tensor, list[int]]],
    fetched: Tensor,
) -> list[Strategy]:
    """The strategies of ``groups`` (each a class's data, the strategy's number and its members), whose
    :func:`_members` are ``chosen`` and the tested ones' images ``fetched``, one strategy after another."""
    images = fetched.split([len(t) for _, t in chosen])
    smalls = [(data.small[members], data.small[~members & data.usable]) for data, _, members in groups]
    looks = _looks(smalls, (fetched.shape[-2], fetched.shape[-1]), fetched.device)
    return [
        _strategy(model, pool, data, members, number, (*picked, tested), look)
        for (data, number, members), picked, tested, look in zip(groups, chosen, images, looks, strict=True)
    ]


def _class_rows(classes: Tensor, values: list[int]) -> list[Tensor]:
    """The rows of each class of ``values`` (``classes``: each row's class), in the rows' order: one sort
    of the rows, not a mask over all of them per class."""
    order = classes.argsort(stable=True)
    ordered = classes[order]
    wanted = torch.tensor(values, dtype=classes.dtype, device=classes.device)
    starts = torch.searchsorted(ordered, wanted).tolist()
    ends = torch.searchsorted(ordered, wanted, right=True).tolist()
    return [order[start:end] for start, end in zip(starts, ends, strict=True)]


def _class_data(
    rows: dict[str, Tensor],
    small: Tensor,
    inside: Tensor,
    value: int,
    name: str,
    pool: Tensor,
    other: Tensor,
) -> _ClassData:
    """What the strategies of class ``value`` (its rows: ``inside``) are found and tested with; its others
    are at most :data:`MAX_OTHERS` of the images of the ``pool`` (rows) of another class (``other``, bool
    over the pool), spread over it."""
    outside = torch.tensor(_spread(other.nonzero().flatten(), MAX_OTHERS), dtype=torch.long)
    return _ClassData(
        value,
        name,
        rows["index"][inside],
        small[inside],
        rows["correct"][inside],
        rows["confidence"][inside],
        outside,
        rows["predicted"][pool[outside]].cpu() != value,  # the audit's predictions: no forward needed
    )


def strategy_scalars(strategies: list[Strategy], root: str = "audit") -> dict[str, float]:
    """``<root>/strategies/count``, ``.../flagged`` (how many are flagged), ``.../cannot_tell`` (how many
    have no evidence), ``.../evidence_max``; and for the flagged strategies and the
    :data:`TAGGED_STRATEGIES` of highest evidence besides, ``<root>/strategies/<class>/<k>/evidence``,
    ``.../size``, ``.../flip_rate`` and ``.../occlusion_drop`` (readable at a thousand classes: the full
    list is the table)."""
    evidence = torch.tensor([s.evidence for s in strategies], dtype=torch.float64)
    known = evidence[~evidence.isnan()]
    scalars = {
        f"{root}/strategies/count": float(len(strategies)),
        f"{root}/strategies/flagged": float(sum(s.flagged for s in strategies)),
        f"{root}/strategies/cannot_tell": float(sum(s.verdict == "cannot tell" for s in strategies)),
        f"{root}/strategies/evidence_max": float(known.max()) if len(known) else float("nan"),
    }
    ranked = sorted(strategies, key=strategy_rank)
    tagged = [s for s in ranked if s.flagged] + [s for s in ranked if not s.flagged][:TAGGED_STRATEGIES]
    for strategy in tagged:
        part = f"{root}/strategies/{strategy.class_name.replace('/', '_')}/{strategy.number}"
        scalars |= {
            f"{part}/evidence": strategy.evidence,
            f"{part}/size": float(strategy.size),
            f"{part}/flip_rate": strategy.flip_rate,
            f"{part}/occlusion_drop": strategy.occlusion_drop,
        }
    return scalars


def strategy_rank(strategy: Strategy) -> tuple[bool, bool, float]:
    """Flagged first, then the tested by evidence (highest first), those that cannot tell, the untested last."""
    evidence = strategy.evidence
    return (not strategy.flagged, not strategy.tested, -evidence if evidence == evidence else float("inf"))


STRATEGY_COLUMNS = [
    "class",
    "strategy",
    "images",
    "share of class",
    "accuracy",
    "region",
    "repetition",
    "occlusion drop",
    "transplant gain",
    "flip rate",
    "evidence",
    "verdict",
]


def strategy_report(strategies: list[Strategy]) -> Report:
    """A row per strategy, flagged first, then by evidence; the readings: each flagged strategy and each
    partial reliance in words, the strategies that cannot tell and why, and what was tested when nothing
    is flagged."""
    ranked = sorted(strategies, key=strategy_rank)
    rows: list[list[object]] = [
        [
            s.class_name,
            s.number,
            s.size,
            _share(s.share),
            _share(s.accuracy),
            f"{_percent(s.region_area)} {_where(s.region)}" + (" (pattern)" if s.on_pattern else ""),
            _figure(s.repetition),
            _figure(s.occlusion_drop),
            _figure(s.transplant_gain),
            _share(s.flip_rate),
            _figure(s.evidence),
            s.verdict,
        ]
        for s in ranked
    ]
    return Report(list(STRATEGY_COLUMNS), rows, _readings(ranked))


def _share(value: float) -> str:
    return "n/a" if value != value else _percent(value)


def _readings(ranked: list[Strategy]) -> list[str]:
    said = [
        s.words() for s in ranked if s.verdict in ("shortcut suspect", "leans on it", "global difference")
    ]
    unknown = [s for s in ranked if s.verdict == "cannot tell"]
    if unknown:
        said.append(
            f"cannot tell for {len(unknown)} of {len(ranked)} strategies: "
            + "; ".join(f"class `{s.class_name}` #{s.number} ({s.unknown})" for s in unknown[:3])
            + ("; ..." if len(unknown) > 3 else "")
        )
    known = [s for s in ranked if s.evidence == s.evidence]
    untested = sum(not s.tested for s in ranked)
    local = [s for s in known if s.on_pattern and s.region_area <= MAX_PATTERN_AREA]
    if (known or untested) and not any(s.flagged for s in ranked):
        highest = (
            f"; the highest on a pattern at one place is {local[0].evidence:.2f} (class `{local[0].class_name}`, "
            f"strategy {local[0].number})"
            if local
            else "; none looks at a pattern at one place"
        )
        skipped = (
            f" ({untested} of them look at no pattern repeated at one place, or repetition under "
            f"{LEAN_THRESHOLD:g}: nothing there to lean on, so the model was not tested on them)"
            if untested
            else ""
        )
        classes = len({s.class_index for s in ranked})
        among = (
            f"the {len(ranked) - len(unknown)} of {len(ranked)} strategies that could be tested"
            if unknown
            else f"{len(ranked)} strategies"
        )
        said.append(
            f"no shortcut suspect among {among} over {classes} classes{skipped}: tested whether each "
            f"looks at a pattern repeated at one place in its images that the model relies on (covering it "
            f"lowers the class's probability and pasting it raises it); none has evidence of at least "
            f"{EVIDENCE_THRESHOLD:g}{highest}"
        )
    return said
