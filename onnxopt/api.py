"""The Python API: what the CLI calls and what Python users import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxopt.data import DataSource, open_data
from onnxopt.infra.errors import OptionError
from onnxopt.infra.manager import PassManager
from onnxopt.infra.options import describe_options
from onnxopt.infra.pipeline import Pipeline, load_pipeline_file, parse_pipeline
from onnxopt.infra.records import RunReport
from onnxopt.infra.registry import get_pass_class, pass_names
from onnxopt.ir.io import (
    LoadedModel,
    check_output_path,
    load_model,
    save_model,
    write_text_atomic,
)
from onnxopt.runtime import provider_name

DEFAULT_PIPELINE = "cleanup"


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: RunReport
    output: Path | None


def optimize(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    passes: str | None = None,
    config: str | os.PathLike | None = None,
    calib: str | os.PathLike | DataSource | None = None,
    val: str | os.PathLike | DataSource | None = None,
    provider: str = "cpu",
    seed: int = 0,
    strict: bool = False,
    report: str | os.PathLike | None = None,
) -> OptimizeResult:
    """Run a pipeline on `model`; write the result to `output` and the JSON report to `report`."""
    pipeline = resolve_pipeline(passes, config)
    provider_name(provider)
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
        calibration=open_data(calib, loaded.proto, seed=seed),
        validation=open_data(val, loaded.proto, seed=seed),
    )
    optimized, run_report = manager.run(loaded.proto)
    run_report.input = str(loaded.path) if loaded.path else "<in-memory model>"
    written = None
    if output is not None:
        written = save_model(optimized, output, protect=protect)
        run_report.output = str(written)
    if report is not None:
        write_text_atomic(Path(report), run_report.to_json() + "\n", protect)
    return OptimizeResult(optimized, run_report, written)


def resolve_pipeline(passes: str | None, config: str | os.PathLike | None) -> Pipeline:
    if passes is not None and config is not None:
        raise OptionError("give either --passes or --config, not both")
    if config is not None:
        return load_pipeline_file(config)
    return parse_pipeline(passes if passes is not None else DEFAULT_PIPELINE)


def list_passes() -> list[dict]:
    """Every registered pass with its summary and options (name, type, default, doc)."""
    entries = []
    for name in pass_names():
        cls = get_pass_class(name)
        entries.append(
            {
                "name": name,
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
