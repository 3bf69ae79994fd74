"""Spectral Relevance Analysis (Lapuschkin et al., *Unmasking Clever Hans predictors*, 2019): the
maps of one class clustered into the strategies the model uses for it.

Each map becomes a small map (:data:`SMALL_SIZE` x :data:`SMALL_SIZE`, average-pooled, unit mass);
the small maps are joined by a symmetric k-nearest-neighbour graph (``k = 10``, or ``n - 1``); the
number of clusters is where the normalised graph Laplacian's sorted eigenvalues jump most
(``lambda_(k+1) - lambda_k`` over ``k = 1 .. 8``), one cluster when no jump reaches
:data:`MIN_EIGENGAP`; the clusters are k-means (10 starts, seed 0) on the rows of the first ``k``
eigenvectors, normalised. scikit-learn (and its SciPy) does the graph, the eigenvectors (ARPACK
on the sparse graph) and k-means; it is the optional extra ``lightning-cam[strategies]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

__all__ = ["MIN_EIGENGAP", "SMALL_SIZE", "cluster_maps", "small_maps"]

SMALL_SIZE = 16
MAX_CLUSTERS = 8
NEIGHBOURS = 10
MIN_EIGENGAP = 0.05
DENSE_UP_TO = 500  # a graph this small is decomposed densely (exact and faster than ARPACK)


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


def _sklearn() -> Any:
    try:
        import sklearn.cluster
        import sklearn.neighbors
    except ImportError as error:
        raise ImportError(
            "strategies=True clusters maps with scikit-learn; install it: pip install lightning-cam[strategies]"
        ) from error
    return sklearn


def _spectrum(affinity: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues of the normalised Laplacian ``I - D^-1/2 W D^-1/2`` (ascending)
    and their eigenvectors, from the largest of the normalised adjacency."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    degree = np.asarray(affinity.sum(axis=1)).ravel()
    scale = diags(1.0 / np.sqrt(np.maximum(degree, 1e-12)))
    adjacency = scale @ affinity @ scale
    if adjacency.shape[0] <= DENSE_UP_TO:
        values, vectors = np.linalg.eigh(adjacency.toarray())
        values, vectors = values[::-1][:count], vectors[:, ::-1][:, :count]
    else:
        values, vectors = eigsh(adjacency, k=count, which="LA", tol=1e-6, v0=np.ones(adjacency.shape[0]))
        order = np.argsort(-values)
        values, vectors = values[order], vectors[:, order]
    return 1.0 - values, vectors


def cluster_maps(maps: Tensor) -> Tensor:
    """Cluster labels ``[n]`` (``0 .. k-1``, by size: 0 the largest) of small maps ``[n, d]`` (rows
    with NaN, flat maps, get ``-1``).

    Example::

        >>> left, right = torch.zeros(20, 4), torch.zeros(20, 4)
        >>> left[:, 0], right[:, 3] = 1.0, 1.0
        >>> cluster_maps(torch.cat([left, right]) + 0.01 * torch.rand(40, 4)).bincount().tolist()
        [20, 20]
    """
    labels = torch.full((len(maps),), -1, dtype=torch.long)
    usable = ~maps.isnan().any(dim=1)
    points = maps[usable].double().cpu().numpy()
    if len(points) < 4:
        labels[usable] = 0
        return labels
    sklearn = _sklearn()
    graph = sklearn.neighbors.kneighbors_graph(points, min(NEIGHBOURS, len(points) - 1), include_self=False)
    affinity = 0.5 * (graph + graph.T)
    eigenvalues, vectors = _spectrum(affinity, min(MAX_CLUSTERS + 1, len(points) - 1))
    gaps = np.diff(eigenvalues)
    count = int(np.argmax(gaps)) + 1 if gaps.size and gaps.max() >= MIN_EIGENGAP else 1
    found = np.zeros(len(points), dtype=np.int64)
    if count > 1:
        embedding = vectors[:, :count] / np.maximum(
            np.linalg.norm(vectors[:, :count], axis=1, keepdims=True), 1e-12
        )
        found = sklearn.cluster.KMeans(count, n_init=10, random_state=0).fit_predict(embedding)
    by_size = np.argsort(-np.bincount(found, minlength=count), kind="stable")
    labels[usable] = torch.from_numpy(np.argsort(by_size)[found])
    return labels
