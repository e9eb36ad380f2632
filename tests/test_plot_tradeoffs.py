"""benchmarks/plot_tradeoffs.py reads the recorded tables of benchmarks/RESULTS.md right."""

from __future__ import annotations

import pytest

from benchmarks.plot_tradeoffs import family, recorded_points, table
from benchmarks.results_file import RESULTS


def test_recorded_points_come_from_the_mobilenet_tables():
    points = {(p.source, p.pipeline): p for p in recorded_points(RESULTS.read_text())}
    quant = points[("bench_generalization", "quant")]
    assert (quant.new_top1, quant.other_top1, quant.speedup, quant.size_ratio) == (
        90.2,
        86.2,
        1.77,
        0.275,
    )
    distilled = points[("bench_distill", "quant,distill")]
    assert (distilled.new_top1, distilled.speedup, distilled.size_ratio) == (93.2, 2.16, None)
    shared = points[("bench_share", "share{bits=8,min_cosine=0}")]
    assert shared.size_ratio == pytest.approx(1 / 3.53) and shared.speedup == pytest.approx(
        1 / 0.89
    )
    assert not any("rolled back" in p.pipeline for p in points.values())
    assert ("bench_generalization", "share{bits=4,data_aware=false}") not in points
    pruned = points[("bench_distill", "prune{ratio=0.3},quant,distill")]
    assert (pruned.new_top1, pruned.other_top1, pruned.speedup) == (78.0, 0.0, 2.45)


def test_distill_rows_that_changed_nothing_are_left_out():
    row = "| `prune{ratio=0.3},quant,distill` | changed |"
    text = RESULTS.read_text()
    assert row in text
    unchanged = text.replace(row, "| `prune{ratio=0.3},quant,distill` | distill unchanged (why) |")
    points = {(p.source, p.pipeline) for p in recorded_points(unchanged)}
    assert ("bench_distill", "prune{ratio=0.3},quant,distill") not in points
    assert ("bench_distill", "quant,distill") in points


def test_table_stops_at_the_first_line_outside_it():
    text = "### M\n\n| a | b |\n|---|---:|\n| x | 1 % |\n\n| c |\n|---|\n| y |\n"
    assert table(text, "M") == [{"a": "x", "b": "1 %"}]
    assert family("prune{ratio=0.3},share{bits=4,min_cosine=0},quant") == "prune,share,quant"
