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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "AuditStates",
    "OtherRankError",
    "agreed",
    "exchange",
    "index_batches",
    "kept_positions",
    "loader_of",
    "rank_and_world",
    "sharded",
]

Result = TypeVar("Result")


class OtherRankError(RuntimeError):
    """Raised on every rank whose own work succeeded when another rank's failed, so no rank is left
    waiting in a collective that the failed one will never enter."""


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``0, 1`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded(network: torch.nn.Module) -> bool:
    """Whether ``network``'s parameters are sharded over the ranks (FSDP2's ``DTensor`` parameters,
    FSDP1's wrapped modules): its forward is then collective, so every rank must run the same forwards."""
    if rank_and_world()[1] == 1:
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in network.parameters()) or any(
        type(module).__name__ == "FullyShardedDataParallel" for module in network.modules()
    )


def exchange(value: Any) -> list[Any]:
    """Every rank's ``value`` (a small picklable object), in rank order."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def agreed(what: str, work: Callable[[], Result]) -> Result:
    """Run ``work`` on this rank, then agree with every rank (one small exchange) that all succeeded
    before anything collective follows. A rank whose ``work`` raised re-raises its own error; every
    other rank raises :class:`OtherRankError` naming the failed ranks and their errors. Outside
    ``torch.distributed`` this is ``work()``.

    Example::

        >>> agreed("explaining", lambda: 3)
        3
    """
    if rank_and_world()[1] == 1:
        return work()
    try:
        value, failure = work(), None
    except Exception as error:
        value, failure = None, error
    failures = [
        (rank, text)
        for rank, text in enumerate(
            exchange(None if failure is None else f"{type(failure).__name__}: {failure}")
        )
        if text is not None
    ]
    if failure is not None:
        raise failure
    if failures:
        listed = "; ".join(f"rank {rank}: {text}" for rank, text in failures)
        raise OtherRankError(
            f"{what} failed on {listed}. Every rank stops it here, so none waits for the others."
        )
    return value  # type: ignore[return-value]


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
