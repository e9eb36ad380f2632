"""Build-step gates: size limits as ratios or sizes, each gate met and missed, NaN never passes."""

from __future__ import annotations

import math

import pytest

from onnxopt.errors import OptionError
from onnxopt.infra.gates import (
    BuildFacts,
    BuildGates,
    evaluate_gates,
    failure_line,
    parse_size_limit,
)


@pytest.mark.parametrize(
    ("text", "ratio", "max_bytes"),
    [
        ("0.5", 0.5, None),
        ("2", 2.0, None),
        (".25", 0.25, None),
        ("3MB", None, 3_000_000),
        ("3 mb", None, 3_000_000),
        ("1.5KiB", None, 1536),
        ("2GiB", None, 2 * 1024**3),
        ("1000B", None, 1000),
    ],
)
def test_size_limit_is_a_ratio_without_a_unit_and_bytes_with_one(text, ratio, max_bytes):
    limit = parse_size_limit(text)
    assert (limit.ratio, limit.max_bytes) == (ratio, max_bytes)


@pytest.mark.parametrize("text", ["", "MB", "3XB", "-1", "1e3", "3 M B"])
def test_unreadable_size_limits_are_refused(text):
    with pytest.raises(OptionError, match="--max-size"):
        parse_size_limit(text)


def test_zero_size_limit_is_refused():
    with pytest.raises(OptionError, match="must be positive"):
        parse_size_limit("0")


FACTS = BuildFacts(input_bytes=1000, output_bytes=400, cosine=0.995, top1=0.97, speedup=1.8)


def test_each_gate_at_its_bar_passes_and_just_above_it_fails():
    met = BuildGates(0.97, 0.995, 1.8, parse_size_limit("0.4"))
    assert [r.passed for r in evaluate_gates(met, FACTS)] == [True] * 4
    missed = BuildGates(0.98, 0.996, 1.9, parse_size_limit("399B"))
    results = evaluate_gates(missed, FACTS)
    assert [r.gate for r in results] == [
        "--min-top1",
        "--min-cosine",
        "--min-speedup",
        "--max-size",
    ]
    assert [r.passed for r in results] == [False] * 4
    assert results[2].measured == "1.8000x"
    assert results[3].required == "<= 399B (399 B)"
    assert results[3].measured == "400 B (0.400 of the input)"


def test_nan_and_unmeasured_values_never_pass():
    facts = BuildFacts(input_bytes=1, output_bytes=1, cosine=math.nan, top1=None, speedup=None)
    results = evaluate_gates(BuildGates(min_top1=0.0, min_cosine=0.0, min_speedup=0.1), facts)
    assert [r.passed for r in results] == [False, False, False]
    assert results[0].measured == "not measured (no output is 2-D logits)"
    assert results[2].measured == "not measured (not benchmarked)"


def test_in_sample_fidelity_is_labelled_in_the_measured_value():
    facts = BuildFacts(input_bytes=1, output_bytes=1, top1=1.0, fidelity_note=" (in-sample)")
    assert evaluate_gates(BuildGates(min_top1=0.9), facts)[0].measured == "1.0000 (in-sample)"


def test_failure_line_names_every_missed_gate_on_one_line():
    results = evaluate_gates(BuildGates(min_top1=0.99, min_speedup=2.0), FACTS)
    line = failure_line(results, written=False)
    assert line == (
        "gate --min-top1 missed: required >= 0.99, measured 0.9700; "
        "gate --min-speedup missed: required >= 2, measured 1.8000x (no model written)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_top1": 1.2}, "--min-top1 must be in"), ({"min_cosine": -0.1}, "--min-cosine must be"),
     ({"min_speedup": 0.0}, "--min-speedup must be positive")],
)  # fmt: skip
def test_out_of_range_bars_are_refused(kwargs, message):
    with pytest.raises(OptionError, match=message):
        BuildGates(**kwargs)
