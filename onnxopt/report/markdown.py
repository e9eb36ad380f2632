"""The report of an `optimize` run as Markdown, for CI job summaries and pull requests.

Built from the same `RunReport` as the JSON report and the terminal summary: the pipeline, the
per-pass table, the final fidelity, speed and size against the input, the gates, and every
reason a pass skipped something.
"""

from __future__ import annotations

from pathlib import PurePath

from onnxopt.infra.records import RunReport
from onnxopt.report.run import closing_lines, fidelity_text, pass_row
from onnxopt.units import human_bytes

PASS_COLUMNS = ["pass", "status", "time", "params", "MACs", "size", "fidelity vs before"]


def run_markdown(report: RunReport) -> str:
    """The whole report as one Markdown document (ends with a newline)."""
    lines = [
        "# onnxopt optimize report",
        "",
        f"- pipeline: `{report.pipeline}`",
        f"- input: `{_name(report.input)}` ({human_bytes(report.before.get('bytes', 0))})",
        f"- output: `{_name(report.output)}` ({human_bytes(report.after.get('bytes', 0))})"
        if report.output
        else "- output: not written",
        f"- onnxopt {report.version}, provider {report.provider}, seed {report.seed}",
        "",
        "## Passes",
        "",
        *_table(PASS_COLUMNS, [pass_row(record) for record in report.passes]),
        "",
        "## Result against the input",
        "",
        f"- fidelity vs input: {fidelity_text(report.fidelity)}",
        *(f"- {line}" for line in closing_lines(report)[1:]),  # [0]: output path, above
    ]
    if report.gates:
        rows = [
            [g["gate"], g["required"], g["measured"], "pass" if g["passed"] else "**FAIL**"]
            for g in report.gates
        ]
        lines += ["", "## Gates", "", *_table(["gate", "required", "measured", "result"], rows)]
    skipped = [(record.step, reason) for record in report.passes for reason in record.skipped]
    lines += ["", "## Skipped by the passes", ""]
    if skipped:
        lines += [f"- `{step}`: {_escape(reason)}" for step, reason in skipped]
    else:
        lines.append("Nothing was skipped.")
    return "\n".join(lines) + "\n"


def _name(path: str) -> str:
    """A file's name: the summary is read beside the build, the JSON report has full paths."""
    return PurePath(path).name or path


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(_escape(cell) for cell in row) + " |" for row in rows),
    ]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
