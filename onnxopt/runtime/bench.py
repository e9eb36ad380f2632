"""Latency, throughput, session creation time and memory under an ORT execution provider.

Models are timed interleaved (round-robin, the starting model rotating each round) so that
machine drift (thermal, other load) hits all of them alike; each model's latency ratio to the
first model is the median of the per-round ratios, with its 10th-90th percentile range as the
spread. On CUDA, inputs and outputs are bound on the device (I/O binding) so host transfers are
not timed; when CUDA is not available the run stops with one line (no CPU fallback).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.data.sources import (
    DataSource,
    Feed,
    input_specs,
    open_data,
    random_array,
    resolve_shape,
)
from onnxopt.errors import InputError
from onnxopt.ir.io import LoadedModel, load_model, save_model
from onnxopt.ir.shapes import check_tensor_sizes
from onnxopt.runtime.memory import MemoryUse, measure_memory
from onnxopt.runtime.session import make_session, provider_name, session_options

log = logging.getLogger(__name__)

SCHEMA = "onnxopt.benchmark/1"
DEFAULT_RUNS = 100
MIN_ROUNDS = 5
PERCENTILES = (10, 25, 50, 75, 90, 99)

Progress = Callable[[float], None]


@dataclass(frozen=True)
class BenchSettings:
    """How to benchmark; every field has a default."""

    provider: str = "cpu"
    batch: int | None = None
    """Value of a dynamic batch dim (static batch dims must equal it); default 1."""
    threads: int | None = None
    """ORT intra-op threads; None = ORT's default (one per physical core)."""
    warmup: int = 10
    runs: int | None = None
    """Timed rounds (one run of each model per round); default 100 unless `seconds`."""
    seconds: float | None = None
    """Time budget for all rounds instead of `runs` (at least 5 rounds)."""
    memory: bool = True
    """Measure session memory in a child process per model."""
    spin: bool | None = None
    """ORT worker threads spin while idle. None: on for one model, off for several (an idle
    session's spinning threads would steal cores from the one being timed)."""
    seed: int = 0


@dataclass
class ModelBench:
    name: str
    path: str
    file_bytes: int
    params: int
    macs: int
    macs_expression: str
    batch: int
    inputs: dict[str, list[int]]
    session_seconds: float
    peak_memory_bytes: int | None
    session_memory_bytes: int | None
    memory_method: str
    runs: int
    latency_ms: dict[str, float]
    throughput: float
    """Samples per second: batch / mean latency."""
    spread_pct: float
    """Interquartile range of the latency as % of its median."""
    ratio: float
    """Median of per-round latency ratios to the first model (< 1: faster)."""
    ratio_range: tuple[float, float]
    """10th and 90th percentile of the per-round ratios."""
    samples_ms: list[float] = field(default_factory=list, repr=False)
    """Each timed round's latency in ms, in round order (for plots; not in JSON or CSV)."""


@dataclass
class BenchReport:
    settings: dict
    environment: dict
    models: list[ModelBench] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "settings": self.settings,
            "environment": self.environment,
            "models": [_public(m) for m in self.models],
        }

    def csv_rows(self) -> list[dict[str, object]]:
        rows = []
        for m in self.models:
            skip = ("latency_ms", "ratio_range", "inputs", "samples_ms")
            row = {k: v for k, v in asdict(m).items() if k not in skip}
            row["inputs"] = ";".join(f"{k}:{'x'.join(map(str, v))}" for k, v in m.inputs.items())
            row.update({f"latency_{k}_ms": v for k, v in m.latency_ms.items()})
            row["ratio_p10"], row["ratio_p90"] = m.ratio_range
            rows.append(row)
        return rows


def _public(model: ModelBench) -> dict:
    """A model's results for the JSON report: the summaries, not every round's time."""
    values = asdict(model)
    del values["samples_ms"]
    return values


ModelArg = str | os.PathLike | onnx.ModelProto


@dataclass(frozen=True)
class ModelFacts:
    params: int
    macs: int
    macs_expression: str


