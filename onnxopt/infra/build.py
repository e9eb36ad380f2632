"""The build step's closing measurements: the final model against the input.

Size and MACs ratios come from the run's own counters (`RunReport.before/after`); under
--bench both models are timed interleaved by the benchmark engine and the speed-up is the
inverse of the median per-round latency ratio. The gates (`infra.gates`) are evaluated on these
numbers and the run's final fidelity.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import onnx

from onnxopt.analyses.stats import bench_facts
from onnxopt.data.sources import DataSource
from onnxopt.infra.gates import BuildFacts, BuildGates, GateResult, evaluate_gates
from onnxopt.infra.progress import PassProgress, no_progress
from onnxopt.infra.records import RunReport
from onnxopt.runtime.bench import BenchSettings, benchmark_models

log = logging.getLogger(__name__)

BENCH_TASK = "benchmark input vs output"


def record_ratios(report: RunReport) -> None:
    """Size and MACs of the output over the input's (None where the input's count is 0)."""
    report.ratios = {
        key: _ratio(report.after.get(stat), report.before.get(stat))
        for key, stat in (("size", "bytes"), ("macs", "macs"))
    }


def record_bench(
    report: RunReport,
    original: str | os.PathLike | onnx.ModelProto,
    optimized: onnx.ModelProto,
    *,
    provider: str,
    seed: int,
    data: str | os.PathLike | DataSource | object | None,
    progress: PassProgress = no_progress,
) -> None:
    """Time `original` and `optimized` interleaved on the first batch of `data` (else seeded
    random inputs); the latency ratio and speed-up go into `report.ratios`."""
    settings = BenchSettings(provider=provider, memory=False, seed=seed)
    result = benchmark_models(
        [original, optimized],
        settings=settings,
        data=data,
        facts=bench_facts,
        progress=lambda fraction: progress(BENCH_TASK, fraction, 1.0, ""),
    )
    before, after = result.models
    low, high = after.ratio_range
    report.ratios["latency"] = after.ratio
    report.ratios["speedup"] = 1.0 / after.ratio if after.ratio > 0 else None
    report.bench = {
        "provider": provider,
        "runs": after.runs,
        "batch": after.batch,
        "input_p50_ms": before.latency_ms["p50"],
        "output_p50_ms": after.latency_ms["p50"],
        "speedup_p10_p90": [1.0 / high if high > 0 else None, 1.0 / low if low > 0 else None],
    }
    log.info("benchmark: speed-up %.3fx over %d rounds", report.ratios["speedup"], after.runs)


def record_gates(report: RunReport, gates: BuildGates) -> list[GateResult]:
    """Evaluate `gates` on the report's numbers; the results go into `report.gates`."""
    results = evaluate_gates(gates, build_facts(report))
    report.gates = [asdict(result) for result in results]
    return results


def build_facts(report: RunReport) -> BuildFacts:
    outputs = (report.fidelity or {}).get("outputs", [])
    top1 = [o["top1"] for o in outputs if o.get("top1") is not None]
    return BuildFacts(
        input_bytes=int(report.before.get("bytes", 0)),
        output_bytes=int(report.after.get("bytes", 0)),
        cosine=min((o["cosine"] for o in outputs), default=None),
        top1=min(top1, default=None),
        fidelity_note=" (in-sample)" if report.fidelity_in_sample else "",
        speedup=report.ratios.get("speedup"),
    )


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or not before:
        return None
    return after / before
