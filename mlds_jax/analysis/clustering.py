"""MLDS claim 1, as numbers: do nets trained on the same task cluster in weight space?"""

from __future__ import annotations

import numpy as np

from mlds_jax.analysis._sklearn import one_thread, sklearn


def _pairwise(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))


def clustering_scores(x: np.ndarray, y: np.ndarray, *, seed: int = 0,
                      standardize: bool = True) -> dict:
    """Scores of labels ``y`` (R,) as clusters of the rows of ``x`` (R, F) (Euclidean, after
    per-feature standardisation unless ``standardize`` is False):

    - ``distance_ratio``: mean distance between nets of the same task over the mean distance
      between nets of different tasks (below 1: tasks cluster; 1: no structure);
    - ``silhouette``: mean silhouette of the task labels (-1..1; 0: no structure);
    - ``kmeans_ari``: adjusted Rand index of k-means (k = number of tasks, 10 restarts)
      against the tasks (0: chance, 1: the tasks exactly);
    - ``nn1_accuracy``: leave-one-out 1-nearest-neighbour accuracy, and ``chance`` (the
      most common task's share).
    """
    cluster, metrics = sklearn("cluster"), sklearn("metrics")
    x = np.asarray(x, np.float64)
    keep = np.isfinite(x).all(axis=1)
    x, y = x[keep], np.asarray(y)[keep]
    if standardize:
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    d = _pairwise(x)
    np.fill_diagonal(d, 0.0)
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    ratio = d[same & off].mean() / d[~same].mean()
    k = len(np.unique(y))
    with one_thread():
        labels = cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    d_nn = d + np.diag(np.full(len(y), np.inf))
    nn = y[np.argmin(d_nn, axis=1)]
    _, counts = np.unique(y, return_counts=True)
    return {"distance_ratio": float(ratio),
            "silhouette": float(metrics.silhouette_score(d, y, metric="precomputed")),
            "kmeans_ari": float(metrics.adjusted_rand_score(y, labels)),
            "nn1_accuracy": float((nn == y).mean()), "chance": float(counts.max() / counts.sum()),
            "n": int(len(y)), "standardized": bool(standardize)}


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(R, 2) projection on the first two principal components of the standardised rows."""
    x = np.asarray(x, np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T