FactsOf = Callable[[onnx.ModelProto, dict[str, tuple[int, ...]]], ModelFacts]
"""(model, input shapes) -> its size facts; the caller supplies it (`onnxopt.analyses.stats`)."""


def benchmark_models(
    models: list[ModelArg],
    *,
    settings: BenchSettings | None = None,
    data: str | os.PathLike | DataSource | object | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    progress: Progress | None = None,
    facts: FactsOf,
) -> BenchReport:
    """Benchmark `models` side by side. Feeds: the first batch of `data`, else seeded random
    inputs shaped by `shapes`/`settings.batch`. Raises InputError when the provider is absent."""
    settings = settings or BenchSettings()
    provider_name(settings.provider)
    if not models:
        raise InputError("benchmark needs at least one model")
    _check_settings(settings)
    spin = settings.spin if settings.spin is not None else len(models) == 1
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as workdir:
        loaded = [_load(model, Path(workdir), i) for i, model in enumerate(models)]
        for model in loaded:
            check_tensor_sizes(model.proto)
        feeds = _feeds(loaded, settings, data, shapes)
        prepared = [
            _prepare(m, feed, settings, spin) for m, feed in zip(loaded, feeds, strict=True)
        ]
    runners = [_runner(p.session, p.feed, settings.provider) for p in prepared]
    times = _timed_rounds(runners, settings, progress)
    report = BenchReport(_settings_dict(settings, spin), _environment(settings))
    report.models = [_result(p, times, i, facts) for i, p in enumerate(prepared)]
    return report


@dataclass
class _Prepared:
    """A model ready to time, with what was measured while its files existed."""

    model: LoadedModel
    feed: Feed
    file_bytes: int
    memory: MemoryUse
    session: ort.InferenceSession
    session_seconds: float


def _prepare(model: LoadedModel, feed: Feed, settings: BenchSettings, spin: bool) -> _Prepared:
    file_bytes = sum(path.stat().st_size for path in model.source_files)
    memory = _memory(model, settings, feed)
    start = time.perf_counter()
    session = _session(model, settings, spin)
    created = time.perf_counter() - start
    return _Prepared(model, feed, file_bytes, memory, session, created)


def _check_settings(settings: BenchSettings) -> None:
    if settings.runs is not None and settings.seconds is not None:
        raise InputError("give either --runs or --seconds, not both")
    for name, low in (("runs", 1), ("batch", 1), ("threads", 1), ("warmup", 0)):
        value = getattr(settings, name)
        if value is not None and value < low:
            raise InputError(f"--{name} must be at least {low}, got {value}")
    if settings.seconds is not None and not settings.seconds > 0:
        raise InputError(f"--seconds must be positive, got {settings.seconds:g}")


def _load(model: ModelArg, workdir: Path, index: int) -> LoadedModel:
    if isinstance(model, onnx.ModelProto):
        path = save_model(model, workdir / f"model{index}.onnx")
        return LoadedModel(proto=model, path=path)
    return load_model(model)


