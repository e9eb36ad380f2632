"""Deterministic, weighted 1-D k-means, many independent rows at once.

Each row (one codebook: a whole tensor, or one output channel) gets `k` centroids. In one
dimension the clusters are intervals of the sorted values, so assignment is a binary search
against the midpoints between sorted centroids; all rows are searched in one call by shifting
row r's values and midpoints by r * span. Initialization follows the optimal quantizer's point
density (see `_initial_centroids`), with the row's extremes kept as centroids: the largest
weights matter most to a layer's output (Han et al. 2016 found density-only initialization
loses them). A row with at most `k` distinct values is represented exactly.
"""

from __future__ import annotations

import numpy as np

INIT_BINS = 2048


def kmeans_rows(
    values: np.ndarray, weights: np.ndarray | None, k: int, iterations: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster each row of `values` (rows, n) into `k` centroids minimizing the `weights`-
    weighted squared error. Returns (centroids (rows, k) sorted per row, labels (rows, n))."""
    values = np.asarray(values, dtype=np.float64)
    rows, n = values.shape
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.maximum(w, 1e-12 * max(float(w.max(initial=0.0)), 1e-30))
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    sorted_weights = np.take_along_axis(w, order, axis=1)
    centroids = _initial_centroids(sorted_values, sorted_weights, k)
    span = float(sorted_values[:, -1].max() - sorted_values[:, 0].min()) * 2 + 1.0
    shift = (np.arange(rows, dtype=np.float64) * span)[:, None]
    flat_values = (sorted_values + shift).reshape(-1)
    flat_weights = sorted_weights.reshape(-1)
    row_of = np.repeat(np.arange(rows), n)
    labels = None
    for _ in range(iterations):
        new_labels = _assign(flat_values, centroids, shift, row_of, k)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = _update(sorted_values.reshape(-1), flat_weights, labels, centroids)
    labels = _assign(flat_values, centroids, shift, row_of, k).reshape(rows, n)
    unsorted = np.empty_like(labels)
    np.put_along_axis(unsorted, order, labels, axis=1)
    return centroids, unsorted


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Label of the nearest centroid for each value; `values` (rows, n), `centroids` (rows, k)
    sorted per row (one row of centroids may serve all rows)."""
    values = np.asarray(values, dtype=np.float64)
    rows, n = values.shape
    centroids = np.broadcast_to(centroids, (rows, centroids.shape[-1]))
    k = centroids.shape[1]
    span = float(max(np.abs(values).max(initial=0), np.abs(centroids).max(initial=0))) * 4 + 1.0
    shift = (np.arange(rows, dtype=np.float64) * span)[:, None]
    row_of = np.repeat(np.arange(rows), n)
    return _assign((values + shift).reshape(-1), centroids, shift, row_of, k).reshape(rows, n)


def _initial_centroids(sorted_values: np.ndarray, sorted_weights: np.ndarray, k: int):
    """Quantiles of the cube root of each row's (weighted) value density: the point density
    of the MSE-optimal scalar quantizer (Panter-Dite), which spreads centroids into the tails
    far better than plain quantiles; Lloyd iterations then converge in few steps."""
    rows = sorted_values.shape[0]
    lo, hi = sorted_values[:, :1], sorted_values[:, -1:]
    width = np.where(hi > lo, (hi - lo) / INIT_BINS, 1.0)
    bins = np.clip(((sorted_values - lo) / width).astype(np.int64), 0, INIT_BINS - 1)
    offsets = np.arange(rows)[:, None] * INIT_BINS
    mass = np.bincount(
        (bins + offsets).reshape(-1), weights=sorted_weights.reshape(-1), minlength=rows * INIT_BINS
    ).reshape(rows, INIT_BINS)
    cdf = np.cumsum(np.cbrt(mass), axis=1)
    cdf /= np.maximum(cdf[:, -1:], 1e-300)
    targets = (np.arange(k) + 0.5) / k
    shifted = (cdf + np.arange(rows)[:, None] * 2).reshape(-1)
    slots = np.searchsorted(shifted, (targets[None, :] + np.arange(rows)[:, None] * 2).reshape(-1))
    position = np.minimum(slots.reshape(rows, k) - offsets, INIT_BINS - 1)
    centroids = lo + (position + 0.5) * width
    centroids[:, 0] = sorted_values[:, 0]
    centroids[:, -1] = sorted_values[:, -1]
    distinct = 1 + np.count_nonzero(np.diff(sorted_values, axis=1), axis=1)
    for row in np.flatnonzero(distinct <= k):
        exact = np.unique(sorted_values[row])
        centroids[row] = np.concatenate([exact, np.full(k - exact.size, exact[-1])])
    return np.sort(centroids, axis=1)


def _assign(flat_values, centroids, shift, row_of, k) -> np.ndarray:
    """Labels of the (row-shifted, row-sorted) values: binary search against midpoints."""
    midpoints = (centroids[:, 1:] + centroids[:, :-1]) / 2 + shift
    flat_midpoints = midpoints.reshape(-1)
    slot = np.searchsorted(flat_midpoints, flat_values, side="right")
    return slot - row_of * (k - 1)


def _update(flat_values, flat_weights, labels, centroids) -> np.ndarray:
    rows, k = centroids.shape
    n = labels.size // rows
    bins = labels + np.repeat(np.arange(rows), n) * k
    mass = np.bincount(bins, weights=flat_weights, minlength=rows * k)
    total = np.bincount(bins, weights=flat_weights * flat_values, minlength=rows * k)
    updated = centroids.reshape(-1).copy()
    filled = mass > 0
    updated[filled] = total[filled] / mass[filled]
    return np.sort(updated.reshape(rows, k), axis=1)
