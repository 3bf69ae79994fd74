"""Spectral Relevance Analysis (Lapuschkin et al., *Unmasking Clever Hans predictors*, 2019): the
maps of one class clustered into the strategies the model uses for it.

Each map becomes a small map (:data:`SMALL_SIZE` x :data:`SMALL_SIZE`, average-pooled, unit mass);
the small maps are joined by a symmetric k-nearest-neighbour graph (``k = 10``, or ``n - 1``); the
number of clusters is where the normalised graph Laplacian's sorted eigenvalues jump most
(``lambda_(k+1) - lambda_k`` over ``k = 1 .. 8``), one cluster when no jump reaches
:data:`MIN_EIGENGAP`; the clusters are k-means (10 starts, seed 0) on the rows of the first ``k``
eigenvectors, normalised. Up to :data:`DENSE_UP_TO` maps a class, the graph and its eigenvectors are
computed densely in torch, batched over the classes of equal size (one call for a thousand classes of
50 images); a larger class's graph is scikit-learn's and its eigenvectors ARPACK's (scikit-learn is the
optional extra ``lightning-cam[strategies]``). The k-means is :func:`kmeans` (scikit-learn's partitions,
without its per-call set-up)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from lightning_cam.batches import chunked

__all__ = ["MIN_EIGENGAP", "SMALL_SIZE", "cluster_classes", "cluster_maps", "kmeans", "small_maps"]

SMALL_SIZE = 16
MAX_CLUSTERS = 8
NEIGHBOURS = 10
MIN_EIGENGAP = 0.05
DENSE_UP_TO = 500  # a graph this small is decomposed densely (exact and faster than ARPACK)
BATCHED = 64  # classes whose dense graphs are decomposed in one call


def small_maps(maps: Tensor) -> Tensor:
    """``[B, SMALL_SIZE * SMALL_SIZE]``: each map ``[B, H, W]`` average-pooled and scaled to unit mass;
    a flat map (no mass) is a row of NaN, left out of the clustering."""
    if maps.dim() != 3:
        raise ValueError(
            f"strategies cluster 2-D maps [B, H, W]; got {list(maps.shape)} (volumes are not supported yet): "
            "audit volumes with strategies=False."
        )
    pooled = F.adaptive_avg_pool2d(maps[:, None].float(), SMALL_SIZE).flatten(1).clamp(min=0)
    mass = pooled.sum(dim=1, keepdim=True)
    return torch.where(mass > 0, pooled / mass.clamp(min=1e-12), torch.full_like(pooled, float("nan")))


SKLEARN_MISSING = (
    "strategies=True clusters maps with scikit-learn; install it: pip install lightning-cam[strategies]"
)


def _require_sklearn() -> None:
    """``ImportError`` saying what to install when scikit-learn is missing; looked up, not imported (its
    import takes ~0.4 s, and only classes of more than :data:`DENSE_UP_TO` maps use it)."""
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError(SKLEARN_MISSING)


def _sklearn() -> Any:
    try:
        import sklearn.neighbors
    except ImportError as error:
        raise ImportError(SKLEARN_MISSING) from error
    return sklearn


def _spectrum(affinity: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues of the normalised Laplacian ``I - D^-1/2 W D^-1/2`` (ascending)
    and their eigenvectors, from the largest of the normalised adjacency (ARPACK on a sparse graph)."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    degree = np.asarray(affinity.sum(axis=1)).ravel()
    scale = diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
    adjacency = scale @ affinity @ scale
    values, vectors = eigsh(adjacency, k=count, which="LA", tol=1e-6, v0=np.ones(adjacency.shape[0]))
    order = np.argsort(-values)
    return 1.0 - values[order], vectors[:, order]


def _adjacencies(points: Tensor) -> Tensor:
    """``[G, n, n]``: the normalised adjacency ``D^-1/2 W D^-1/2`` of the symmetric k-nearest-neighbour
    graph of each of ``G`` classes of ``n`` points (``[G, n, d]``, float64), built densely in one call."""
    n = points.shape[1]
    norms = points.pow(2).sum(dim=2)
    distances = norms[:, :, None] + norms[:, None] - 2 * points @ points.transpose(1, 2)  # squared, float64
    distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # no point is its own neighbour
    nearest = distances.topk(min(NEIGHBOURS, n - 1), dim=2, largest=False).indices
    graph = torch.zeros_like(distances).scatter_(2, nearest, 1.0)
    affinity = 0.5 * (graph + graph.transpose(1, 2))
    scale = affinity.sum(dim=2).clamp(min=1e-12).rsqrt()
    return scale[:, :, None] * affinity * scale[:, None, :]


def _laplacian(adjacency_values: Tensor, count: int) -> Tensor:
    """The ``count`` smallest eigenvalues of the normalised Laplacian (ascending), from the normalised
    adjacency's ascending eigenvalues ``[..., n]``: one minus its largest."""
    return 1.0 - adjacency_values.flip(-1)[..., :count]


