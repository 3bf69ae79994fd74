"""The audit's figures per slice of the dataset (``all``, each class, each group): count, accuracy,
mean confidence, and per method and mask the mean attention mass, the enrichment (the slice's mean
mass over its mean mask area) and the pointing-game hit rate, with 95 % percentile-bootstrap
intervals for accuracy, mass and enrichment.

The bootstrap resamples the slice's images with replacement from its own seeded ``torch.Generator``
on the rows' device, so no random state of training is read or advanced. Pure functions of the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Figure", "aggregate", "bootstrap_means", "slices_of", "statistics"]

WITH_INTERVAL = ("accuracy", "mass", "enrichment")
MAX_RESAMPLED_VALUES = 1 << 24  # bootstrap draws are made in chunks of at most this many values


@dataclass(frozen=True)
class Figure:
    """One aggregate: its value and, where bootstrapped, the 95 % interval (NaN otherwise)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")


def slices_of(
    columns: dict[str, Tensor], class_name: Callable[[int], str], group_names: Sequence[str]
) -> dict[str, Tensor]:
    """``all``, ``class=<name>`` per class (the label; the target without labels) and ``group=<name>``
    per group present, each as ``[n]`` bool over the rows."""
    classes = columns["label"] if bool((columns["label"] >= 0).all()) else columns["target"]
    slices = {"all": torch.ones_like(classes, dtype=torch.bool)}
    for value in sorted(set(classes.tolist())):
        slices[f"class={class_name(int(value))}"] = classes == value
    for code in sorted(set(columns["group"].tolist()) - {-1}):
        slices[f"group={group_names[int(code)]}"] = columns["group"] == code
    return slices


def _methods(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(method for method, _ in pairs))


def _value_columns(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return (
        ["correct", "confidence"]
        + [
            name
            for method, mask in pairs
            for name in (f"{method}/mass/{mask}", f"area/{mask}", f"{method}/hit/{mask}")
        ]
        + [f"{method}/flat" for method in _methods(pairs)]
    )


def _values(columns: dict[str, Tensor], pairs: Sequence[tuple[str, str]]) -> Tensor:
    """The value columns ``[N, V]``; each pair's area column is NaN where its method's map is flat (its
    mass is NaN), so that mass and area are averaged over the same images."""
    values = torch.stack([columns[name].double() for name in _value_columns(pairs)], dim=1)
    for i in range(len(pairs)):
        mass, area = values[:, 2 + 3 * i], values[:, 3 + 3 * i]
        values[:, 3 + 3 * i] = torch.where(mass.isnan(), torch.full_like(area, float("nan")), area)
    return values


def statistics(means: Tensor, pairs: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """The figures from the column means ``[..., V]`` (columns in :func:`_value_columns` order):
    enrichment is mean mass over mean area, both over the images whose mask is not empty and whose
    map is not flat; ``<method>/flat_fraction`` is the share of flat maps (left out of mass and
    enrichment).

    Example::

        >>> statistics(torch.tensor([0.5, 0.9, 0.1, 0.02, 1.0, 0.0]), [("gradcam", "cue")])["gradcam/enrichment/cue"]
        tensor(5.)
    """
    figures = {"accuracy": means[..., 0], "confidence": means[..., 1]}
    for i, (method, mask) in enumerate(pairs):
        mass, area, hit = means[..., 2 + 3 * i], means[..., 3 + 3 * i], means[..., 4 + 3 * i]
        figures |= {
            f"{method}/mass/{mask}": mass,
            f"{method}/enrichment/{mask}": mass / area,
            f"{method}/pointing_game/{mask}": hit,
            f"{method}/area/{mask}": area,
            f"area/{mask}": area,
        }
    for j, method in enumerate(_methods(pairs)):
        figures[f"{method}/flat_fraction"] = means[..., 2 + 3 * len(pairs) + j]
    return figures


def bootstrap_means(values: Tensor, resamples: int, generator: torch.Generator) -> Tensor:
    """``[resamples, V]``: the NaN-skipping column means of ``values`` ``[n, V]`` over ``resamples``
    draws of ``n`` rows with replacement (chunked to at most ``MAX_RESAMPLED_VALUES`` values)."""
    count, width = values.shape
    chunk = max(1, MAX_RESAMPLED_VALUES // max(1, count * width))
    means = []
    for start in range(0, resamples, chunk):
        draws = torch.randint(
            count, (min(chunk, resamples - start), count), generator=generator, device=values.device
        )
        means.append(values[draws].nanmean(dim=1))
    return torch.cat(means)


def aggregate(
    columns: dict[str, Tensor],
    pairs: Sequence[tuple[str, str]],
    slices: dict[str, Tensor],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Figure]]:
    """Per slice, every figure of :func:`statistics` and ``count``; accuracy, mass and enrichment with
    their 95 % bootstrap interval (``resamples`` draws; ``0``: no intervals). Rows must come in a
    fixed order (the audit sorts them by dataset index) for the intervals to repeat exactly."""
    values = _values(columns, pairs)
    generator = torch.Generator(device=values.device).manual_seed(seed)
    result = {}
    for name, members in slices.items():
        rows = values[members]
        point = statistics(rows.nanmean(dim=0), pairs)
        estimates = torch.stack(list(point.values()))
        low = high = torch.full_like(estimates, float("nan"))
        if resamples and len(rows):
            resampled = torch.stack(
                list(statistics(bootstrap_means(rows, resamples, generator), pairs).values()), 1
            )
            low, high = resampled.nanquantile(0.025, dim=0), resampled.nanquantile(0.975, dim=0)
        numbers = torch.stack([estimates, low, high]).tolist()  # one device-to-host transfer per slice
        figures = {"count": Figure(float(len(rows)))}
        for i, key in enumerate(point):
            interval = key.split("/")[-2] in WITH_INTERVAL if "/" in key else key in WITH_INTERVAL
            figures[key] = Figure(*(column[i] for column in numbers)) if interval else Figure(numbers[0][i])
        result[name] = figures
    return result
