"""Fit one weight's codebook: to the weights alone, or to the layer's output on real data.

Data-free: 1-D k-means of the values (per tensor or per channel).

Data-aware (the layer's input second moment H = E[x x^T] is known, see
`onnxopt.analyses.input_moments`), minimizing the output error tr(D H D^T) of D = W - W_shared:
1. k-means weighted by diag(H): a weight on an input that is large and often active counts
   more (SqueezeLLM's sensitivity-weighted clustering);
2. assignment with GPTQ error feedback: values are put on the codebook column by column and each
   column's error is pushed onto the columns not yet assigned (`error_feedback`);
3. the centroids are refit by least squares under the full H for those assignments (conjugate
   gradients on the k or channels * k centroid values); steps 2-3 repeat once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.analyses.input_moments import Moments, from_layer_matrix, layer_matrix
from onnxopt.analyses.weights import Weight
from onnxopt.ir.codebook import Codebook, channel_view
from onnxopt.numerics.rounding import error_feedback
from onnxopt.sharing.kmeans import kmeans_rows, nearest

REFINE_ROUNDS = 2
MAX_SHRINK = 1.0
CG_ITERATIONS = 12


@dataclass
class Fitted:
    book: Codebook
    weight_error: float  # ||D||^2 / ||W||^2
    output_error: float | None  # tr(D H D^T) / tr(W H W^T), with measured input moments


class LayerModel:
    """A weight as its layer sees it: rows = output channels, columns = inputs, with H."""

    def __init__(self, weight: Weight, moments: Moments) -> None:
        self.weight = weight
        self.op_type = weight.layer.op_type
        self.measured = moments.h
        self.rows = moments.rows
        self.hessian = shrunk(moments)
        self.matrix = layer_matrix(weight.value.astype(np.float64), self.op_type, weight.trans_b)
        self.energy = max(self.quadratic(self.matrix, self.measured), 1e-30)

    def to_layer(self, array: np.ndarray) -> np.ndarray:
        return layer_matrix(array, self.op_type, self.weight.trans_b)

    def from_layer(self, matrix: np.ndarray) -> np.ndarray:
        return from_layer_matrix(matrix, self.op_type, self.weight.trans_b, self.weight.value.shape)

    def times_h(self, matrix: np.ndarray, h: np.ndarray | None = None) -> np.ndarray:
        h = self.hessian if h is None else h
        if h.ndim == 3:
            return np.einsum("rm,rmn->rn", matrix, h)
        return matrix @ h

    def quadratic(self, matrix: np.ndarray, h: np.ndarray | None = None) -> float:
        return float(np.sum(self.times_h(matrix, h) * matrix))

    def output_error(self, delta: np.ndarray) -> float:
        """tr(D H D^T) / tr(W H W^T) under the measured H (the shrunk one only steers fitting)."""
        return self.quadratic(self.to_layer(delta), self.measured) / self.energy

    def importance(self) -> np.ndarray:
        """diag(H) per weight element, in the weight's own shape."""
        diag = np.diagonal(self.hessian, axis1=-2, axis2=-1)
        rows = np.broadcast_to(diag, self.matrix.shape)
        return self.from_layer(np.maximum(rows, 0.0))


def shrunk(moments: Moments) -> np.ndarray:
    """H with its off-diagonal part trusted in proportion to the rows behind it (at most
    MAX_SHRINK times the diagonal is added): from fewer rows than inputs (a classifier seeing one
    pooled vector per image), a raw H has a null space that error feedback pushes error into.
    Measured on MobileNetV2's classifier (128 rows, 1280 inputs), held-out output error at 3 bits:
    0.0006 raw, 0.0007 with 1x the diagonal, 0.0015 with 10x; with 1x the error estimated on the
    calibration rows is 2x optimistic instead of 7x."""
    h = moments.h
    inputs = h.shape[-1]
    weight = min(inputs / max(moments.rows, 1), MAX_SHRINK)
    diagonal = np.diagonal(h, axis1=-2, axis2=-1)
    return h + weight * (diagonal[..., None] * np.eye(inputs))


