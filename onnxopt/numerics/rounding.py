"""Data-aware weight rounding (GPTQ, Frantar et al. 2022) for Conv, Gemm and MatMul.

Rounding each weight to the nearest level ignores how the layer's inputs correlate. GPTQ rounds
the input columns one at a time and spreads each column's rounding error over the columns not
yet rounded, weighted by the inverse of H = E[x x^T], the second moment of the layer's input
patches on calibration data (`onnxopt.analyses.input_moments`); this minimizes E||(W - W_q) x||^2
far better than nearest rounding. The grid is given by the caller: int8 levels with fixed
per-channel scales here, a codebook of shared values in `onnxopt.sharing`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DAMPING = 0.01
INT8_WEIGHT_MAX = 127  # symmetric [-127, 127]: no -128, so negation never overflows

ColumnRounder = Callable[[np.ndarray, int], np.ndarray]
"""(column of weights (rows,), column index) -> the column's values on the grid."""


def gptq(weight: np.ndarray, scales: np.ndarray, h: np.ndarray, block: int = 128) -> np.ndarray:
    """Round `weight` (rows = output channels, columns = inputs; `scales` one per row or one)
    to int8 levels with GPTQ error feedback; returns the int8 codes."""
    s = np.broadcast_to(scales.astype(np.float64).reshape(-1), (weight.shape[0],))

    def to_levels(column: np.ndarray, _: int) -> np.ndarray:
        return np.clip(np.round(column / s), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX) * s

    rounded = error_feedback(weight, h, to_levels, block, act_order=True)
    return np.round(rounded / s[:, None]).astype(np.int8)


def error_feedback(
    weight: np.ndarray,
    h: np.ndarray,
    to_grid: ColumnRounder,
    block: int = 128,
    *,
    act_order: bool = False,
):
    """Put `weight` (rows x columns) on a grid column by column, spreading each column's error
    over the later columns (GPTQ); returns the gridded weight (float64).
    `h` is (columns, columns), or (rows, columns, columns) for per-row (depthwise) moments.

    `act_order` (with one `h` for all rows): columns go in decreasing order of H's diagonal,
    the inputs with the most energy first, while the most columns remain to absorb their error.
    MobileNetV2, 1200 crops: int8 output cosine 0.99658 -> 0.99672, top-1 93.1 -> 93.8 %; but
    4-bit codebooks, cosine 0.9790 -> 0.9818 with top-1 86.2 -> 83.5 %, so sharing keeps the
    natural order. Updates of later columns are applied lazily per block of `block` columns.
    The work runs on the transpose, so that each column is a contiguous row: 2x faster than
    strided columns."""
    if act_order and h.ndim == 2:
        order = np.argsort(-np.diagonal(h), kind="stable")
        h = h[np.ix_(order, order)]
    else:
        order = np.arange(weight.shape[1])
    w = np.array(weight[:, order].T, dtype=np.float64, order="C")  # columns x rows
    u = _inverse_cholesky(h)
    q = np.zeros_like(w)
    columns = w.shape[0]
    for start in range(0, columns, block):
        stop = min(start + block, columns)
        errors = np.zeros((stop - start, w.shape[1]))
        for i in range(start, stop):
            q[i] = to_grid(w[i], int(order[i]))
            pivot = u[i, i] if u.ndim == 2 else u[:, i, i]
            err = (w[i] - q[i]) / pivot
            errors[i - start] = err
            if u.ndim == 2:
                w[i + 1 : stop] -= u[i, i + 1 : stop, None] * err
            else:
                w[i + 1 : stop] -= (err[:, None] * u[:, i, i + 1 : stop]).T
        if stop < columns:
            if u.ndim == 2:
                w[stop:] -= u[start:stop, stop:].T @ errors
            else:
                w[stop:] -= np.einsum("br,rbc->cr", errors, u[:, start:stop, stop:])
    gridded = np.empty(weight.shape)
    gridded[:, order] = q.T
    return gridded


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse of `h` (batched over a leading axis)."""
    h = np.array(h, dtype=np.float64)
    diag = np.diagonal(h, axis1=-2, axis2=-1)
    dead = diag <= 0
    eye = np.eye(h.shape[-1])
    h = h + eye * (dead[..., None] * 1.0)
    damp = DAMPING * np.diagonal(h, axis1=-2, axis2=-1).mean(axis=-1)
    h = h + eye * np.asarray(damp)[..., None, None]
    inverse = np.linalg.inv(h)
    lower = np.linalg.cholesky(inverse)
    return np.swapaxes(lower, -1, -2)
