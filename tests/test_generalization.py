"""Fidelity out of sample: calibrate on digits 0-4, measure on digits 5-9.

A pass that fits its calibration data (prune's refit, quant's ranges and rounding, share's
codebooks) can look perfect on that data and still break on the next input. Each test here runs
a pipeline through the public API with calibration images of digits 0-4 only, then measures on
held-out images of digits 5-9 only, classes the calibration never showed: top-1 agreement and
cosine against the fp32 model (`api.validate`) and accuracy against the real labels (ONNX
Runtime directly).

The floors are regression guards, set a few points below what seed 0 gave on 2026-12-06; they
are not quality bars. On new images of digits 0-4 every pipeline here agrees with fp32 on at
least 98 % of them; on 5-9 `prune` kept only half to three quarters before its refit was chosen
on held-out samples and fit on blended samples as well (81-90 % since).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnxopt import api
from tests.conftest import REPO

MODEL = REPO / "examples" / "digits_cnn.onnx"
CALIB_SAMPLES = 128  # the size of examples/digits_calib.npz
SEEN, UNSEEN = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
REPORT_SLACK = 0.05
"""How far the top-1 agreement the tool reports (on its holdout of the calibration samples) may
sit from the agreement on new images of the same digits 0-4."""

# (top-1 agreement, cosine) floors on digits 5-9; accuracy shares the top-1 floor because the
# fp32 model labels every one of those images correctly.
# prune before its refit was judged on held-out samples and fit on blended samples too (commit
# 91421b6): ratio 0.5 0.509 / 0.700, default 0.729 / 0.781, prune,quant 0.732 / 0.779.
PRUNE_HALF = (0.76, 0.74)  # measured 0.814, cosine 0.794 on 2026-12-06
QUANT = (0.97, 0.995)  # measured 1.000, cosine 0.9998 on 2026-12-06
SHARE_4BIT = (0.97, 0.99)  # measured 1.000, cosine 0.9990 on 2026-12-06
PRUNE_DEFAULT = (0.85, 0.78)  # measured 0.900, cosine 0.833 on 2026-12-06
PRUNE_QUANT = (0.85, 0.78)  # measured 0.900, cosine 0.833 on 2026-12-06


@dataclass
class Digits:
    calib: Path  # npz: training images of SEEN digits
    unseen: Path  # npz: held-out images of UNSEEN digits
    new: Path  # npz: held-out images of SEEN digits (new images of the calibration classes)
    unseen_images: np.ndarray
    unseen_labels: np.ndarray


@dataclass
class Outcome:
    result: api.OptimizeResult
    path: Path
    top1: float
    cosine: float
    accuracy: float

    @property
    def statuses(self) -> list[str]:
        return [record.status for record in self.result.report.passes]

    @property
    def ops(self) -> Counter:
        return Counter(node.op_type for node in self.result.model.graph.node)


def accuracy(model: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images})[0]
    return float(np.mean(logits.argmax(1) == labels))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Digits:
    """The split benchmarks/make_digits_model.py trained on (stratified 70/30, seed 0): calibrate
    on training images of 0-4, measure on test images of 5-9, which training never saw."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, stratify=labels, random_state=0
    )
    assert np.array_equal(x_test, np.load(REPO / "examples" / "digits_val.npz")["input"])
    seen = np.flatnonzero(np.isin(y_train, SEEN))
    chosen = np.random.default_rng(0).permutation(seen)[:CALIB_SAMPLES]
    unseen = np.isin(y_test, UNSEEN)
    folder = tmp_path_factory.mktemp("generalization")
    np.savez(folder / "calib_0to4.npz", input=x_train[chosen])
    np.savez(folder / "test_5to9.npz", input=x_test[unseen])
    np.savez(folder / "test_0to4.npz", input=x_test[~unseen])
    return Digits(
        folder / "calib_0to4.npz",
        folder / "test_5to9.npz",
        folder / "test_0to4.npz",
        x_test[unseen],
        y_test[unseen],
    )


@pytest.fixture(scope="module")
def optimized(digits, tmp_path_factory):
    """Runs a pipeline once per module (calibrated on 0-4, seed 0) and measures it on 5-9."""
    done: dict[str, Outcome] = {}

    def run(passes: str) -> Outcome:
        if passes not in done:
            out = tmp_path_factory.mktemp("optimized") / "model.onnx"
            result = api.optimize(MODEL, out, passes=passes, calib=digits.calib, seed=0)
            fidelity = api.validate(MODEL, out, digits.unseen)
            assert fidelity.samples == len(digits.unseen_labels)
            done[passes] = Outcome(
                result,
                out,
                fidelity.worst("top1"),
                fidelity.worst("cosine"),
                accuracy(out, digits.unseen_images, digits.unseen_labels),
            )
        return done[passes]

    return run


