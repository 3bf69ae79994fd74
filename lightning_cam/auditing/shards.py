"""Which images each rank explains, and how its per-image rows reach every rank exactly once.

The loader's batches of dataset indices are listed once (:func:`index_batches`) and the loader is
rebuilt to load exactly those (:func:`loader_of`). Every rank's index list is exchanged (a few
integers), so each rank knows which of its images a rank before it already holds: a
``DistributedSampler`` pads the last shard with copies of the first images, and those copies are
left out here (:func:`kept_positions`) before anything is summed or gathered. The rows and the summed
maps are then synced with torchmetrics (``dist_reduce_fx="cat"`` and ``"sum"``), which also copes
with shards of different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["AuditStates", "exchange", "index_batches", "kept_positions", "loader_of", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``0, 1`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def exchange(value: Any) -> list[Any]:
    """Every rank's ``value`` (a small picklable object), in rank order."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def _sharded(loader: DataLoader) -> DataLoader | None:
    """Under ``torch.distributed``, a loader whose sampler does not shard gets a ``DistributedSampler``
    (in order, padded: the padding is dropped later); ``None`` when it needs nothing."""
    _, world = rank_and_world()
    if world == 1 or isinstance(loader.sampler, DistributedSampler):
        return None
    sampler = DistributedSampler(loader.dataset, shuffle=False)
    return loader_of(loader, list(BatchSampler(sampler, loader.batch_size or 1, loader.drop_last)))


def index_batches(loader: DataLoader) -> tuple[DataLoader, list[list[int]]]:
    """The loader to iterate (sharded under ``torch.distributed`` when it was not) and the dataset
    indices of each of its batches, listed once so that the loader loads exactly those.

    Raises ``ValueError`` for a loader without indices (an ``IterableDataset``, ``batch_size=None``):
    its images cannot be told apart from a sampler's padded copies."""
    loader = _sharded(loader) or loader
    if loader.batch_sampler is None:
        raise ValueError(
            "audit needs a DataLoader over a map-style dataset with batches (batch_size set), so that each "
            f"image has a dataset index; got {type(loader.dataset).__name__} with batch_size=None. Wrap the "
            "data in a map-style Dataset, or pass a DataLoader with batch_size=..."
        )
    batches = [[int(index) for index in batch] for batch in loader.batch_sampler]
    return loader_of(loader, batches), batches


def loader_of(loader: DataLoader, batches: Sequence[Sequence[int]]) -> DataLoader:
    """A loader like ``loader`` (dataset, collate, workers) that loads exactly ``batches``."""
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_sampler=[list(batch) for batch in batches],
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        prefetch_factor=loader.prefetch_factor if workers else None,
    )


def kept_positions(per_rank: Sequence[Sequence[int]], rank: int) -> Tensor:
    """``[n]`` bool over rank ``rank``'s indices: ``False`` where a rank before it, or an earlier
    position of its own, already holds that index (a sampler's padded copy), so every index is kept once.

    Example::

        >>> kept_positions([[0, 2, 4], [1, 3, 0]], rank=1).tolist()
        [True, True, False]
    """
    seen: set[int] = set()
    for earlier in per_rank[:rank]:
        seen.update(earlier)
    kept = []
    for index in per_rank[rank]:
        kept.append(index not in seen)
        seen.add(index)
    return torch.tensor(kept, dtype=torch.bool)


class AuditStates(Metric):
    """The per-image columns (concatenated over ranks) and the summed maps (added over ranks) of an
    audit, synced by torchmetrics when ``compute`` is called on every rank."""

    full_state_update = False

    def __init__(self, columns: Sequence[str], sums_shape: Sequence[int]) -> None:
        super().__init__()
        self.columns = list(columns)
        for position in range(len(self.columns)):
            self.add_state(f"column_{position}", default=[], dist_reduce_fx="cat")
        self.add_state("map_sums", default=torch.zeros(tuple(sums_shape)), dist_reduce_fx="sum")

    def update(self, columns: dict[str, Tensor], map_sums: Tensor) -> None:
        """Add this rank's columns (every name of ``self.columns``) and summed maps."""
        for position, name in enumerate(self.columns):
            getattr(self, f"column_{position}").append(columns[name])
        self.map_sums += map_sums.to(self.map_sums)

    def compute(self) -> tuple[dict[str, Tensor], Tensor]:
        """Every rank's columns, concatenated in rank order, and the summed maps of all ranks."""
        columns = {
            name: dim_zero_cat(getattr(self, f"column_{position}"))
            for position, name in enumerate(self.columns)
        }
        return columns, self.map_sums
