"""Faithfulness: do the maps point at what drives the prediction?

- **Deletion / insertion** (Petsiuk et al., 2018, RISE): pixels are ranked by map value (highest
  first, ties by position); at ``counts = 0, s, 2s, ..., N`` (``s = ceil(N / steps)``) deletion
  replaces the top ``count`` pixels of the image by a baseline (zeros by default) and insertion
  starts from the baseline and restores them. The score is the target class's softmax
  probability; each curve's area under it (trapezoid rule over ``count / N``) is the result.
  A faithful map gives a **low deletion** AUC (the probability falls fast) and a **high
  insertion** AUC.
- **ROAD** (Rong et al., 2022, "Remove and Debias"): for each fraction ``f``, the top-``f`` pixels
  (MoRF) or the bottom-``f`` (LeRF) are removed and filled by noisy linear imputation (each
  removed pixel is the weighted mean of its 8 neighbours, 1/6 for edge and 1/12 for diagonal
  neighbours, solved jointly, plus Gaussian noise), which leaves no tell-tale hole for the model
  to react to. ``morf`` and ``lerf`` are the mean change of the target's softmax probability;
  ``combined = (lerf - morf) / 2``: **higher is more faithful**.

Both run on images ``[B, C, H, W]`` with maps ``[B, H, W]`` and on volumes ``[B, C, D, H, W]`` with
maps ``[B, D, H, W]`` (voxels ranked alike; ROAD's imputation in 3-D weighs the 6 face, 12 edge
and 8 corner neighbours 4 : 2 : 1, as the 2-D weights 1/6 : 1/12 weigh edges and corners 2 : 1; see
:mod:`~lightning_cam.metrics.imputation`).

Every perturbed image of every method, image and step is built on the model's device and scored
in batched forwards, in chunks sized to a memory budget, inside the state guard (the model's
modes and the global RNG states are left as they were; ROAD's noise comes from its own seeded
generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import model_device_dtype, preserved_state
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.engine.methods.perturbation import default_chunk_size, run_in_chunks
from lightning_cam.engine.targets import Targets, make_scorer
from lightning_cam.metrics.attention import flat_maps
from lightning_cam.metrics.imputation import complementary_imputations

__all__ = ["deletion_insertion", "pixel_ranks", "road"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Maps = Tensor | Mapping[str, Tensor]


def pixel_ranks(maps: Tensor, dims: int = 2) -> Tensor:
    """``[..., N]``: each pixel's place when the map's pixels (its last ``dims`` axes: 2 for images, 3
    for volumes) are sorted highest first (ties by position)."""
    order = torch.argsort(maps.flatten(-dims), dim=-1, descending=True, stable=True)
    return torch.argsort(order, dim=-1)


def _flat_as_nan(stacked: Tensor, scores: Tensor) -> Tensor:
    """``scores`` ``[M, B]`` with NaN where the map is flat: it ranks no pixel above another (the order
    would be the pixels' positions), so its curve is no evidence."""
    flat = flat_maps(stacked.flatten(0, 1)).view(scores.shape).to(scores.device)
    return torch.where(flat, torch.full_like(scores, float("nan")), scores)


def _stacked(maps: Maps, images: Tensor) -> tuple[list[str] | None, Tensor]:
    """The maps as ``[M, B, *size]``; ``ValueError`` unless each is one map per image at its size."""
    if images.dim() not in (4, 5):
        raise ValueError(
            f"images must be [B, C, H, W] or volumes [B, C, D, H, W]; got shape {list(images.shape)}."
        )
    named = {"maps": maps} if isinstance(maps, Tensor) else dict(maps)
    expected = [images.shape[0], *images.shape[2:]]
    for name, value in named.items():
        if not isinstance(value, Tensor) or list(value.shape) != expected:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{name} must hold one map per image at the images' size, {expected}; got {got}. explain() returns "
                f"maps at the input's size; resize others with lightning_cam.engine.spatial.resize."
            )
    stacked = torch.stack(list(named.values()))
    return (None if isinstance(maps, Tensor) else list(named)), stacked


