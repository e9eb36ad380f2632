"""prune's least-squares refit: chosen on held-out samples, bounded, declined when it overfits."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.pruning.augment import MIX_LOW, augment
from onnxopt.pruning.lstsq import HeldOutRefit


def _problem(rows: int, inputs: int, outputs: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal((inputs, outputs))
    w0 = w_true + 0.5 * rng.standard_normal((inputs, outputs))  # pruned: off, not useless
    refit = HeldOutRefit(intercept=True)
    for held_out in (False, True):
        x = rng.standard_normal((rows, inputs))
        y = x @ w_true + 2.0 + noise * rng.standard_normal((rows, outputs))
        refit.add(x, y, held_out)
    return refit, w0, w_true


def test_a_refit_that_generalizes_is_applied_and_errors_are_reported():
    refit, w0, w_true = _problem(rows=400, inputs=8, outputs=3, noise=0.1, seed=0)
    choice = refit.choose(w0, np.zeros(3), ridge=None, max_move=10.0)
    assert choice.applied and choice.ridge is not None
    np.testing.assert_allclose(choice.w, w_true, atol=0.05)
    np.testing.assert_allclose(choice.bias, 2.0, atol=0.05)
    assert choice.fit_error < 0.01 and choice.held_out_error < 0.01
    assert choice.unrefit_error > 10 * choice.held_out_error


def test_a_refit_that_only_fits_noise_is_not_applied():
    # 40 rows for 32 inputs of pure noise: in-sample the fit looks good, held out it is worse
    rng = np.random.default_rng(1)
    refit = HeldOutRefit(intercept=False)
    w0 = np.zeros((32, 2))
    for held_out in (False, True):
        refit.add(rng.standard_normal((40, 32)), rng.standard_normal((40, 2)), held_out)
    choice = refit.choose(w0, 0.0, ridge=1e-3, max_move=np.inf)
    assert not choice.applied and choice.ridge is None
    np.testing.assert_array_equal(choice.w, w0)
    assert choice.held_out_error > choice.unrefit_error


def test_the_move_from_the_pruned_weights_is_bounded():
    refit, w0, _ = _problem(rows=400, inputs=8, outputs=3, noise=0.1, seed=2)
    free = refit.choose(w0, np.zeros(3), ridge=None, max_move=10.0)
    bounded = refit.choose(w0, np.zeros(3), ridge=None, max_move=0.1)
    assert free.move > 0.1 >= bounded.move
    assert bounded.ridge > free.ridge


def test_without_held_out_samples_the_given_ridge_is_applied_unchecked():
    rng = np.random.default_rng(3)
    refit = HeldOutRefit(intercept=True)
    refit.add(rng.standard_normal((50, 4)), rng.standard_normal((50, 2)), held_out=False)
    choice = refit.choose(np.zeros((4, 2)), np.zeros(2), ridge=0.1, max_move=np.inf)
    assert choice.applied and choice.ridge == pytest.approx(0.1)
    assert choice.held_out_error is None and choice.unrefit_error is None


def test_augmented_batches_are_blends_and_deterministic():
    rng = np.random.default_rng(4)
    feed = {"image": rng.random((6, 3, 4, 5), np.float32), "ids": np.arange(6)}
    mixed = augment(feed, None, seed=0, batch=2)
    again = augment(feed, None, seed=0, batch=2)
    np.testing.assert_array_equal(mixed["image"], again["image"])
    assert not np.array_equal(mixed["image"], augment(feed, None, seed=0, batch=3)["image"])
    assert mixed["image"].shape == feed["image"].shape and mixed["image"].dtype == np.float32
    np.testing.assert_array_equal(mixed["ids"], feed["ids"])  # integers are not blended
    low, high = feed["image"].min(), feed["image"].max()
    assert low <= mixed["image"].min() and mixed["image"].max() <= high  # convex blends


def test_one_sample_batches_blend_with_the_previous_batch():
    first = {"x": np.zeros((1, 3), np.float32)}
    second = {"x": np.ones((1, 3), np.float32)}
    assert augment(first, None, seed=0, batch=0) is None
    blended = augment(second, first, seed=0, batch=1)["x"]
    assert np.all((blended >= MIX_LOW) & (blended < 1.0))
    scalar = {"x": np.ones((2, 3), np.float32), "s": np.array(2.0, np.float32)}
    assert augment(scalar, None, seed=0, batch=0) is None
