"""A lossless pass's max-error promise is judged against ORT's own float noise on the model."""

from __future__ import annotations

import numpy as np
import onnx.parser

from onnxopt.data.sources import IterableSource
from onnxopt.infra import checks
from onnxopt.infra.pass_base import EXACT
from onnxopt.runtime.fidelity import FidelityReport, OutputFidelity

MODEL = onnx.parser.parse_model(
    '<ir_version: 10, opset_import: ["" : 17]>\n'
    "g (float[N, 4] x) => (float[N, 4] y) { h = Relu(x)\n y = Neg(h) }"
)
DATA = IterableSource([{"x": np.ones((2, 4), np.float32)}], [])


def _report(max_rel: float) -> FidelityReport:
    return FidelityReport([OutputFidelity("y", max_rel, max_rel, max_rel, 1.0, 90.0)], 2)


def _noise_of(monkeypatch, noise: float) -> list[int]:
    calls = []

    def fake_compare(optimized, plain, data, limit_samples=None):
        calls.append(limit_samples)
        return _report(noise)

    monkeypatch.setattr(checks, "compare_sessions", fake_compare)
    return calls


def test_an_error_within_four_times_orts_own_noise_is_accepted_and_said(monkeypatch):
    calls = _noise_of(monkeypatch, 1.3e-5)
    accepted, reason = checks.within_float_noise(_report(4e-5), EXACT, MODEL, DATA, "cpu", 64)
    assert accepted and calls == [64]
    assert "4e-05 accepted within 4x ORT's own float noise on this model (1.3e-05" in reason


def test_an_error_beyond_the_noise_or_the_ceiling_is_not(monkeypatch):
    calls = _noise_of(monkeypatch, 1e-6)
    assert not checks.within_float_noise(_report(4e-5), EXACT, MODEL, DATA, "cpu", None)[0]
    assert calls == [None]
    _noise_of(monkeypatch, 1.0)  # however noisy the model, 2e-4 is a change
    assert not checks.within_float_noise(_report(2e-4), EXACT, MODEL, DATA, "cpu", None)[0]
