"""Run a model on the corpus feeds under ONNX Runtime and compare two models' outputs.

The tolerance is what the passes that changed the model promise (`Pass.fidelity()`): exact
passes bound the max error relative to max(1, |reference|) by the sum of their bounds; passes
that promise a cosine bound the cosine by the product of theirs. Non-finite values must sit at
the same places with the same values; shapes and dtypes must be equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from tests.corpus.cases import Feed


@dataclass(frozen=True)
class Tolerance:
    max_rel: float | None
    min_cosine: float | None

    def describe(self) -> str:
        parts = []
        if self.max_rel is not None:
            parts.append(f"max rel <= {self.max_rel:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return ", ".join(parts)


def tolerance_for(changed_passes: list[str]) -> Tolerance:
    """The promise of the passes that changed the model, run with default options."""
    from onnxopt.infra.registry import get_pass_class

    rel, cosine = 0.0, 1.0
    exact_only = True
    for name in changed_passes:
        promise = get_pass_class(name)().fidelity()
        if promise.min_cosine is not None:
            cosine *= promise.min_cosine
            exact_only = False
        elif promise.max_rel_error is not None:
            rel += promise.max_rel_error
        else:
            raise AssertionError(f"pass '{name}' promises nothing checkable")
    # Tiny slack: each pass was measured against its own predecessor, peaks differ slightly.
    if exact_only:
        return Tolerance(max_rel=2 * rel, min_cosine=None)
    return Tolerance(max_rel=None, min_cosine=cosine)


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, feeds: list[Feed]) -> list[dict[str, Any]]:
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed), strict=True)) for feed in feeds]


def mismatch(reference: Any, candidate: Any, tolerance: Tolerance, where: str) -> str | None:
    """Why `candidate` is not within `tolerance` of `reference`, or None."""
    if isinstance(reference, list) or isinstance(candidate, list):
        if not (isinstance(reference, list) and isinstance(candidate, list)):
            return f"{where}: sequence vs tensor"
        if len(reference) != len(candidate):
            return f"{where}: sequence length {len(reference)} -> {len(candidate)}"
        for index, (r, c) in enumerate(zip(reference, candidate, strict=True)):
            reason = mismatch(r, c, tolerance, f"{where}[{index}]")
            if reason:
                return reason
        return None
    if reference is None or candidate is None:
        return None if reference is None and candidate is None else f"{where}: optional presence"
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.dtype != cand.dtype or ref.shape != cand.shape:
        return f"{where}: {ref.dtype}{list(ref.shape)} -> {cand.dtype}{list(cand.shape)}"
    if ref.dtype.kind in "OSU":
        return None if np.array_equal(ref, cand) else f"{where}: strings differ"
    return _numeric_mismatch(ref.astype(np.float64), cand.astype(np.float64), tolerance, where)


def _numeric_mismatch(r: np.ndarray, c: np.ndarray, tol: Tolerance, where: str) -> str | None:
    finite = np.isfinite(r)
    if not np.array_equal(finite, np.isfinite(c)) or not np.array_equal(
        r[~finite], c[~finite], equal_nan=True
    ):
        return f"{where}: non-finite values differ"
    r, c = r[finite], c[finite]
    if r.size == 0:
        return None
    if tol.max_rel is not None:
        rel = float(np.max(np.abs(r - c))) / max(1.0, float(np.max(np.abs(r))))
        if not rel <= tol.max_rel:
            return f"{where}: max rel error {rel:.3g} > {tol.max_rel:g}"
    if tol.min_cosine is not None:
        cosine = _cosine(r, c)
        if not cosine >= tol.min_cosine:
            return f"{where}: cosine {cosine:.5f} < {tol.min_cosine:g}"
    return None


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    denom = math.sqrt(float(r @ r) * float(c @ c))
    if denom == 0:
        return 1.0 if float(r @ r) == float(c @ c) else 0.0
    return float(r @ c) / denom