def fit(
    weight: Weight,
    bits: int,
    axis: int | None,
    layer: LayerModel | None,
    iterations: int,
    refine: bool = True,
    scaled: bool = False,
) -> Fitted:
    """The codebook of `weight` with 2**bits values per tensor (`axis` None), per channel, or
    (`scaled`) one book of channel-normalized values with a scale per channel along `axis`."""
    value = weight.value.astype(np.float64)
    importance = None if layer is None else channel_view(layer.importance(), axis)
    rows = channel_view(value, axis)
    scales = None
    if scaled:
        scales = np.abs(rows).max(axis=1)
        scales[scales == 0] = 1.0
        weights = np.ones_like(rows) if importance is None else importance
        importance = (weights * scales[:, None] ** 2).reshape(1, -1)
        rows = (rows / scales[:, None]).reshape(1, -1)
    centroids, labels = kmeans_rows(rows, importance, 1 << bits, iterations)
    if scaled:
        labels = labels.reshape(-1, rows.size // len(scales))
    book = Codebook(value.shape, centroids, labels, bits, axis, scales)
    if layer is not None and refine:
        for _ in range(REFINE_ROUNDS):
            book = _assign_with_feedback(book, layer)
            book = _refit_centroids(book, layer)
    return _measure(weight, book, layer)


def _measure(weight: Weight, book: Codebook, layer: LayerModel | None) -> Fitted:
    value = weight.value.astype(np.float64)
    delta = book.decoded() - value
    weight_error = float(np.sum(delta**2) / max(np.sum(value**2), 1e-30))
    output_error = None
    if layer is not None:
        output_error = layer.output_error(delta)
    return Fitted(book, weight_error, output_error)


def _row_books(book: Codebook, rows: int) -> np.ndarray:
    """Centroids per layer row (a per-tensor book serves every row)."""
    return np.broadcast_to(book.row_books(), (rows, book.centroids.shape[1]))


def _assign_with_feedback(book: Codebook, layer: LayerModel) -> Codebook:
    rows = layer.matrix.shape[0]
    centroids = _row_books(book, rows)
    chosen = np.zeros(layer.matrix.shape, dtype=np.int64)

    def to_codebook(column: np.ndarray, i: int) -> np.ndarray:
        labels = nearest(column[:, None], centroids)[:, 0]
        chosen[:, i] = labels
        return centroids[np.arange(rows), labels]

    error_feedback(layer.matrix, layer.hessian, to_codebook)
    labels = channel_view(layer.from_layer(chosen), book.axis)
    return Codebook(book.shape, book.centroids, labels, book.bits, book.axis, book.scales)


def _refit_centroids(book: Codebook, layer: LayerModel) -> Codebook:
    """Least-squares centroids for fixed labels: minimize tr(D H D^T) by conjugate gradients."""
    k = book.centroids.shape[1]
    rows = layer.matrix.shape[0]
    labels = layer.to_layer(_labels_in_weight_shape(book))
    per_row = book.axis is not None and book.scales is None
    slot = labels + (np.arange(rows)[:, None] * k if per_row else 0)
    factor = np.ones((rows, 1)) if book.scales is None else book.scales[:, None]
    size = book.centroids.size

    def expand(centroids: np.ndarray) -> np.ndarray:
        return centroids.reshape(-1)[slot] * factor

    def collect(matrix: np.ndarray) -> np.ndarray:
        weighted = (matrix * factor).reshape(-1)
        return np.bincount(slot.reshape(-1), weights=weighted, minlength=size)

    def normal(c: np.ndarray) -> np.ndarray:
        return collect(layer.times_h(expand(c)))

    x = book.centroids.reshape(-1).astype(np.float64).copy()
    residual = collect(layer.times_h(layer.matrix)) - normal(x)
    direction = residual.copy()
    start = float(residual @ residual)
    norm = start
    for _ in range(CG_ITERATIONS):
        if norm <= 1e-20 * max(start, 1e-300):
            break
        product = normal(direction)
        curvature = float(direction @ product)
        if curvature <= 0:
            break
        step = norm / curvature
        x += step * direction
        residual -= step * product
        new_norm = float(residual @ residual)
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    refit = _sorted(
        Codebook(
            book.shape,
            x.reshape(book.centroids.shape),
            book.labels,
            book.bits,
            book.axis,
            book.scales,
        )
    )
    before = layer.quadratic(layer.to_layer(book.decoded()) - layer.matrix)
    after = layer.quadratic(layer.to_layer(refit.decoded()) - layer.matrix)
    return refit if after < before else book


def _sorted(book: Codebook) -> Codebook:
    """The same book with centroids ascending per row (nearest-centroid search needs it)."""
    order = np.argsort(book.centroids, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), 1)
    labels = book.labels.astype(np.int64)
    labels = rank[0][labels] if len(rank) == 1 else np.take_along_axis(rank, labels, axis=1)
    centroids = np.take_along_axis(book.centroids, order, axis=1)
    return Codebook(book.shape, centroids, labels, book.bits, book.axis, book.scales)


def _labels_in_weight_shape(book: Codebook) -> np.ndarray:
    if book.axis is None or book.axis == 0:
        return book.labels.reshape(book.shape)
    return np.ascontiguousarray(book.labels.T).reshape(book.shape)
