"""Normal equations of one layer's refit, accumulated batch by batch, and their ridge solution.

The ridge pulls the solution toward the pruned weights `w0`; its strength is relative to the
mean diagonal of x'x (unitless). It is chosen per layer on held-out samples (other images than
the ones fitted), from the normal equations alone, and a refit that does not beat the pruned
weights on them is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge strengths tried per layer; the largest ones leave the pruned weights nearly as they
are (the bias still absorbs the mean shift)."""
DEFAULT_RIDGE = 1e-2
MAX_MOVE = 1.0
"""Default bound on |W - w0| / |w0|: a refit may change the pruned weights by at most their own
norm (on MobileNetV2 at ratio 0.3 the chosen refits move 0.2-0.9; a bound of 0.3 cost 14 points
of top-1 agreement on new crops and gained nothing on other photos)."""


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

    def means(self) -> tuple[np.ndarray | float, np.ndarray | float]:
        """The centering of a fit: the means with an intercept, else none."""
        if not self.intercept or self.n == 0:
            return 0.0, 0.0
        return self.sx / self.n, self.sy / self.n

    def target_variance(self) -> float:
        """Sum of squares of the targets about their mean (whatever the fit's centering)."""
        if self.n == 0:
            return 0.0
        return self.yy - float(self.sy @ self.sy) / self.n

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


@dataclass
class RefitChoice:
    """One layer's refit as chosen on held-out samples, with its in- and out-of-sample errors.

    Errors are relative: squared error over the targets' variance (0 = exact, 1 = no better
    than predicting the mean). `held_out_error` is the chosen refit's error on the held-out
    samples, `unrefit_error` the pruned weights' error there; None without held-out samples.
    """

    w: np.ndarray
    bias: np.ndarray | None
    applied: bool
    ridge: float | None
    fit_error: float
    held_out_error: float | None
    unrefit_error: float | None
    move: float
    """|W - w0| / |w0| (Frobenius) of the chosen refit."""


class HeldOutRefit:
    """Normal equations of the samples a refit fits on, and of held-out samples that judge it.

    The ridge is the one with the least error on the held-out samples among those that move
    the weights at most `max_move` (relative) from the pruned ones; the refit is applied only
    when it beats the pruned weights there. Without held-out samples the given ridge (else
    DEFAULT_RIDGE) is applied unchecked. Without rows to fit there is nothing to solve: the
    pruned weights stay, reported as not applied.
    """

    def __init__(self, intercept: bool) -> None:
        self.fit = NormalEquations(intercept)
        self.held_out = NormalEquations(intercept)

    def add(self, x: np.ndarray, y: np.ndarray, held_out: bool) -> None:
        (self.held_out if held_out else self.fit).add(x, y)

    def choose(
        self, w0: np.ndarray, b0: np.ndarray | float, ridge: float | None, max_move: float
    ) -> RefitChoice:
        if not self.fit.n:
            return RefitChoice(w0, None, False, None, 0.0, None, None, 0.0)
        grid = RIDGE_GRID if ridge is None else (ridge,)
        mx, my = self.fit.means()
        norm0 = max(float(np.linalg.norm(w0)), 1e-12)
        candidates = []
        for lam in grid:
            w, bias = self.fit.fit(w0, lam)
            move = float(np.linalg.norm(w - w0)) / norm0
            if move <= max_move or lam == grid[-1]:
                candidates.append((lam, w, bias, move))
        if not self.held_out.n:
            lam, w, bias, move = _closest(candidates, ridge if ridge is not None else DEFAULT_RIDGE)
            return RefitChoice(
                w, bias, True, lam, self._relative(self.fit, w, mx, my), None, None, move
            )
        scored = [(self._relative(self.held_out, c[1], mx, my), c) for c in candidates]
        best_error, (lam, w, bias, move) = min(scored, key=lambda item: item[0])
        # the pruned layer predicts x @ w0 + b0, i.e. (x - 0) @ w0 against (y - b0)
        b0 = np.asarray(b0, np.float64)
        unrefit = self._relative(self.held_out, w0, 0.0, b0)
        applied = best_error < unrefit
        fit_error = self._relative(self.fit, w, mx, my)
        if not applied:
            w, bias, lam, move = w0, None, None, 0.0
            fit_error = self._relative(self.fit, w0, 0.0, b0)
        return RefitChoice(w, bias, applied, lam, fit_error, best_error, unrefit, move)

    @staticmethod
    def _relative(rows: NormalEquations, w: np.ndarray, mx, my) -> float:
        """Squared error of (x - mx) @ w against (y - my), over the variance of y."""
        if rows.n == 0:
            return 0.0
        return float(rows.error(w, None, mx, my)) / max(rows.target_variance(), 1e-30)


def _closest(candidates: list, ridge: float) -> tuple:
    return min(candidates, key=lambda c: abs(np.log(c[0]) - np.log(ridge)))
