"""The optimize run's printable report: a row per pass, the closing lines, skip reasons."""

from __future__ import annotations

from onnxopt.infra.records import PassRecord, RunReport
from onnxopt.report.run import passes_lines, run_blocks
from onnxopt.report.tables import Table

SIZE = {"params": 2048, "bytes": 8192, "macs": None}
FIDELITY = {"outputs": [{"cosine": 0.999, "max_rel": 0.01, "top1": 0.95}]}


def test_run_blocks_name_the_pass_a_prerequisite_ran_for_and_cut_long_skip_lists():
    report = RunReport(version="0", pipeline="quant", provider="cpu", seed=0)
    report.fidelity_on, report.fidelity, report.fidelity_in_sample = "holdout", FIDELITY, True
    report.passes = [
        PassRecord("cleanup", "cleanup", required_by="quant", before=SIZE, after=SIZE),
        PassRecord("quant", "quant", status="changed", before=SIZE, after=SIZE, fidelity=FIDELITY),
    ]
    report.passes[1].skipped = [f"reason {i}" for i in range(7)]
    report.before, report.after = {"bytes": 8192, "macs": 100}, {"bytes": 2048, "macs": 50}
    report.ratios = {"size": 0.25, "macs": 0.5}
    table, *lines = run_blocks(report)
    assert isinstance(table, Table) and table.title == "onnxopt quant"
    assert [row[0] for row in table.rows] == ["cleanup (for quant)", "quant"]
    assert table.rows[1][1:] == [
        "changed", "0.00s", "2.05K -> 2.05K", "n/a", "8.0 KiB -> 8.0 KiB",
        "cos 0.99900, max rel 0.01, top1 95.0%",
    ]  # fmt: skip
    assert (
        lines[0]
        == "output: (not written)   fidelity vs input: cos 0.99900, max rel 0.01, top1 95.0%"
    )
    assert lines[1] == "fidelity measured on holdout"
    assert lines[2].startswith("warning: these fidelity numbers are in-sample")
    assert lines[3] == (
        "output vs input: size 0.250x (8.0 KiB -> 2.0 KiB), MACs 0.500x, "
        "speed-up not measured (--bench)"
    )
    assert lines[4:] == [
        *(f"  quant: reason {i}" for i in range(5)),
        "  quant: ... 2 more in the JSON report",
    ]


def test_passes_lines_list_each_option_under_its_pass():
    entries = [
        {
            "name": "p",
            "summary": "does p",
            "options": [{"name": "k", "type_text": "int", "default": 3, "doc": "how many"}],
        }
    ]
    assert passes_lines(entries) == ["p: does p  [built-in]", "    k (int, default 3): how many"]
    entries[0]["origin"] = "acme-passes 1.2"
    assert passes_lines(entries)[0] == "p: does p  [acme-passes 1.2]"
