"""Fidelity metrics on hand-computed cases, thresholds, and `onnxopt validate` end to end."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxopt import api
from onnxopt.data.sources import IterableSource, input_specs
from onnxopt.errors import CheckFailed, InputError
from onnxopt.runtime.fidelity import ReferenceScorer, compare_runners, compare_sessions
from onnxopt.runtime.session import make_session
from onnxopt.runtime.validate import Thresholds, threshold_failures
from tests.conftest import run_cli

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'


def scale_model(factor: float, output: str = "y") -> onnx.ModelProto:
    """y = x * factor, with a dynamic batch: a classifier-shaped [N, 4] output."""
    model = onnx.parser.parse_model(
        HEADER + f"g (float[N, 4] x) => (float[N, 4] {output}) "
        f"<float k = {{{factor}}}> {{ {output} = Mul(x, k) }}"
    )
    model.ir_version = 10
    return model


def fixed(outputs: list[np.ndarray]):
    """A runner that returns the given arrays one call after another."""
    items = iter(outputs)
    return lambda feed: [next(items)]


def source_of(batches: int) -> IterableSource:
    feeds = [{"x": np.zeros((1, 4), np.float32)}] * batches
    return IterableSource(feeds, input_specs(scale_model(1.0)))


def test_metrics_on_a_hand_computed_case():
    ref = np.array([[3.0, 4.0]], np.float32)
    cand = np.array([[4.0, 3.0]], np.float32)
    report = compare_runners(fixed([ref]), fixed([cand]), ["y"], source_of(1))
    (out,) = report.outputs
    assert out.max_abs == 1.0 and out.mean_abs == 1.0
    assert out.max_rel == pytest.approx(1.0 / 4.0, abs=1e-12)
    assert out.cosine == pytest.approx(24.0 / 25.0, abs=1e-12)  # (12 + 12) / (5 * 5)
    assert out.snr_db == pytest.approx(10 * math.log10(25.0 / 2.0), abs=1e-9)
    assert out.top1 == 0.0 and out.top5 == 1.0  # argmax moved; 2 classes are all in the top 5


def test_metrics_accumulate_across_batches_like_one_batch():
    rng = np.random.default_rng(0)
    ref, noise = rng.standard_normal((6, 10)), 0.1 * rng.standard_normal((6, 10))
    cand = ref + noise
    whole = compare_runners(fixed([ref]), fixed([cand]), ["y"], source_of(1)).outputs[0]
    parts = compare_runners(
        fixed([ref[:2], ref[2:5], ref[5:]]),
        fixed([cand[:2], cand[2:5], cand[5:]]),
        ["y"],
        source_of(3),
    ).outputs[0]
    for name in ("max_abs", "mean_abs", "cosine", "snr_db", "top1", "top5"):
        assert getattr(parts, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    expected_cos = float(ref.ravel() @ cand.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(cand))
    assert whole.cosine == pytest.approx(expected_cos, rel=1e-12)
    assert whole.mean_abs == pytest.approx(float(np.abs(noise).mean()), rel=1e-12)


def test_reference_scorer_compares_per_output_like_compare_sessions():
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(2)]
    data = IterableSource(feeds, input_specs(scale_model(1.0)))
    reference, candidate = scale_model(1.0), scale_model(-0.5, output="z")  # another name
    scorer = ReferenceScorer(reference, data, None)
    direct = compare_sessions(make_session(reference), make_session(candidate), data)
    assert scorer.compare(candidate).to_dict() == direct.to_dict()
    assert scorer.worst(candidate) == {
        "cosine": round(direct.worst("cosine"), 6),
        "top1_agreement": round(direct.worst("top1"), 6),
    }
    assert scorer.worst(reference) == {"cosine": 1.0, "top1_agreement": 1.0}


def two_outputs(small_factor: float) -> onnx.ModelProto:
    """big = 100 x, small = small_factor x: a detector's box and score heads in miniature."""
    model = onnx.parser.parse_model(
        HEADER + "g (float[N, 4] x) => (float[N, 4] big, float[N, 4] small) "
        f"<float k = {{100.0}}, float s = {{{small_factor}}}> "
        "{ big = Mul(x, k)\n small = Mul(x, s) }"
    )
    model.ir_version = 10
    return model


def test_reference_scorer_scores_the_worst_output_not_the_joint_cosine():
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((3, 4)).astype(np.float32)}]
    data = IterableSource(feeds, input_specs(two_outputs(1.0)))
    scorer = ReferenceScorer(two_outputs(1.0), data, None)
    score = scorer.score(two_outputs(-1.0))  # the small output flipped, the big one exact
    assert score.cosine == pytest.approx(-1.0)  # its joint cosine would be about 0.9998
    assert score.cosine == pytest.approx(scorer.worst(two_outputs(-1.0))["cosine"])
    assert not score.meets(0.9, None)


def test_top1_and_top5_agreement():
    ref = np.zeros((4, 8), np.float32)
    ref[np.arange(4), [0, 1, 2, 3]] = 1.0  # reference classes 0, 1, 2, 3
    cand = np.tile(np.arange(8, dtype=np.float32)[::-1], (4, 1))  # ranks 0 > 1 > ... > 7
    cand[0, 0] = 100  # row 0: class 0 first
    cand[3, 3] = -100  # row 3: class 3 last, outside the top 5
    out = compare_runners(fixed([ref]), fixed([cand]), ["y"], source_of(1)).outputs[0]
    assert out.top1 == 0.25  # only row 0 keeps its class first
    assert out.top5 == 0.75  # rows 0, 1, 2 have their class in the top 5


