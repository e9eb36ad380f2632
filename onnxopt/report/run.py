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
            [_row(record) for record in report.passes],
        ),
        f"output: {report.output or '(not written)'}   "
        f"fidelity vs input: {fidelity_text(report.fidelity)}",
        f"fidelity measured on {report.fidelity_on}",
    ]
    if report.fidelity_in_sample:
        blocks.append(
            "warning: these fidelity numbers are in-sample (on data the passes fitted) and "
            "overstate fidelity on new inputs; give --val or more calibration samples"
        )
    for record in report.passes:
        blocks.extend(f"  {record.name}: {reason}" for reason in record.skipped[:SKIPS_SHOWN])
        if len(record.skipped) > SKIPS_SHOWN:
            more = len(record.skipped) - SKIPS_SHOWN
            blocks.append(f"  {record.name}: ... {more} more in the JSON report")
    return blocks


def _row(record: PassRecord) -> list[str]:
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
