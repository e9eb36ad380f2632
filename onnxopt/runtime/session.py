"""ONNX Runtime sessions on a named execution provider, with no silent fallback."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxopt.errors import InputError
from onnxopt.ir.io import serialize_for_runtime

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def provider_name(provider: str) -> str:
    """Map 'cpu'/'cuda' to ORT's provider name; raise InputError if it is unknown or absent."""
    if provider not in PROVIDERS:
        raise InputError(f"unknown provider '{provider}' (choose from: {', '.join(PROVIDERS)})")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        hint = " (install onnxruntime-gpu and run on a machine with a CUDA GPU)" * (
            provider == "cuda"
        )
        raise InputError(
            f"execution provider {name} is not available{hint}; available: {', '.join(available)}"
        )
    return name


def session_options(
    *,
    threads: int | None = None,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    optimized_model_path: str | None = None,
    spinning: bool = True,
) -> ort.SessionOptions:
    """`spinning=False` for sessions whose runs alternate with numpy work (calibration): ORT's
    idle threads would otherwise busy-wait and take the cores that work (and BLAS) needs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    # Errors reach the caller as exceptions; ORT's own log of them would be a second copy.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


RELEASE = ort.RunOptions()
"""Run options of work sessions (gates, scorers, probes): ORT's arena gives back what a run took
when the run ends. The sessions outlive their runs (the pipeline's input model's, through every
pass) and would each hold their peak: a 960x960 detector's quant took 1.65 GB with the arena
kept, 1.2 GB given back (1.2 GB too with no arena at all, whose every run was 1.7x slower on
MobileNetV2 at batch 8; giving back cost nothing measurable there)."""
RELEASE.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def make_session(
    model: onnx.ModelProto | str | Path,
    provider: str = "cpu",
    *,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Create a session on exactly `provider`; large in-memory models go through a temp file."""
    name = provider_name(provider)
    providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    options = options or session_options()
    if isinstance(model, (str, Path)):
        session = ort.InferenceSession(str(model), options, providers=providers)
    else:
        with tempfile.TemporaryDirectory(prefix="onnxopt-session-") as workdir:
            source = serialize_for_runtime(model, Path(workdir))
            session = ort.InferenceSession(source, options, providers=providers)
    if name not in session.get_providers():
        raise InputError(f"onnxruntime did not enable {name} for this model")
    return session


@dataclass
class SessionOutcome:
    session: ort.InferenceSession | None
    error: str | None


def try_session(model: onnx.ModelProto, provider: str) -> SessionOutcome:
    """A session for the gates: they run two models in turn, so idle threads must not spin."""
    try:
        options = session_options(spinning=False)
        return SessionOutcome(make_session(model, provider, options=options), None)
    except Exception as exc:  # ORT raises its own exception types for invalid graphs
        return SessionOutcome(None, f"onnxruntime session: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line reasons in reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
