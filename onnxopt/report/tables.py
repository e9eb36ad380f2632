"""Reports of inspect, validate and benchmark as printable blocks (lines and tables), JSON, CSV.

Nothing here prints: the CLI prints the blocks (`onnxopt.report.terminal.print_table` draws a
rich table on a TTY and aligned plain text otherwise). Progress: `onnxopt.report.progress`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from onnxopt.analyses.summary import ModelSummary
from onnxopt.runtime.bench import BenchReport
from onnxopt.runtime.fidelity import FidelityReport
from onnxopt.units import human_bytes, human_count


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


Block = str | Table


def summary_blocks(summary: ModelSummary, top: int = 10) -> list[Block]:
    size = f" ({human_bytes(summary.file_bytes)})" if summary.file_bytes is not None else ""
    opsets = ", ".join(f"{domain} {version}" for domain, version in summary.opsets.items())
    domains = ", ".join(f"{d or 'ai.onnx'} {n}" for d, n in summary.domains.items())
    macs = summary.macs
    blocks: list[Block] = [
        f"model: {summary.path or '<in-memory>'}{size}",
        f"IR version {summary.ir_version}, producer {summary.producer or '?'}, opsets: {opsets}",
        Table(
            "inputs and outputs",
            ["", "name", "type"],
            [["input", t.name, t.describe()] for t in summary.inputs]
            + [["output", t.name, t.describe()] for t in summary.outputs],
        ),
        f"nodes: {summary.nodes} in the main graph; nodes per domain: {domains or 'none'}",
        f"parameters: {human_count(summary.params)} ({summary.params}); "
        f"stored tensors: {human_bytes(summary.tensor_bytes)}",
        f"MACs: {human_count(macs.total)} ({macs.total}){_symbolic_note(summary)}",
        Table(
            "op types", ["op", "count"], [[op, str(n)] for op, n in summary.op_histogram.items()]
        ),
    ]
    if macs.per_layer:
        rows = [
            [
                layer.name,
                layer.op_type,
                _dims(layer.output_shape),
                layer.expression if macs.symbols else human_count(layer.macs),
                f"{100 * layer.macs / macs.total:.1f}%" if macs.total else "-",
                human_count(layer.params),
            ]
            for layer in macs.top(top)
        ]
        title = f"top {len(rows)} of {len(macs.per_layer)} layers by MACs"
        blocks.append(Table(title, ["layer", "op", "output", "MACs", "share", "params"], rows))
    blocks += [f"not counted: {note}" for note in macs.skipped]
    blocks += [
        f"subgraph: {s.node} ({s.op_type}).{s.attribute}, {s.nodes} nodes"
        for s in summary.subgraphs
    ]
    blocks += [
        f"external data: {name} ({human_bytes(n)})" for name, n in summary.external_data.items()
    ]
    return blocks


def _symbolic_note(summary: ModelSummary) -> str:
    if summary.macs.symbols:
        names = ", ".join(summary.macs.symbols)
        return f" = {summary.macs.expression} with {names} at 1 (set them with --shape)"
    if summary.input_shapes:
        shapes = ", ".join(f"{k}:{_dims(v, 'x')}" for k, v in summary.input_shapes.items())
        return f" at {shapes}"
    return ""


def _dims(shape: list | None, sep: str = ",") -> str:
    if not shape:
        return "-"
    return sep.join("?" if d is None else str(d) for d in shape)


def fidelity_blocks(report: FidelityReport, reference: str, candidate: str) -> list[Block]:
    rows = [
        [
            o.name,
            f"{o.max_abs:.4g}",
            f"{o.mean_abs:.4g}",
            f"{o.cosine:.6f}",
            f"{o.snr_db:.1f}",
            "-" if o.top1 is None else f"{100 * o.top1:.2f}%",
            "-" if o.top5 is None else f"{100 * o.top5:.2f}%",
        ]
        for o in report.outputs
    ]
    columns = ["output", "max abs", "mean abs", "cosine", "SNR dB", "top-1", "top-5"]
    blocks: list[Block] = [
        Table(f"{candidate} vs {reference}", columns, rows),
        f"data: {report.data}; {report.samples} samples compared",
    ]
    if report.synthetic:
        blocks.append("warning: random inputs; these fidelity numbers say little about real data")
    if report.thresholds:
        gates = ", ".join(f"{k}={v:g}" for k, v in report.thresholds.items())
        verdict = "FAILED" if report.failures else "passed"
        blocks.append(f"thresholds ({gates}): {verdict}")
        blocks += [f"  {failure}" for failure in report.failures]
    return blocks


def bench_blocks(report: BenchReport) -> list[Block]:
    rows = []
    for m in report.models:
        lat = m.latency_ms
        low, high = m.ratio_range
        memory = "-" if m.peak_memory_bytes is None else human_bytes(m.peak_memory_bytes)
        rows.append(
            [
                m.name,
                f"{lat['p50']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['p99']:.3f}",
                f"{lat['mean']:.3f}",
                f"±{m.spread_pct / 2:.1f}%",
                f"{m.throughput:.1f}/s",
                f"{m.ratio:.3f}x ({low:.2f}-{high:.2f})",
                f"{m.session_seconds:.3f}",
                memory,
                human_bytes(m.file_bytes),
                human_count(m.macs),
            ]
        )
    columns = ["model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "spread", "throughput"]
    columns += ["latency vs first", "session s", "peak mem", "size", "MACs"]
    settings, env = report.settings, report.environment
    shapes = {
        m.name: ", ".join(f"{k}:{_dims(v, 'x')}" for k, v in m.inputs.items())
        for m in report.models
    }
    inputs = (
        next(iter(shapes.values()))
        if len(set(shapes.values())) == 1
        else "; ".join(f"{k} {v}" for k, v in shapes.items())
    )
    return [
        Table(f"benchmark on {env['execution_provider']}", columns, rows),
        f"inputs {inputs}; {settings['runs'] or '?'} rounds after {settings['warmup']} warm-up, "
        f"models interleaved; threads {settings['threads'] or 'ORT default'}"
        f"{'' if settings['spin'] else ' (no spinning)'}; "
        f"onnxruntime {env['onnxruntime']}, {env['cpu_count']} CPUs",
        "spread: half the interquartile range of the latency; latency vs first: median of the "
        "per-round ratios (10th-90th percentile); peak mem: RSS added by session + first run",
    ]


def to_json(value: object) -> str:
    """Strict JSON: infinities and NaN become the strings 'inf', '-inf', 'nan'."""
    return json.dumps(_finite(value), indent=2, default=str)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def csv_text(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
