"""`prune` with a calibration set of one batch (issue 20: a refit with no rows to fit crashed).

A model of static batch 16 given 16 samples used to be split 12 / 4 by rows: neither part
fills a batch, so the refit got no rows and `NormalEquations.about` met a float 0.0.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt import api
from onnxopt.data.sources import NpzSource, input_specs
from onnxopt.pruning.lstsq import HeldOutRefit
from onnxopt.pruning.reconstruct import RefitSettings, refit_data
from onnxopt.runtime.session import make_session
from tests.zoo.small_cnn import small_cnn


def _calibration(tmp_path, samples: int, seed: int = 0):
    path = tmp_path / f"data{samples}_{seed}.npz"
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((samples, 3, 16, 16)).astype(np.float32))
    return path


def _prune(model: onnx.ModelProto, calib, val):
    return api.optimize(model, passes="prune{ratio=0.5}", calib=calib, val=val)


@pytest.mark.parametrize(("batch", "samples"), [(16, 16), (1, 1), ("N", 1)])
def test_one_batch_of_calibration_prunes_and_keeps_outputs(tmp_path, batch, samples):
    model = small_cnn(0, batch=batch, size=16)
    calib = _calibration(tmp_path, samples)
    val = _calibration(tmp_path, 16 if batch == 16 else 8, seed=1)
    result = _prune(model, calib, val)
    record = result.report.passes[-1]
    assert record.name == "prune" and record.status == "changed"
    inits = {i.name: i for i in result.model.graph.initializer}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert [inits[n.input[1]].dims[0] for n in convs] == [16, 16]  # of 32 channels
    feed = {"x": np.load(val)["x"][: 16 if batch == 16 else 1]}
    before = make_session(model).run(None, feed)[0]
    after = make_session(result.model).run(None, feed)[0]
    cosine = np.sum(before * after) / (np.linalg.norm(before) * np.linalg.norm(after))
    assert cosine >= 0.9  # prune's gate, checked here on samples no pass saw


def test_static_batch_refit_splits_whole_batches_or_none(tmp_path):
    model = small_cnn(0, batch=16, size=16)
    specs = input_specs(model)
    one = refit_data(NpzSource(_calibration(tmp_path, 16), specs, 16), RefitSettings())
    assert one.held_out is None  # 12 + 4 rows would fill no batch: all of it is fitted
    three = refit_data(NpzSource(_calibration(tmp_path, 64), specs, 16), RefitSettings())
    assert three.fit.samples == 48 and three.held_out.samples == 16
    assert all(len(f["x"]) == 16 for f in [*three.fit, *three.held_out])


def test_refit_with_no_rows_to_fit_keeps_the_pruned_weights():
    refit = HeldOutRefit(intercept=True)
    rng = np.random.default_rng(0)
    refit.add(rng.standard_normal((8, 4)), rng.standard_normal((8, 3)), held_out=True)
    w0 = rng.standard_normal((4, 3))
    choice = refit.choose(w0, np.zeros(3), None, 1.0)
    assert not choice.applied and choice.w is w0 and choice.bias is None