def _dense_labels(points: Tensor) -> list[np.ndarray]:
    """:func:`_labels` of ``G`` classes of ``n`` points each (``[G, n, d]``, float64) from their
    :func:`_adjacencies`, decomposed in batched calls (:func:`_spectrum`'s figures): the eigenvalues alone
    first (3x cheaper than with the eigenvectors), the eigenvectors only of the graphs that may have several
    clusters (the largest eigengap, at least :data:`MIN_EIGENGAP`, after the first eigenvalue; the
    others are one)."""
    adjacency, count = _adjacencies(points), min(MAX_CLUSTERS + 1, points.shape[1] - 1)
    gaps = _laplacian(torch.linalg.eigvalsh(adjacency), count).diff(dim=1)
    largest, later = gaps.max(dim=1).values, gaps[:, 1:].max(dim=1).values
    # several clusters: the largest gap reaches MIN_EIGENGAP after the first eigenvalue (the margins: eigh's
    # eigenvalues may differ from eigvalsh's in their last bits)
    several = ((largest >= MIN_EIGENGAP - 1e-9) & (later >= gaps[:, 0] - 1e-9)).nonzero().flatten()
    found = [np.zeros(points.shape[1], dtype=np.int64) for _ in range(len(points))]  # one cluster
    if len(several):
        values, vectors = torch.linalg.eigh(adjacency[several])
        laplacian, vectors = _laplacian(values, count).numpy(), vectors.flip(-1)[:, :, :count].numpy()
        for i, value, vector in zip(several.tolist(), laplacian, vectors, strict=True):
            found[i] = _labels(value, vector)
    return found