def assert_floor(outcome: Outcome, floor: tuple[float, float]) -> None:
    top1, cosine = floor
    assert outcome.top1 >= top1
    assert outcome.accuracy >= top1
    assert outcome.cosine >= cosine


def test_the_data_split_is_disjoint_by_class(digits):
    calib = np.load(digits.calib)["input"]
    assert calib.shape == (CALIB_SAMPLES, 1, 8, 8) and calib.dtype == np.float32
    assert set(np.unique(digits.unseen_labels)) == set(UNSEEN)
    assert len(digits.unseen_labels) == 269
    assert accuracy(MODEL, digits.unseen_images, digits.unseen_labels) == 1.0


def test_prune_half_out_of_sample(optimized):
    outcome = optimized("prune{ratio=0.5}")
    assert outcome.statuses == ["changed"]  # a rolled-back pass would agree trivially
    before, after = outcome.result.report.before, outcome.result.report.after
    assert after["macs"] <= 0.3 * before["macs"]
    assert_floor(outcome, PRUNE_HALF)


def test_prune_default_out_of_sample(optimized):
    outcome = optimized("prune")
    assert outcome.statuses == ["changed"]
    before, after = outcome.result.report.before, outcome.result.report.after
    assert after["macs"] <= 0.35 * before["macs"]
    assert_floor(outcome, PRUNE_DEFAULT)


def test_quant_out_of_sample(optimized):
    outcome = optimized("quant")
    assert outcome.statuses == ["changed", "changed"]  # the cleanup quant asks for, quant
    assert outcome.ops["QuantizeLinear"] >= 1 and outcome.ops["DequantizeLinear"] >= 8
    assert_floor(outcome, QUANT)


def test_share_4bit_out_of_sample(optimized):
    outcome = optimized("share{bits=4}")
    assert outcome.statuses == ["changed"]
    assert outcome.ops["GatherElements"] >= 1  # codebooks decoded in the graph
    before, after = outcome.result.report.before, outcome.result.report.after
    assert after["bytes"] <= 0.25 * before["bytes"]
    assert_floor(outcome, SHARE_4BIT)


def test_prune_then_quant_out_of_sample(optimized):
    outcome = optimized("prune,quant")
    assert outcome.statuses == ["changed", "changed", "changed"]  # prune, cleanup, quant
    assert outcome.ops["DequantizeLinear"] >= 8
    before, after = outcome.result.report.before, outcome.result.report.after
    assert after["macs"] <= 0.35 * before["macs"]
    assert_floor(outcome, PRUNE_QUANT)


def test_floor_rejects_prune_without_refit(optimized):
    """The floors can fail: magnitude pruning without the refit (its in-sample gate lowered so
    it is not rolled back) falls far below them (measured 0.201, cosine 0.391 on 2026-12-06)."""
    outcome = optimized("prune{ratio=0.5,reconstruct=false,criterion=l1,min_cosine=0}")
    assert outcome.statuses == ["changed"]
    top1, cosine = PRUNE_HALF
    assert outcome.top1 < top1 - 0.1
    assert outcome.accuracy < top1 - 0.1
    assert outcome.cosine < cosine - 0.1


@pytest.mark.parametrize(
    "passes", ["prune{ratio=0.5}", "prune", "quant", "share{bits=4}", "prune,quant"]
)
def test_reported_fidelity_is_out_of_sample_and_holds_on_new_images(optimized, digits, passes):
    """What the tool prints is measured on its holdout of the calibration samples, so it must
    match new images of the same digits (a holdout cannot see the shift to digits 5-9: the
    floors above guard that)."""
    outcome = optimized(passes)
    report = outcome.result.report
    assert report.fidelity_in_sample is False
    assert report.fidelity_on == "holdout: 32 of 128 samples of calib_0to4.npz"
    assert report.fidelity["samples"] == 32
    reported = report.fidelity["outputs"][0]["top1"]
    measured = api.validate(MODEL, outcome.path, digits.new).worst("top1")
    assert abs(reported - measured) <= REPORT_SLACK