def test_identical_outputs_and_non_classifier_outputs():
    ref = np.ones((2, 3, 4), np.float32)
    out = compare_runners(fixed([ref]), fixed([ref.copy()]), ["y"], source_of(1)).outputs[0]
    assert (out.max_abs, out.cosine, out.snr_db) == (0.0, 1.0, math.inf)
    assert out.top1 is None and out.top5 is None


def test_nan_in_candidate_fails_every_gate():
    ref = np.ones((1, 4), np.float32)
    cand = np.array([[1, np.nan, 1, 1]], np.float32)
    report = compare_runners(fixed([ref]), fixed([cand]), ["y"], source_of(1))
    failures = threshold_failures(report, Thresholds(min_cosine=0.0, max_abs=1e9))
    assert len(failures) == 2


def test_equal_infinities_match_and_huge_values_do_not_overflow(recwarn):
    ref = np.array([[np.inf, -np.inf, 3e38, 1.0]], np.float32)
    out = compare_runners(fixed([ref]), fixed([ref.copy()]), ["y"], source_of(1)).outputs[0]
    assert (out.max_abs, out.cosine) == (0.0, 1.0)
    half = compare_runners(fixed([ref]), fixed([ref / 2]), ["y"], source_of(1)).outputs[0]
    assert half.cosine == pytest.approx(1.0) and half.max_abs > 1e38
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_thresholds_name_each_miss():
    ref = np.array([[3.0, 4.0]], np.float32)
    report = compare_runners(fixed([ref]), fixed([ref[:, ::-1].copy()]), ["y"], source_of(1))
    assert threshold_failures(report, Thresholds(min_cosine=0.9, max_abs=1.0, min_top1=0.0)) == []
    failures = threshold_failures(report, Thresholds(min_cosine=0.99, max_abs=0.5, min_top1=0.5))
    assert failures == [
        "output 'y' cosine 0.960000 < 0.99",
        "output 'y' max abs error 1 > 0.5",
        "output 'y' top-1 agreement 0.0000 < 0.5",
    ]
    report.failures = failures
    with pytest.raises(CheckFailed, match=r"validation failed: output 'y' cosine .* \(\+2 more\)"):
        report.raise_for_failures()
    assert CheckFailed.exit_code == 1


def test_top1_gate_without_logits_fails_closed():
    ref = np.ones((1, 2, 3), np.float32)
    report = compare_runners(fixed([ref]), fixed([ref]), ["y"], source_of(1))
    assert threshold_failures(report, Thresholds(min_top1=0.9)) == [
        "top-1 agreement not measured: no output is 2-D logits"
    ]


def test_validate_models_on_onnx_runtime(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    report = api.validate(
        scale_model(2.0), scale_model(2.5), tmp_path / "val.npz", batch_size=4, min_cosine=0.999
    )
    (out,) = report.outputs
    assert report.samples == 10 and not report.synthetic and report.failures == []
    assert out.max_abs == pytest.approx(0.5 * float(np.abs(x).max()), rel=1e-6)
    assert out.cosine == pytest.approx(1.0, abs=1e-9)
    assert out.snr_db == pytest.approx(10 * math.log10(16.0), abs=1e-4)  # 4x^2 / 0.25x^2
    assert out.top1 == 1.0


def test_outputs_matched_by_position_when_names_differ(caplog):
    with caplog.at_level(logging.WARNING):
        report = api.validate(scale_model(1.0), scale_model(1.0, output="z"), "random")
    assert report.outputs[0].max_abs == 0.0
    assert "matching outputs by position: y~z" in caplog.text


def test_models_with_different_inputs_are_refused():
    other = onnx.parser.parse_model(HEADER + "g (float[N, 4] u) => (float[N, 4] y) { y = Relu(u) }")
    other.ir_version = 10
    with pytest.raises(InputError, match=r"different inputs: reference \(x\), candidate \(u\)"):
        api.validate(scale_model(1.0), other, "random")


def test_cli_validate_gates_and_writes_strict_json(tmp_path):
    ref, good, bad = tmp_path / "ref.onnx", tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(scale_model(2.0), ref)
    onnx.save(scale_model(2.0), good)
    onnx.save(scale_model(-2.0), bad)
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    report = tmp_path / "fidelity.json"
    ok = run_cli(
        "validate",
        ref,
        good,
        "--data",
        tmp_path / "val.npz",
        "--json",
        report,
        "--min-cosine",
        "0.999",
        "--max-abs",
        "1e-6",
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "cosine" in ok.stdout
        and "thresholds (min_cosine=0.999, max_abs=1e-06): passed" in ok.stdout
    )
    data = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["outputs"][0]["snr_db"] == "inf" and data["samples"] == 6
    failed = run_cli("validate", ref, bad, "--data", tmp_path / "val.npz", "--min-cosine", "0.99")
    assert failed.returncode == 1
    assert failed.stderr.strip() == "error: validation failed: output 'y' cosine -1.000000 < 0.99"


def test_cli_validate_bad_data_is_one_line(tmp_path):
    ref = tmp_path / "ref.onnx"
    onnx.save(scale_model(2.0), ref)
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 5), np.float32))
    result = run_cli("validate", ref, ref, "--data", tmp_path / "val.npz")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'val.npz'}: input 'x' expects float32[N,4], got shape [2, 5]"
    ]