def _labels(eigenvalues: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cluster labels (0 the largest cluster; of equal sizes, the one with the earliest map first) from a
    graph's smallest Laplacian eigenvalues and their eigenvectors: as many clusters as the largest
    eigengap says, k-means on the normalised rows."""
    gaps = np.diff(eigenvalues)
    count = int(np.argmax(gaps)) + 1 if gaps.size and gaps.max() >= MIN_EIGENGAP else 1
    found = np.zeros(len(vectors), dtype=np.int64)
    if count > 1:
        embedding = vectors[:, :count] / np.maximum(
            np.linalg.norm(vectors[:, :count], axis=1, keepdims=True), 1e-12
        )
        found = kmeans(embedding, count)
    first = np.full(count, len(found))
    np.minimum.at(first, found, np.arange(len(found)))
    by_size = np.lexsort((first, -np.bincount(found, minlength=count)))
    return np.argsort(by_size)[found]


def kmeans(points: np.ndarray, count: int, starts: int = 10, seed: int = 0) -> np.ndarray:
    """Labels ``[n]`` of k-means on ``points`` ``[n, d]``: Lloyd's iterations from greedy k-means++ seeds
    (as scikit-learn's), the run of least inertia of ``starts``, all runs at once. scikit-learn's
    ``KMeans`` spends ~7 ms a call on its own set-up, most of the clustering at a thousand classes.

    Example::

        >>> points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
        >>> kmeans(points, 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
        True
    """
    labels, inertia = _lloyd(points, _seeds(points, count, starts, np.random.default_rng(seed)))
    return labels[int(inertia.argmin())]


def _seeds(points: np.ndarray, count: int, starts: int, generator: np.random.Generator) -> np.ndarray:
    """``[starts, count, d]`` starting centres by greedy k-means++: each next one the best of
    ``2 + log(count)`` candidates drawn in proportion to the squared distance to the nearest centre so far."""
    runs = np.arange(starts)
    chosen = generator.integers(len(points), size=starts)
    centres = [points[chosen]]
    nearest = ((points[None] - points[chosen][:, None]) ** 2).sum(axis=2)  # [starts, n]
    for _ in range(1, count):
        cumulative = nearest.cumsum(axis=1)
        drawn = generator.random((starts, 2 + int(np.log(count)))) * cumulative[:, -1:]
        candidates = np.minimum((cumulative[:, None] <= drawn[..., None]).sum(axis=2), len(points) - 1)
        # [starts, trials, n]: each candidate's squared distance to every point
        distances = ((points[candidates][:, :, None] - points[None, None]) ** 2).sum(axis=3)
        potentials = np.minimum(nearest[:, None], distances)
        best = potentials.sum(axis=2).argmin(axis=1)
        centres.append(points[candidates[runs, best]])
        nearest = potentials[runs, best]
    return np.stack(centres, axis=1)


def _lloyd(points: np.ndarray, centres: np.ndarray, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's iterations of every run's ``centres`` ``[runs, count, d]`` until no label changes: the
    labels ``[runs, n]`` and their inertia ``[runs]`` (an empty cluster keeps its centre)."""
    labels = np.full(centres.shape[:1] + points.shape[:1], -1)
    for _ in range(steps):
        distances = ((points[None, :, None] - centres[:, None]) ** 2).sum(axis=3)  # [runs, n, count]
        assigned = distances.argmin(axis=2)
        if np.array_equal(assigned, labels):
            break
        labels = assigned
        members = (labels[..., None] == np.arange(centres.shape[1])).astype(points.dtype)  # [runs, n, count]
        sizes = members.sum(axis=1)[..., None]
        centres = np.where(
            sizes > 0, np.einsum("rnk,nd->rkd", members, points) / np.maximum(sizes, 1), centres
        )
    return labels, np.take_along_axis(distances, labels[..., None], axis=2).sum(axis=(1, 2))


def _sparse_labels(points: np.ndarray) -> np.ndarray:
    """:func:`_labels` of a large class: scikit-learn's neighbour graph, ARPACK."""
    sklearn = _sklearn()
    graph = sklearn.neighbors.kneighbors_graph(points, min(NEIGHBOURS, len(points) - 1), include_self=False)
    return _labels(*_spectrum(0.5 * (graph + graph.T), min(MAX_CLUSTERS + 1, len(points) - 1)))


def cluster_maps(maps: Tensor) -> Tensor:
    """Cluster labels ``[n]`` (``0 .. k-1``, by size: 0 the largest) of small maps ``[n, d]`` (rows
    with NaN, flat maps, get ``-1``).

    Example::

        >>> left, right = torch.zeros(20, 4), torch.zeros(20, 4)
        >>> left[:, 0], right[:, 3] = 1.0, 1.0
        >>> cluster_maps(torch.cat([left, right]) + 0.01 * torch.rand(40, 4)).bincount().tolist()
        [20, 20]
    """
    return cluster_classes([maps])[0]


def cluster_classes(classes: list[Tensor]) -> list[Tensor]:
    """:func:`cluster_maps` of each class's small maps; the graphs of classes with as many usable maps
    (up to :data:`DENSE_UP_TO`) are built and decomposed together, :data:`BATCHED` at a time."""
    usable = [~maps.isnan().any(dim=1) for maps in classes]
    points = [maps[rows].double().cpu() for maps, rows in zip(classes, usable, strict=True)]
    found = [np.zeros(len(p), dtype=np.int64) for p in points]  # fewer than 4 maps: one cluster
    if any(len(p) >= 4 for p in points):
        _require_sklearn()  # the extra is needed (large classes' graphs): say so before any work, whatever the sizes
    sizes: dict[int, list[int]] = {}
    for i, p in enumerate(points):
        if 4 <= len(p) <= DENSE_UP_TO:
            sizes.setdefault(len(p), []).append(i)
        elif len(p) > DENSE_UP_TO:
            found[i] = _sparse_labels(p.numpy())
    for members in sizes.values():
        for chunk in chunked(members, BATCHED):
            for i, labels in zip(chunk, _dense_labels(torch.stack([points[i] for i in chunk])), strict=True):
                found[i] = labels
    labels = [torch.full((len(maps),), -1, dtype=torch.long) for maps in classes]
    for label, rows, clusters in zip(labels, usable, found, strict=True):
        label[rows] = torch.from_numpy(clusters)
    return labels
