"""The report of an `optimize` run and the pass list as printable blocks (see `tables.Block`)."""

from __future__ import annotations

from onnxopt.infra.records import PassRecord, RunReport
from onnxopt.report.tables import Block, Table
from onnxopt.units import human_bytes, human_count

SKIPS_SHOWN = 5
"""Skip reasons printed per pass; the JSON report keeps them all."""


def run_blocks(report: RunReport) -> list[Block]:
    """A row per pass (status, time, params, MACs, size, fidelity vs before), the fidelity
    against the input and what it was measured on, then each pass's first skip reasons."""
    blocks: list[Block] = [
        Table(
            f"onnxopt {report.pipeline}",
            ["pass", "status", "time", "params", "MACs", "size", "fidelity vs before"],
            [pass_row(record) for record in report.passes],
        ),
        *closing_lines(report),
    ]
    for record in report.passes:
        blocks.extend(f"  {record.name}: {reason}" for reason in record.skipped[:SKIPS_SHOWN])
        if len(record.skipped) > SKIPS_SHOWN:
            more = len(record.skipped) - SKIPS_SHOWN
            blocks.append(f"  {record.name}: ... {more} more in the JSON report")
    return blocks


def closing_lines(report: RunReport) -> list[str]:
    """The final model against the input: where it went, fidelity and on what, the size, MACs
    and (under --bench) speed-up ratios, and each gate's result."""
    lines = [
        f"output: {report.output or '(not written)'}   "
        f"fidelity vs input: {fidelity_text(report.fidelity)}",
        f"fidelity measured on {report.fidelity_on}",
    ]
    if report.fidelity_in_sample:
        lines.append(
            "warning: these fidelity numbers are in-sample (on data the passes fitted) and "
            "overstate fidelity on new inputs; give --val or more calibration samples"
        )
    lines.append(ratios_text(report))
    if report.bench:
        bench = report.bench
        low, high = bench["speedup_p10_p90"]
        spread = f", p10-p90 {low:.2f}x-{high:.2f}x" if low and high else ""
        lines.append(
            f"benchmark ({bench['provider']}, batch {bench['batch']}, {bench['runs']} rounds "
            f"interleaved): p50 {bench['input_p50_ms']:.3f} ms -> {bench['output_p50_ms']:.3f} ms"
            f"{spread}"
        )
    lines.extend(
        f"gate {g['gate']}: {'passed' if g['passed'] else 'MISSED'} "
        f"(required {g['required']}, measured {g['measured']})"
        for g in report.gates
    )
    return lines


def ratios_text(report: RunReport) -> str:
    """`size 0.27x (95.0 KiB -> 25.9 KiB), MACs 1.00x, speed-up 1.52x` (output over input)."""
    ratios = report.ratios
    before, after = report.before.get("bytes", 0), report.after.get("bytes", 0)
    parts = [f"size {_times(ratios.get('size'))} ({human_bytes(before)} -> {human_bytes(after)})"]
    parts.append(f"MACs {_times(ratios.get('macs'))}")
    if ratios.get("speedup") is not None:
        parts.append(f"speed-up {ratios['speedup']:.2f}x (measured)")
    else:
        parts.append("speed-up not measured (--bench)")
    return "output vs input: " + ", ".join(parts)


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}x"


def pass_row(record: PassRecord) -> list[str]:
    """One pass's row of the per-pass table (terminal and Markdown)."""
    before, after = record.before, record.after
    return [
        record.step + (f" (for {record.required_by})" if record.required_by else ""),
        record.status + (f": {record.reason}" if record.reason else ""),
        f"{record.seconds:.2f}s",
        f"{human_count(before['params'])} -> {human_count(after['params'])}",
        _macs_text(before, after),
        f"{human_bytes(before['bytes'])} -> {human_bytes(after['bytes'])}",
        fidelity_text(record.fidelity),
    ]


def _macs_text(before: dict, after: dict) -> str:
    if before.get("macs") is None:
        return "n/a"
    return f"{human_count(before['macs'])} -> {human_count(after['macs'])}"


def fidelity_text(fidelity: dict | None) -> str:
    """Worst cosine, worst max relative error and worst top-1 of a fidelity report's dict."""
    if not fidelity:
        return "-"
    outputs = fidelity["outputs"]
    cosine = min(o["cosine"] for o in outputs)
    max_rel = max(o["max_rel"] for o in outputs)
    text = f"cos {cosine:.5f}, max rel {max_rel:.2g}"
    top1 = [o["top1"] for o in outputs if o.get("top1") is not None]
    if top1:
        text += f", top1 {min(top1) * 100:.1f}%"
    return text


def passes_lines(entries: list[dict]) -> list[str]:
    """`api.list_passes()` as text: each pass's summary and origin, then its options indented."""
    lines = []
    for entry in entries:
        origin = entry.get("origin", "built-in")
        lines.append(f"{entry['name']}: {entry['summary']}  [{origin}]")
        lines.extend(
            f"    {opt['name']} ({opt['type_text']}, default {opt['default']!r}): {opt['doc']}"
            for opt in entry["options"]
        )
    return lines
