"""Spectral Relevance Analysis (SpRAy): the distinct strategies behind one class's heatmaps.

A class whose heatmaps fall into two groups, most on the object and some on a watermark in a corner, uses two
strategies; the smaller one is often a Clever Hans shortcut (Lapuschkin et al. 2019). :func:`spray` finds such groups
by spectral clustering of the heatmaps and says how many there are by the eigengap of the graph Laplacian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors, kneighbors_graph

from .errors import AuditError

#: Heatmaps larger than this (per side) are block-summed down to at most this size before clustering.
MAX_SIDE = 16


@dataclass(frozen=True)
class Clusters:
    """The groups SpRAy found among one class's heatmaps."""

    labels: np.ndarray  # (N,) int cluster of each map, 0..count-1 numbered by size (0 = largest); -1 if invalid
    eigenvalues: np.ndarray  # smallest eigenvalues of the normalised graph Laplacian, ascending; empty if not computed
    count: int  # number of clusters, chosen by the eigengap
    mean_maps: np.ndarray  # (count, h, w) mean mass map of each cluster


def spray(
    mass: np.ndarray, max_clusters: int = 5, n_neighbors: int = 10, max_samples: int = 1000, seed: int = 0
) -> Clusters:
    """Cluster one class's heatmaps into strategies by spectral clustering, choosing their number by the eigengap.

    Parameters
    ----------
    mass : (N, h, w) array
        Heatmaps of one class as mass maps (each summing to 1). Rows with a non-finite value (the all-NaN rows of
        :func:`pipeline.heatmaps.to_mass`) are invalid: label -1, left out of the analysis.
    max_clusters : int
        Largest number of clusters the eigengap may choose.
    n_neighbors : int
        Neighbours of each map in the affinity graph.
    max_samples : int
        The spectral analysis runs on at most this many valid maps, drawn at random; the others join the cluster of
        their nearest analysed map.
    seed : int
        Seed of the subsample and of k-means; equal seeds give equal results.

    Returns
    -------
    Clusters
        Labels of all N maps, the eigenvalues, the number of clusters and each cluster's mean map. With fewer than
        ``max(3, 2 * n_neighbors)`` maps to analyse (valid maps, or ``max_samples`` if smaller) every valid map is in
        one cluster and no eigenvalue is computed; with no valid map there is no cluster (``count == 0``).

    Notes
    -----
    The steps of SpRAy (Lapuschkin et al. 2019), with the spectral clustering of Ng, Jordan and Weiss (2002):

    1. Features: each heatmap flattened to a vector, block-summed first if a side exceeds :data:`MAX_SIDE` (SpRAy
       downsizes heatmaps so that the clustering sees their layout, not pixel noise).
    2. Affinity: ``A_ij = 1`` if map ``j`` is among the ``n_neighbors`` nearest (Euclidean) of map ``i``, else 0,
       made symmetric as ``A = max(A, A^T)``.
    3. Normalised Laplacian ``L = I - D^(-1/2) A D^(-1/2)`` with ``D = diag(sum_j A_ij)``; its eigenvalues
       ``0 = lambda_1 <= lambda_2 <= ...`` lie in [0, 2], and ``lambda_i`` near 0 means ``i`` nearly separate groups.
    4. Eigengap: ``k = argmax_{i = 1..max_clusters} (lambda_(i+1) - lambda_i)``; ``k = 1`` means one strategy.
    5. Embedding: the eigenvectors of ``lambda_1..lambda_k`` as the columns of ``U`` (n, k), each row scaled to unit
       length; k-means (10 starts) on the rows gives the clusters, renumbered by size, largest first.

    The dense eigendecomposition costs ``O(max_samples^3)``, hence the subsample for large classes.

    References
    ----------
    .. [1] S. Lapuschkin, S. Waeldchen, A. Binder, G. Montavon, W. Samek and K.-R. Mueller, "Unmasking Clever Hans
           predictors and assessing what machines really learn", Nature Communications 10, 1096 (2019).
    .. [2] A. Y. Ng, M. I. Jordan and Y. Weiss, "On spectral clustering: analysis and an algorithm", NIPS 14 (2002).
    .. [3] U. von Luxburg, "A tutorial on spectral clustering", Statistics and Computing 17, 395-416 (2007).

    Examples
    --------
    >>> centre, corner = np.zeros((8, 8)), np.zeros((8, 8))
    >>> centre[3:5, 3:5], corner[:2, :2] = 0.25, 0.25
    >>> noise = np.random.default_rng(0).uniform(0, 0.01, (100, 8, 8))
    >>> maps = np.concatenate([np.repeat(centre[None], 70, 0), np.repeat(corner[None], 30, 0)]) + noise
    >>> clusters = spray(maps / maps.sum(axis=(1, 2), keepdims=True))
    >>> clusters.count, np.bincount(clusters.labels).tolist()
    (2, [70, 30])
    """
    if max_clusters < 1 or n_neighbors < 1 or max_samples < 1:
        raise AuditError("SpRAy needs max_clusters, n_neighbors and max_samples of at least 1")
    mass = np.asarray(mass, dtype=np.float64)
    valid = np.isfinite(mass).all(axis=(1, 2))
    features = _features(mass[valid])
    labels = np.full(len(mass), -1)
    eigenvalues = np.empty(0)
    n = min(len(features), max_samples)
    if n < max(3, 2 * n_neighbors):
        labels[valid] = 0
        mean_maps = mass[valid].mean(axis=0, keepdims=True) if valid.any() else np.empty((0, *mass.shape[1:]))
        return Clusters(labels, eigenvalues, len(mean_maps), mean_maps)

    rng = np.random.default_rng(seed)
    analysed = np.sort(rng.choice(len(features), n, replace=False)) if n < len(features) else np.arange(n)
    affinity = kneighbors_graph(features[analysed], n_neighbors, mode="connectivity")
    affinity = affinity.maximum(affinity.T)  # i and j are linked if either is among the other's neighbours
    eigenvalues, vectors = eigh(
        laplacian(affinity, normed=True).toarray(), subset_by_index=[0, min(max_clusters + 1, n) - 1]
    )
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # L is positive semi-definite: values below 0 are rounding
    k = int(np.argmax(np.diff(eigenvalues))) + 1
    if k == 1:
        sub_labels = np.zeros(n, dtype=int)
    else:
        top = vectors[:, :k]
        # Ng-Jordan-Weiss: rows on the unit sphere, so a map's cluster does not depend on its degree.
        embedding = top / np.linalg.norm(top, axis=1, keepdims=True)
        sub_labels = KMeans(k, n_init=10, random_state=seed).fit_predict(embedding)

    valid_labels = np.empty(len(features), dtype=int)
    valid_labels[analysed] = sub_labels
    # Maps left out of the analysis take the cluster of their nearest analysed map.
    rest = np.setdiff1d(np.arange(len(features)), analysed)
    if len(rest):
        nearest = NearestNeighbors(n_neighbors=1).fit(features[analysed]).kneighbors(features[rest])[1][:, 0]
        valid_labels[rest] = sub_labels[nearest]
    # Rank of each cluster by size, ties in k-means order.
    by_size = np.argsort(np.argsort(-np.bincount(valid_labels, minlength=k), kind="stable"), kind="stable")
    labels[valid] = by_size[valid_labels]
    mean_maps = np.stack([mass[labels == c].mean(axis=0) for c in range(k)])
    return Clusters(labels, eigenvalues, k, mean_maps)


def _features(mass: np.ndarray) -> np.ndarray:
    """Maps (n, h, w) as flat vectors, block-summed to at most :data:`MAX_SIDE` per side (so still mass maps)."""
    n, h, w = mass.shape
    fh, fw = -(-h // MAX_SIDE), -(-w // MAX_SIDE)
    if fh > 1 or fw > 1:
        # Zero padding to whole blocks keeps each block sum, and so the total mass, unchanged.
        padded = np.pad(mass, ((0, 0), (0, -h % fh), (0, -w % fw)))
        mass = padded.reshape(n, padded.shape[1] // fh, fh, padded.shape[2] // fw, fw).sum(axis=(2, 4))
    return mass.reshape(n, mass.shape[1] * mass.shape[2])