def _scores(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    rows: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    output_key: OutputKey,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """The target's probability on the images and on the perturbed images that ``rows`` rows make
    (``build(row indices) -> (images, image indices)``), in chunks of ``chunk_size`` rows (by default
    ``default_chunk_size``'s)."""
    device, dtype = model_device_dtype(model, images)
    with preserved_state(model, device.type), torch.inference_mode():
        images = images.to(device, dtype)
        output = select_output(model(images), output_key)
        scorer = make_scorer(targets, output)
        original = scorer.probability(output)

        def run(start: int, stop: int) -> Tensor:
            perturbed, image_index = build(torch.arange(start, stop, device=device))
            return scorer.probability(select_output(model(perturbed.to(dtype)), output_key), image_index)

        chunk = chunk_size or default_chunk_size(images[0], rows)
        return original, run_in_chunks(rows, chunk, run, "faithfulness")


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    targets: Targets = None,
    steps: int = 20,
    baseline: Tensor | None = None,
    *,
    output_key: OutputKey = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor] | dict[str, tuple[Tensor, Tensor]]:
    """``(deletion_auc [B], insertion_auc [B])`` of ``maps`` ``[B, H, W]`` (volumes: ``[B, D, H, W]``;
    or, for a dict of methods' maps, that pair per method, every method scored in the same batched
    forwards).

    ``targets``: the class per image (``None``: the predicted one); ``baseline``: what deleted
    pixels become, broadcastable to ``images`` (zeros by default).

    Example::

        >>> maps = lc.explain(model, images, ("gradcam", "scorecam"))  # doctest: +SKIP
        >>> scores = deletion_insertion(model, images, maps)  # {"gradcam": (deletion, insertion), ...}
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    names, stacked = _stacked(maps, images)
    methods, batch, pixels = stacked.shape[0], images.shape[0], math.prod(images.shape[2:])
    step = math.ceil(pixels / steps)
    counts = [*range(0, pixels, step), pixels]
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device), images.dim() - 2)  # [M, B, N]
    flat = images.to(device).flatten(2)
    base = (
        (torch.zeros_like(images) if baseline is None else baseline.expand_as(images)).to(device).flatten(2)
    )
    count_of = torch.tensor(counts, device=device)
    per_method = batch * len(counts) * 2

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        method, rest = rows // per_method, rows % per_method
        image, point, insertion = rest // (2 * len(counts)), (rest // 2) % len(counts), rest % 2 == 1
        top = ranks[method, image] < count_of[point][:, None]  # [n, N]
        keep = (top == insertion[:, None])[:, None]
        perturbed = torch.where(keep, flat[image], base[image])
        return perturbed.view(-1, *images.shape[1:]), image

    _, scores = _scores(model, images, targets, methods * per_method, build, output_key, chunk_size)
    curves = scores.view(methods, batch, len(counts), 2)
    fractions = count_of.to(curves.dtype) / pixels
    deletion = torch.trapezoid(curves[..., 0], fractions, dim=-1).to(images.device)
    insertion = torch.trapezoid(curves[..., 1], fractions, dim=-1).to(images.device)
    deletion, insertion = _flat_as_nan(stacked, deletion), _flat_as_nan(stacked, insertion)
    if names is None:
        return deletion[0], insertion[0]
    return {name: (deletion[i], insertion[i]) for i, name in enumerate(names)}


class _RoadCuts:
    """ROAD's removals as cuts of the ranked pixels: cut ``k`` parts the top ``k`` from the rest, and one
    imputation of both parts (``complementary_imputations``) gives MoRF at ``k`` removed and LeRF at ``N
    - k`` removed: the default fractions 0.1 ... 0.9 need 9 cuts for their 18 removals."""

    def __init__(self, counts: list[int], pixels: int, device: torch.device) -> None:
        sizes = sorted({*counts, *(pixels - count for count in counts)})
        self.sizes = torch.tensor(sizes, device=device)
        self.morf = torch.tensor([sizes.index(count) for count in counts], device=device)
        self.lerf = torch.tensor([sizes.index(pixels - count) for count in counts], device=device)
        self.wanted = torch.zeros(len(sizes), 2, dtype=torch.bool, device=device)  # [cut, (MoRF, LeRF)]
        self.wanted[self.morf, 0], self.wanted[self.lerf, 1] = True, True

    def by_fraction(self, scores: Tensor, methods: int, batch: int) -> Tensor:
        """``[methods, batch, fractions, 2]`` (MoRF, LeRF) from the scores of the wanted images, in the
        order ``build`` made them."""
        by_cut = scores.new_full((methods * batch, *self.wanted.shape), float("nan"))
        by_cut[self.wanted.expand_as(by_cut)] = scores
        by_cut = by_cut.view(methods, batch, *self.wanted.shape)
        return torch.stack([by_cut[:, :, self.morf, 0], by_cut[:, :, self.lerf, 1]], dim=-1)


def road(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    targets: Targets = None,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = 0.01,
    *,
    output_key: OutputKey = None,
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor] | dict[str, dict[str, Tensor]]:
    """``{"morf": [B], "lerf": [B], "combined": [B]}`` for ``maps`` ``[B, H, W]`` (volumes: ``[B, D, H,
    W]``; or that dict per method for a dict of maps). ``noise`` is the imputation noise's std, drawn from a generator
    seeded with ``seed`` (the global RNGs are not touched). MoRF at ``f`` and LeRF at ``1 - f`` come from one
    imputation (``complementary_imputations``); ``chunk_size`` counts the perturbed images per forward
    (rounded down to whole pairs, at least one pair).

    Example::

        >>> road(model, images, maps["gradcam"])["combined"]  # doctest: +SKIP
        tensor([0.21, 0.08])
    """
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1), e.g. (0.1, ..., 0.9); got {fractions!r}.")
    names, stacked = _stacked(maps, images)
    size = tuple(images.shape[2:])
    methods, batch, pixels = stacked.shape[0], images.shape[0], math.prod(size)
    device = model_device_dtype(model, images)[0]
    ranks = pixel_ranks(stacked.to(device), len(size))
    cuts = _RoadCuts([round(f * pixels) for f in fractions], pixels, device)
    inputs = images.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    per_method = batch * len(cuts.sizes)

    def build(rows: Tensor) -> tuple[Tensor, Tensor]:
        method, rest = rows // per_method, rows % per_method
        image, cut = rest // len(cuts.sizes), rest % len(cuts.sizes)
        top = (ranks[method, image] < cuts.sizes[cut][:, None]).view(-1, *size)
        morf, lerf = complementary_imputations(inputs[image], top, noise, generator)
        wanted = cuts.wanted[cut]
        return torch.stack([morf, lerf], dim=1)[wanted], image[:, None].expand(-1, 2)[wanted]

    # the imputation is faster in fewer, larger calls: no CPU cap on the rows per chunk, only the memory budget
    images_per_chunk = chunk_size or default_chunk_size(inputs[0], 2 * methods * per_method, cpu_rows=None)
    original, scores = _scores(
        model, images, targets, methods * per_method, build, output_key, max(1, images_per_chunk // 2)
    )
    change = cuts.by_fraction(scores, methods, batch) - original.view(1, batch, 1, 1)
    morf, lerf = (_flat_as_nan(stacked, change[..., i].mean(dim=2).to(images.device)) for i in (0, 1))
    results = [
        {"morf": morf[i], "lerf": lerf[i], "combined": (lerf[i] - morf[i]) / 2} for i in range(methods)
    ]
    return results[0] if names is None else dict(zip(names, results, strict=True))
