"""The never-crash, never-lose-data oracle shared by the hostile-model and fuzz tests.

`run_pipeline` runs `onnxopt.api.optimize` on an in-memory model and classifies what happened;
`assert_sound` fails on anything but: the model improved and still computes the same thing
(within the pass's promise), the model left unchanged, or a clean one-line refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxopt import api
from onnxopt.data.sources import input_specs
from onnxopt.errors import OnnxoptError
from onnxopt.infra.registry import get_pass_class

CLEANUP_RTOL = 1e-4
"""Exact passes (no cosine promise): max |after - before| <= 1e-4 * max(1, max |before|)."""

# Rollback reasons that mean the pass wrote a broken model, not a lossy one.
FIDELITY_PREFIX = "output '"


def registered_passes() -> list[str]:
    """Every pass in the registry, test-only passes (registered by other test modules) excluded."""
    return [e["name"] for e in api.list_passes() if not e["name"].startswith("test-")]


def is_exact(pass_name: str) -> bool:
    """Whether the pass (default options) promises unchanged outputs rather than a cosine."""
    return get_pass_class(pass_name)().fidelity().min_cosine is None


def min_cosine(pass_names: list[str]) -> float:
    cosines = [get_pass_class(n)().fidelity().min_cosine for n in pass_names]
    return min([c for c in cosines if c is not None], default=1.0)


@dataclass
class Outcome:
    kind: str  # "ran", "refused" or "crashed"
    message: str = ""
    records: list[tuple[str, str, str]] = field(default_factory=list)  # (pass, status, reason)
    output: Path | None = None
    steps: list[tuple[str, str, str]] = field(default_factory=list)
    """The records of the pipeline's own steps (without those a pass asked for before it)."""

    @property
    def changed(self) -> bool:
        return any(status == "changed" for _, status, _ in self.records)


def feeds_for(model: onnx.ModelProto, seed: int = 0, batches: int = 3, dims: dict | None = None):
    """Seeded random feeds; symbolic dims take `dims[name]`, else 2 (batch) or 4."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = []
    for _ in range(batches):
        feed = {}
        for spec in input_specs(model):
            shape = [
                d if isinstance(d, int) else dims.get(d, 2 if axis == 0 else 4)
                for axis, d in enumerate(spec.shape)
            ]
            if spec.dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feed[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        feeds.append(feed)
    return feeds


def run_pipeline(
    model: onnx.ModelProto, passes: str, feeds: list[dict], out: Path, seed: int = 0
) -> Outcome:
    before = model.SerializeToString()
    try:
        result = api.optimize(model, out, passes=passes, calib=feeds, val=feeds, seed=seed)
    except OnnxoptError as exc:
        outcome = Outcome("refused", str(exc))
    except Exception as exc:  # the oracle reports crashes instead of raising them
        outcome = Outcome("crashed", f"{type(exc).__name__}: {exc}")
    else:
        records = [(r.name, r.status, r.reason or "") for r in result.report.passes]
        steps = [
            rec for rec, r in zip(records, result.report.passes, strict=True) if not r.required_by
        ]
        outcome = Outcome("ran", records=records, output=result.output, steps=steps)
    assert model.SerializeToString() == before, "the input model was modified in memory"
    return outcome


def assert_sound(model: onnx.ModelProto, outcome: Outcome, feeds: list[dict]) -> None:
    """Fail unless the outcome is an accurate optimization, no change, or a one-line refusal."""
    assert outcome.kind != "crashed", outcome.message
    if outcome.kind == "refused":
        assert outcome.message and "\n" not in outcome.message, outcome.message
        assert outcome.output is None
        return
    for name, status, reason in outcome.records:
        if status == "rolled back":
            assert not is_exact(name), f"exact pass '{name}' was rolled back: {reason}"
            assert reason.startswith(FIDELITY_PREFIX), f"'{name}' wrote a broken model: {reason}"
    assert outcome.output is not None and outcome.output.is_file()
    optimized = onnx.load(outcome.output)
    assert [v.name for v in optimized.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in optimized.graph.output] == [v.name for v in model.graph.output]
    changed = [name for name, status, _ in outcome.records if status == "changed"]
    assert_same_outputs(model, outcome.output, feeds, changed)


def assert_same_outputs(
    model: onnx.ModelProto, optimized: Path, feeds: list[dict], changed: list[str]
) -> None:
    """The optimized file computes what `model` does: within 1e-4 relative for exact passes,
    at the lowest promised cosine once a lossy pass changed the model."""
    from tests.conftest import ort_outputs

    pairs = [(ort_outputs(model, f), ort_outputs(optimized, f)) for f in feeds]
    lossy = [name for name in changed if not is_exact(name)]
    for index in range(len(pairs[0][0])):
        ref = np.concatenate([np.ravel(p[0][index]).astype(np.float64) for p in pairs])
        got = np.concatenate([np.ravel(p[1][index]).astype(np.float64) for p in pairs])
        assert ref.shape == got.shape
        assert np.isfinite(got).all() or not np.isfinite(ref).all()
        if not lossy:
            scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
            assert np.abs(ref - got).max(initial=0.0) <= CLEANUP_RTOL * scale, changed
        else:
            cosine = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30))
            assert cosine >= min_cosine(lossy) - 1e-6, (lossy, cosine)
