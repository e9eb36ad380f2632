"""The gates a model must pass after each pass: onnx.checker, an ORT session, numeric fidelity."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxopt.data.sources import DataSource
from onnxopt.infra.pass_base import Fidelity
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, save_model, stored_bytes
from onnxopt.ir.opset import weight_inputs
from onnxopt.runtime.fidelity import FidelityReport, compare_sessions
from onnxopt.runtime.session import first_line, make_session, session_options

CHECK_LEVELS = ("full", "basic", "none")


def checker_error(model: onnx.ModelProto, level: str) -> str | None:
    """Run onnx.checker at `level` ('full' adds strict shape inference); the error or None."""
    if level == "none":
        return None
    try:
        if stored_bytes(model) > PROTOBUF_SAFE_BYTES:
            with tempfile.TemporaryDirectory(prefix="onnxopt-check-") as workdir:
                path = Path(workdir) / "model.onnx"
                save_model(model, path, external_data=True)
                onnx.checker.check_model(str(path), full_check=level == "full")
        else:
            onnx.checker.check_model(model, full_check=level == "full")
    except Exception as exc:  # checker raises ValidationError, InferenceError, and others
        return f"onnx.checker ({level}): {first_line(exc)}"
    return None


def interface_error(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    """How `after` changed the graph's inputs or outputs (names, order, element types), or None.

    A graph input with a default value (an initializer of the same name) stays an input: a
    caller may feed it; but before IR 4 every initializer was listed as an input, and those
    entries are weights, not part of the interface (see `onnxopt.ir.opset`).
    """
    weights = weight_inputs(before)
    for kind in ("input", "output"):
        old, new = getattr(before.graph, kind), getattr(after.graph, kind)
        if kind == "input":
            old = [v for v in old if v.name not in weights]
            new = [v for v in new if v.name not in weights]
        old_names, new_names = [v.name for v in old], [v.name for v in new]
        if old_names != new_names:
            return f"graph {kind}s changed: {_names(old_names)} -> {_names(new_names)}"
        for a, b in zip(old, new, strict=True):
            if a.type.tensor_type.elem_type != b.type.tensor_type.elem_type:
                return f"graph {kind} '{a.name}' changed its element type"
    return None


def _names(names: list[str]) -> str:
    return "[" + ", ".join(names[:6]) + (", ...]" if len(names) > 6 else "]")


def strongest_passing_level(model: onnx.ModelProto) -> str:
    """The strictest checker level the input model passes: outputs must pass it too."""
    for level in CHECK_LEVELS:
        if checker_error(model, level) is None:
            return level
    return "none"


def fidelity_error(report: FidelityReport, expected: Fidelity) -> str | None:
    """Why `report` misses `expected`, or None. Cosine is not judged on synthetic data."""
    for output in report.outputs:
        if expected.max_rel_error is not None and not output.max_rel <= expected.max_rel_error:
            return (
                f"output '{output.name}' changed: max rel error {output.max_rel:.3g} "
                f"> {expected.max_rel_error:g}"
            )
        if (
            expected.min_cosine is not None
            and not report.synthetic
            and not output.cosine >= expected.min_cosine
        ):
            return f"output '{output.name}' cosine {output.cosine:.5f} < {expected.min_cosine:g}"
    return None


NOISE_FACTOR = 4.0
"""A lossless pass may move outputs by this many times ORT's own float noise on the model (its
graph optimizations on versus off): reassociated sums differ in their last bits, and a deep
network carries them to the output. PP-OCRv4's detector after cleanup: max rel error 1.25e-5,
where ORT alone moves it by 1.33e-5."""
NOISE_CEILING = 1e-4
"""Beyond this relative error a change is never float noise, whatever ORT's own noise is (fp16
models' own noise reaches 1e-4: the backend corpus holds a lossless pass to 2e-5 there)."""


def within_float_noise(
    report: FidelityReport,
    expected: Fidelity,
    model: onnx.ModelProto,
    data: DataSource,
    provider: str,
    limit_samples: int | None,
) -> tuple[bool, str]:
    """Whether every output missing `expected.max_rel_error` stays within NOISE_FACTOR times
    what ORT itself changes in `model` with its graph optimizations off, and the reason."""
    worst = max(output.max_rel for output in report.outputs)
    if expected.max_rel_error is None or not worst <= NOISE_CEILING:
        return False, ""
    optimized = make_session(model, provider, options=session_options(spinning=False))
    plain_options = session_options(
        spinning=False, optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    plain = make_session(model, provider, options=plain_options)
    noise_report = compare_sessions(optimized, plain, data, limit_samples=limit_samples)
    noise = max(output.max_rel for output in noise_report.outputs)
    bound = max(expected.max_rel_error, NOISE_FACTOR * noise)
    reason = (
        f"max rel error {worst:.3g} accepted within {NOISE_FACTOR:g}x ORT's own float noise on "
        f"this model ({noise:.3g}, graph optimizations on vs off)"
    )
    return worst <= bound, reason


def measure_fidelity(
    before: ort.InferenceSession,
    after: ort.InferenceSession,
    data: DataSource,
    limit_samples: int | None = None,
) -> tuple[FidelityReport | None, str | None]:
    try:
        return compare_sessions(before, after, data, limit_samples=limit_samples), None
    except Exception as exc:  # a changed model can fail at run time in many ways
        return None, f"running the model failed: {first_line(exc)}"
