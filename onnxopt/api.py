"""The Python API: what the CLI calls and what Python users import."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxopt.analyses.stats import bench_facts
from onnxopt.analyses.summary import ModelSummary, summarize
from onnxopt.data.holdout import HOLDOUT_FRACTION
from onnxopt.data.sources import (
    DataSource,
    ImagePreprocess,
    open_data,
    parse_preprocess,
    parse_shapes,
)
from onnxopt.errors import CheckFailed, InputError, OptionError
from onnxopt.infra.build import record_bench, record_gates, record_ratios
from onnxopt.infra.gates import BuildGates, GateResult, failure_line, parse_size_limit
from onnxopt.infra.manager import PassManager
from onnxopt.infra.options import describe_options
from onnxopt.infra.pipeline import Pipeline, load_pipeline_file, parse_pipeline
from onnxopt.infra.plugins import load_plugin_passes
from onnxopt.infra.progress import PassProgress, no_progress
from onnxopt.infra.records import RunReport
from onnxopt.infra.registry import get_pass_class, pass_names, pass_origin
from onnxopt.ir.io import (
    LoadedModel,
    check_output_path,
    discard_model,
    load_model,
    save_model,
    write_bytes_atomic,
    write_text_atomic,
)
from onnxopt.report.markdown import run_markdown
from onnxopt.report.plots import latency_figure, plot_format, require_matplotlib
from onnxopt.report.tables import csv_text, to_json
from onnxopt.runtime.bench import BenchReport, BenchSettings, Progress, benchmark_models
from onnxopt.runtime.fidelity import FidelityReport
from onnxopt.runtime.session import provider_name
from onnxopt.runtime.validate import Thresholds, validate_models

DEFAULT_PIPELINE = "cleanup"


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: RunReport
    output: Path | None
    failed_gates: list[GateResult] = field(default_factory=list)
    """Build-step gates the final model missed (then `output` is None unless keep_failed)."""

    def raise_for_failures(self) -> None:
        """CheckFailed (exit 1) naming every missed gate, on one line."""
        if self.failed_gates:
            raise CheckFailed(failure_line(self.failed_gates, self.output is not None))


def default_output(model: str | os.PathLike, *, force: bool = False) -> Path:
    """`MODEL.opt.onnx` beside `model`; InputError when it exists already, unless `force`."""
    path = Path(model)
    stem = path.name[: -len(".onnx")] if path.name.lower().endswith(".onnx") else path.name
    output = path.with_name(f"{stem}.opt.onnx")
    if output.exists() and not force:
        raise InputError(
            f"{output} exists already; pass --force to overwrite it or -o to write elsewhere"
        )
    return output


def optimize(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    passes: str | None = None,
    config: str | os.PathLike | None = None,
    calib: str | os.PathLike | DataSource | None = None,
    val: str | os.PathLike | DataSource | None = None,
    preprocess: str | ImagePreprocess | None = None,
    holdout: float = HOLDOUT_FRACTION,
    provider: str = "cpu",
    seed: int = 0,
    strict: bool = False,
    report: str | os.PathLike | None = None,
    bench: bool = False,
    min_top1: float | None = None,
    min_cosine: float | None = None,
    min_speedup: float | None = None,
    max_size: str | float | None = None,
    keep_failed: bool = False,
    progress: PassProgress = no_progress,
) -> OptimizeResult:
    """Run a pipeline on `model`; write the result to `output` and the report to `report`
    (Markdown when it ends in `.md`, else JSON).

    Fidelity is measured on `val`, else on a seeded `holdout` share of the `calib` samples
    that no pass fits on (`report.fidelity_on` says which; 0: none held out, in-sample).
    `bench` times the input and the output interleaved (implied by `min_speedup`). The gates
    (`min_top1`, `min_cosine`, `min_speedup`, `max_size`: a ratio of the input's size or a
    size like '3MB') compare the final model with the input; a missed gate is listed in
    `failed_gates` and no model is written unless `keep_failed` (the report is written either
    way; call `raise_for_failures()` to turn misses into CheckFailed).
    """
    pipeline = resolve_pipeline(passes, config)
    provider_name(provider)
    if not 0.0 <= holdout <= 0.5:
        raise OptionError(f"holdout must be a fraction in [0, 0.5], got {holdout}")
    gates = BuildGates(
        min_top1=min_top1,
        min_cosine=min_cosine,
        min_speedup=min_speedup,
        max_size=parse_size_limit(max_size) if max_size is not None else None,
    )
    if gates.needs_fidelity and calib is None and val is None:
        raise OptionError(
            "--min-top1/--min-cosine need --val or --calib: fidelity on random inputs means nothing"
        )
    loaded = _load(model)
    protect = loaded.source_files
    if output is not None:
        check_output_path(Path(output), protect)
    if report is not None:
        check_output_path(Path(report), protect)
    manager = PassManager(
        pipeline,
        provider=provider,
        seed=seed,
        strict=strict,
        calibration=open_data(calib, loaded.proto, seed=seed, preprocess=_preprocess(preprocess)),
        validation=open_data(val, loaded.proto, seed=seed, preprocess=_preprocess(preprocess)),
        holdout=holdout,
        progress=progress,
    )
    optimized, run_report = manager.run(loaded.proto)
    run_report.input = str(loaded.path) if loaded.path else "<in-memory model>"
    record_ratios(run_report)
    if bench or gates.needs_bench:
        original = loaded.path if loaded.path else loaded.proto
        data = val if val is not None else calib
        record_bench(
            run_report,
            original,
            optimized,
            provider=provider,
            seed=seed,
            data=data,
            progress=progress,
        )
    failed = [gate for gate in record_gates(run_report, gates) if not gate.passed]
    written = None
    try:
        if output is not None and (keep_failed or not failed):
            written = save_model(optimized, output, protect=protect)
            run_report.output = str(written)
        if report is not None:
            write_text_atomic(Path(report), _report_text(run_report, Path(report)), protect)
    except BaseException:
        if written is not None:  # all or nothing: no model without its report
            discard_model(written)
        raise
    return OptimizeResult(optimized, run_report, written, failed)


def _report_text(run_report: RunReport, path: Path) -> str:
    if path.suffix.lower() == ".md":
        return run_markdown(run_report)
    return run_report.to_json() + "\n"


def resolve_pipeline(passes: str | None, config: str | os.PathLike | None) -> Pipeline:
    """The pipeline of `passes` text or a `config` file; plugin passes are loaded first."""
    load_plugin_passes()
    if passes is not None and config is not None:
        raise OptionError("give either --passes or --config, not both")
    if config is not None:
        return load_pipeline_file(config)
    return parse_pipeline(passes if passes is not None else DEFAULT_PIPELINE)


def list_passes() -> list[dict]:
    """Every registered pass (plugins loaded first) with its origin ('built-in' or the plugin's
    distribution and version), summary and options (name, type, default, doc)."""
    load_plugin_passes()
    entries = []
    for name in pass_names():
        cls = get_pass_class(name)
        entries.append(
            {
                "name": name,
                "origin": pass_origin(name),
                "summary": cls.summary,
                "min_opset": cls.min_opset,
                "options": [vars(info) for info in describe_options(cls.Options)],
            }
        )
    return entries


def _load(model: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    if isinstance(model, onnx.ModelProto):
        return LoadedModel(proto=model)
    return load_model(model)


# --- inspect, validate, benchmark ---------------------------------------------------------

Shapes = dict[str, tuple[int, ...]] | list[str] | tuple[str, ...] | None


def inspect(model: str | os.PathLike | onnx.ModelProto, *, shapes: Shapes = None) -> ModelSummary:
    """Inputs/outputs, opsets, op histogram, parameters, MACs per layer, subgraphs, external data.

    `shapes` fixes dynamic input dims ({name: shape} or ['name:1x3x224x224', ...]).
    """
    loaded = _load(model)
    return summarize(
        loaded.proto,
        path=loaded.path,
        external_files=loaded.external_files,
        input_shapes=_shapes(shapes),
    )


def validate(
    reference: str | os.PathLike | onnx.ModelProto,
    candidate: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | DataSource | object,
    *,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    max_abs: float | None = None,
    provider: str = "cpu",
    batch_size: int | None = None,
    shapes: Shapes = None,
    preprocess: str | ImagePreprocess | None = None,
    seed: int = 0,
    report: str | os.PathLike | None = None,
) -> FidelityReport:
    """Fidelity of `candidate` against `reference` on `data` (see onnxopt.data.sources.open_data).

    Missed thresholds are listed in the result's `failures` (call `raise_for_failures()` to
    turn them into CheckFailed); the JSON report is written to `report` either way.
    """
    protect = _paths(reference, candidate)
    if report is not None:
        check_output_path(Path(report), protect)
    result = validate_models(
        reference,
        candidate,
        data,
        thresholds=Thresholds(min_cosine=min_cosine, min_top1=min_top1, max_abs=max_abs),
        provider=provider,
        batch_size=batch_size,
        shapes=_shapes(shapes),
        preprocess=_preprocess(preprocess),
        seed=seed,
    )
    if report is not None:
        write_text_atomic(Path(report), to_json(result.to_dict()) + "\n", protect)
    return result


def benchmark(
    models: list[str | os.PathLike | onnx.ModelProto],
    *,
    provider: str = "cpu",
    batch: int | None = None,
    threads: int | None = None,
    warmup: int = 10,
    runs: int | None = None,
    seconds: float | None = None,
    data: str | os.PathLike | DataSource | object | None = None,
    shapes: Shapes = None,
    memory: bool = True,
    seed: int = 0,
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Latency (p50/p90/p99/mean), throughput, session time and memory, size and MACs of
    `models`, timed round-robin; ratios are to the first model. `plot`: a .png/.svg/.pdf of
    the per-round latency distributions side by side (needs matplotlib: `onnxopt[plot]`)."""
    protect = _paths(*models)
    for path in (json_path, csv_path, plot):
        if path is not None:
            check_output_path(Path(path), protect)
    if plot is not None:
        image_format = plot_format(plot)
        require_matplotlib()
    settings = BenchSettings(
        provider=provider,
        batch=batch,
        threads=threads,
        warmup=warmup,
        runs=runs,
        seconds=seconds,
        memory=memory,
        seed=seed,
    )
    result = benchmark_models(
        list(models),
        settings=settings,
        data=data,
        shapes=_shapes(shapes),
        progress=progress,
        facts=bench_facts,
    )
    picture = latency_figure(result, image_format) if plot is not None else None
    if json_path is not None:
        write_text_atomic(Path(json_path), to_json(result.to_dict()) + "\n", protect)
    if csv_path is not None:
        write_text_atomic(Path(csv_path), csv_text(result.csv_rows()), protect)
    if picture is not None:
        write_bytes_atomic(Path(plot), picture, protect)
    return result


def _shapes(shapes: Shapes) -> dict[str, tuple[int, ...]] | None:
    if not shapes:
        return None
    if isinstance(shapes, dict):
        return {name: tuple(shape) for name, shape in shapes.items()}
    return parse_shapes(shapes)


def _preprocess(preprocess: str | ImagePreprocess | None) -> ImagePreprocess | None:
    if preprocess is None or isinstance(preprocess, ImagePreprocess):
        return preprocess
    return parse_preprocess(preprocess)


def _paths(*models: str | os.PathLike | onnx.ModelProto) -> list[Path]:
    return [Path(m) for m in models if not isinstance(m, onnx.ModelProto)]
