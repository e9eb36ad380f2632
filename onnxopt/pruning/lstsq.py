"""Normal equations of one layer's refit, accumulated batch by batch, and their ridge solution.

The ridge pulls the solution toward the pruned weights `w0`; its strength is relative to the
mean diagonal of x'x (unitless). When not given, it is chosen per layer by two-fold cross-
validation over calibration batches (even and odd batches), from the normal equations alone.
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


class NormalEquations:
    """y ~ x @ W (+ b) over streamed rows: sums of x, y, y.y, x'x and x'y (float64)."""

    def __init__(self, intercept: bool) -> None:
        self.intercept = intercept
        self.n = 0
        self.sx = self.sy = self.xx = self.xy = 0.0
        self.yy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows; one batch's products are float32 (BLAS), the running sums float64."""
        x, y = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)
        self.n += x.shape[0]
        self.sx = self.sx + x.sum(0, dtype=np.float64)
        self.sy = self.sy + y.sum(0, dtype=np.float64)
        self.yy += float(np.sum(y.astype(np.float64) ** 2))
        self.xx = self.xx + (x.T @ x).astype(np.float64)
        self.xy = self.xy + (x.T @ y).astype(np.float64)

    def merged(self, other: NormalEquations) -> NormalEquations:
        both = NormalEquations(self.intercept)
        both.n = self.n + other.n
        for key in ("sx", "sy", "yy", "xx", "xy"):
            setattr(both, key, getattr(self, key) + getattr(other, key))
        return both

    def means(self) -> tuple[np.ndarray | float, np.ndarray | float]:
        if not self.intercept or self.n == 0:
            return 0.0, 0.0
        return self.sx / self.n, self.sy / self.n

    def about(self, mx, my) -> tuple[np.ndarray, np.ndarray, float]:
        """(x'x, x'y, y.y) of the rows shifted by (-mx, -my)."""
        mx = np.broadcast_to(mx, self.xx.shape[:1])
        my = np.broadcast_to(my, self.xy.shape[1:])
        xx = self.xx - np.outer(mx, self.sx) - np.outer(self.sx, mx) + self.n * np.outer(mx, mx)
        xy = self.xy - np.outer(mx, self.sy) - np.outer(self.sx, my) + self.n * np.outer(mx, my)
        yy = self.yy - 2 * float(my @ self.sy) + self.n * float(my @ my)
        return xx, xy, yy

    def fit(self, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(W (inputs x outputs), bias or None) minimizing the error + lam * |W - w0|^2."""
        mx, my = self.means()
        xx, xy, _ = self.about(mx, my)
        d = xx.shape[0]
        lam = ridge * max(float(np.trace(xx)) / d, 1e-12)
        lhs, rhs = xx + lam * np.eye(d), xy + lam * w0
        try:
            w = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            w = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        return w, (my - mx @ w if self.intercept else None)

    def error(self, w: np.ndarray, bias, mx, my) -> float:
        """Squared error of x @ w + bias on these rows, for a fit centered at (mx, my)."""
        xx, xy, yy = self.about(mx, my)
        return yy - 2 * float(np.sum(w * xy)) + float(np.sum(w * (xx @ w)))


class FoldedEquations:
    """Two folds of normal equations; the ridge is cross-validated across them when not given."""

    def __init__(self, intercept: bool) -> None:
        self.folds = (NormalEquations(intercept), NormalEquations(intercept))

    def add(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        self.folds[batch % 2].add(x, y)

    def solve(
        self, w0: np.ndarray, ridge: float | None
    ) -> tuple[np.ndarray, np.ndarray | None, float]:
        """(W, bias, the ridge used)."""
        first, second = self.folds
        if ridge is None:
            ridge = self.cross_validate(w0) if first.n and second.n else RIDGE_GRID[1]
        w, bias = first.merged(second).fit(w0, ridge)
        return w, bias, ridge

    def cross_validate(self, w0: np.ndarray) -> float:
        errors = np.zeros(len(RIDGE_GRID))
        for train, test in (self.folds, self.folds[::-1]):
            mx, my = train.means()
            for i, ridge in enumerate(RIDGE_GRID):
                w, _ = train.fit(w0, ridge)
                errors[i] += test.error(w, None, mx, my)
        return RIDGE_GRID[int(np.argmin(errors))]
