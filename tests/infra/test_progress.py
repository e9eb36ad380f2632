"""Passes show where they are through the data reads the manager reports (no engine draws)."""

from __future__ import annotations

import numpy as np

from onnxopt import api
from onnxopt.data.feeds import InputSpec
from onnxopt.data.sources import IterableSource
from onnxopt.infra.progress import ReportedReads, no_progress, reported_reads


def test_each_read_of_the_calibration_data_is_reported_under_the_pass_name(
    digits_model, digits_calib, tmp_path
):
    calls = []
    api.optimize(
        digits_model,
        tmp_path / "q.onnx",
        passes="quant",
        calib=digits_calib,
        progress=lambda task, done, total, detail: calls.append((task, done, total, detail)),
    )
    quant = [c for c in calls if c[0] == "quant"]
    assert quant, calls
    fit = quant[0][2]  # the samples quant may fit on: the calibration set less the holdout
    assert 0 < fit < 128 and all(total == fit for _, _, total, _ in quant)
    reads = {detail for *_, detail in quant}
    assert len(reads) >= 2 and all("read" in d for d in reads)  # calibration, then equalize/...
    first = [done for _, done, _, d in quant if d.endswith("read 1")]
    assert first == sorted(first) and first[-1] <= fit


def test_reported_reads_forward_the_source_and_stay_out_when_nobody_watches():
    feeds = [{"x": np.zeros((3, 2), np.float32)}, {"x": np.ones((2, 2), np.float32)}]
    source = IterableSource(feeds, [InputSpec("x", np.dtype(np.float32), ("N", 2))])
    assert reported_reads(source, no_progress, "t") is source
    assert reported_reads(None, print, "t") is None
    calls = []
    wrapped = reported_reads(source, lambda *a: calls.append(a), "t")
    assert isinstance(wrapped, ReportedReads) and wrapped.description == source.description
    assert [f["x"].shape[0] for f in wrapped] == [3, 2]
    assert [(done, detail) for _, done, _, detail in calls] == [
        (3, f"reading {source.description}, read 1"),
        (5, f"reading {source.description}, read 1"),
    ]