def _feeds(
    loaded: list[LoadedModel],
    settings: BenchSettings,
    data: str | os.PathLike | DataSource | object | None,
    shapes: dict[str, tuple[int, ...]] | None,
) -> list[Feed]:
    """One feed per model: the first batch of `data`, or random with the same seed for all."""
    given = shapes or {}
    names = {spec.name for model in loaded for spec in input_specs(model.proto)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InputError(f"--shape names '{unknown[0]}', which is not a model input")
    return [_feed(model, settings, data, given) for model in loaded]


def _feed(
    model: LoadedModel,
    settings: BenchSettings,
    data: str | os.PathLike | DataSource | object | None,
    shapes: dict[str, tuple[int, ...]],
) -> Feed:
    if data is not None:
        source = open_data(data, model.proto, batch_size=settings.batch, seed=settings.seed)
        feed = next(iter(source), None)
        if feed is None:
            raise InputError(f"no samples in {source.description}")
        return feed
    rng = np.random.default_rng(settings.seed)
    feed = {}
    for spec in input_specs(model.proto):
        shape = resolve_shape(spec, shapes.get(spec.name), settings.batch)
        feed[spec.name] = random_array(spec, shape, rng)
    return feed


def _memory(model: LoadedModel, settings: BenchSettings, feed: Feed) -> MemoryUse:
    if not settings.memory or settings.provider != "cpu":
        reason = "not measured" if not settings.memory else "host memory only measured on cpu"
        return MemoryUse(None, None, reason)
    return measure_memory(model.path, settings.provider, settings.threads, feed)


def _session(model: LoadedModel, settings: BenchSettings, spin: bool) -> ort.InferenceSession:
    options = session_options(threads=settings.threads)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return make_session(str(model.path), settings.provider, options=options)


def _runner(session: ort.InferenceSession, feed: Feed, provider: str) -> Callable[[], None]:
    if provider == "cpu":
        return lambda: session.run(None, feed)
    binding = session.io_binding()
    device_inputs = {}
    for name, array in feed.items():
        device_inputs[name] = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
        binding.bind_ortvalue_input(name, device_inputs[name])
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    binding.synchronize_inputs()

    def run() -> None:
        _ = device_inputs  # keep the device buffers alive with the binding
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _timed_rounds(runners, settings: BenchSettings, progress: Progress | None) -> np.ndarray:
    """Seconds per run: shape (rounds, models)."""
    for _ in range(settings.warmup):
        for run in runners:
            run()
    budget = settings.seconds
    rounds = settings.runs or (None if budget is not None else DEFAULT_RUNS)
    times: list[list[float]] = []
    start = time.perf_counter()
    count = len(runners)
    while True:
        done = len(times)
        elapsed = time.perf_counter() - start
        if rounds is not None and done >= rounds:
            break
        if rounds is None and done >= MIN_ROUNDS and elapsed >= budget:
            break
        row = [0.0] * count
        for offset in range(count):
            index = (done + offset) % count
            tick = time.perf_counter()
            runners[index]()
            row[index] = time.perf_counter() - tick
        times.append(row)
        if progress is not None:
            progress(min(1.0, (done + 1) / rounds if rounds else elapsed / budget))
    return np.asarray(times)


def _result(prepared: _Prepared, times: np.ndarray, index: int, facts: FactsOf) -> ModelBench:
    model, feed, memory = prepared.model, prepared.feed, prepared.memory
    seconds = times[:, index]
    ms = seconds * 1000
    stats = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update(mean=float(ms.mean()), std=float(ms.std()), min=float(ms.min()))
    stats["max"] = float(ms.max())
    ratios = seconds / times[:, 0]
    batch = _batch_of(feed)
    counted = facts(model.proto, {name: array.shape for name, array in feed.items()})
    return ModelBench(
        name=model.path.name,
        path=str(model.path),
        file_bytes=prepared.file_bytes,
        params=counted.params,
        macs=counted.macs,
        macs_expression=counted.macs_expression,
        batch=batch,
        inputs=_shapes_of(feed),
        session_seconds=prepared.session_seconds,
        peak_memory_bytes=memory.peak_bytes,
        session_memory_bytes=memory.session_bytes,
        memory_method=memory.method,
        runs=len(seconds),
        latency_ms=stats,
        throughput=batch / float(seconds.mean()),
        spread_pct=100 * (stats["p75"] - stats["p25"]) / stats["p50"],
        ratio=float(np.median(ratios)),
        ratio_range=(float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))),
        samples_ms=[float(value) for value in ms],
    )


def _batch_of(feed: Feed) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _shapes_of(feed: Feed) -> dict[str, list[int]]:
    return {name: list(array.shape) for name, array in feed.items()}


def _settings_dict(settings: BenchSettings, spin: bool) -> dict:
    values = asdict(settings)
    values["spin"] = spin
    values["runs"] = settings.runs or (None if settings.seconds is not None else DEFAULT_RUNS)
    return values


def _environment(settings: BenchSettings) -> dict:
    return {
        "onnxruntime": ort.__version__,
        "execution_provider": provider_name(settings.provider),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
