"""The pass manager: gates, rollback, --strict, analyses, metadata, determinism."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxopt import api
from onnxopt.errors import CheckFailed, OptionError, PassCrashed, PassRefused
from onnxopt.infra import checks
from onnxopt.infra.analysis import AnalysisCache
from onnxopt.infra.instrument import Instrument
from onnxopt.infra.manager import GATE_CALIBRATION_SAMPLES, PassManager
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import Pass, PassResult
from onnxopt.infra.pipeline import parse_pipeline
from onnxopt.infra.registry import register_pass


def _relu_model(opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@register_pass
class _WrongMathPass(Pass):
    """Test pass: replaces Relu by Sigmoid, which changes the outputs."""

    name = "test-wrong-math"
    summary = "test only"

    def apply(self, model, ctx):
        for node in model.graph.node:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return PassResult(model, True, {"replaced": 1})


@register_pass
class _DanglingPass(Pass):
    """Test pass: makes a node read a tensor nobody produces."""

    name = "test-dangling"
    summary = "test only"

    def apply(self, model, ctx):
        model.graph.node[1].input[0] = "nowhere"
        return PassResult(model, True)


@register_pass
class _CrashingPass(Pass):
    name = "test-crash"
    summary = "test only"

    def apply(self, model, ctx):
        raise ZeroDivisionError("boom")


@dataclass(frozen=True)
class _CountOptions:
    touch: bool = option(False, "rewrite the model (invalidates analyses)")


@register_pass
class _AnalysisUserPass(Pass):
    """Test pass: asks for a cached analysis and optionally changes the model."""

    name = "test-analysis"
    summary = "test only"
    Options = _CountOptions
    calls: list[int] = []  # noqa: RUF012

    def apply(self, model, ctx):
        value = ctx.analyses.get("node-count", lambda m: len(m.graph.node), model)
        type(self).calls.append(value)
        if self.options.touch:
            model.graph.node[1].name = "renamed"
        return PassResult(model, self.options.touch)


@register_pass
class _SelfTerminatingPass(Pass):
    """Test pass: sends SIGTERM to its own process mid-run."""

    name = "test-sigterm"
    summary = "test only"

    def apply(self, model, ctx):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return PassResult(model, False)


@register_pass
class _NeedsNewOpset(Pass):
    name = "test-new-opset"
    summary = "test only"
    min_opset = 99

    def apply(self, model, ctx):
        return PassResult(model, False)


@register_pass
class _NeedsCleanupPass(Pass):
    """Test pass: asks for `cleanup{fold_bn=false}` right before it when `prepare` is on."""

    name = "test-needs-cleanup"
    summary = "test only"
    Options = _CountOptions

    def prerequisites(self, model):
        return ("cleanup{fold_bn=false}",) if self.options.touch else ()

    def apply(self, model, ctx):
        return PassResult(model, False)


class _Names(Instrument):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_pass(self, name: str) -> None:
        self.seen.append(name)


def _run_steps(pipeline: str) -> tuple[list[tuple[str, str, str]], list[str], dict]:
    names = _Names()
    manager = PassManager(parse_pipeline(pipeline), instruments=[names])
    model, report = manager.run(_relu_model())
    rows = [(r.step, r.required_by, r.status) for r in report.passes]
    props = {p.key: p.value for p in model.metadata_props}
    return rows, names.seen, props


def test_a_prerequisite_runs_through_the_manager_right_before_the_pass_that_asks():
    rows, seen, props = _run_steps("test-needs-cleanup{touch=true}")
    assert rows == [
        ("cleanup{fold_bn=false}", "test-needs-cleanup", "unchanged"),
        ("test-needs-cleanup{touch=true}", "", "unchanged"),
    ]
    assert seen == ["cleanup", "test-needs-cleanup"]  # instruments see it as a pass of its own
    summary = json.loads(props["onnxopt.passes"])
    assert summary[0]["required_by"] == "test-needs-cleanup"
    assert "required_by" not in summary[1]
    assert props["onnxopt.pipeline"].startswith("test-needs-cleanup{")  # as the user wrote it


def test_a_prerequisite_that_just_ran_does_not_run_again():
    rows, _, _ = _run_steps("cleanup{fold_bn=false},test-needs-cleanup{touch=true}")
    assert [r[0] for r in rows] == ["cleanup{fold_bn=false}", "test-needs-cleanup{touch=true}"]
    rows, _, _ = _run_steps("cleanup,test-needs-cleanup{touch=true}")  # other options: runs
    assert [r[:2] for r in rows] == [
        ("cleanup", ""),
        ("cleanup{fold_bn=false}", "test-needs-cleanup"),
        ("test-needs-cleanup{touch=true}", ""),
    ]
    rows, _, _ = _run_steps("test-needs-cleanup,test-needs-cleanup{touch=true}")
    assert [r[1] for r in rows] == ["", "test-needs-cleanup", ""]


def test_pass_that_changes_outputs_is_rolled_back():
    result = api.optimize(_relu_model(), passes="test-wrong-math")
    record = result.report.passes[0]
    assert record.status == "rolled back"
    assert "max rel error" in record.reason
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Neg"]


def test_invalid_graph_is_rolled_back_by_the_checker():
    result = api.optimize(_relu_model(), passes="test-dangling,cleanup")
    assert result.report.passes[0].status == "rolled back"
    assert "onnx.checker" in result.report.passes[0].reason
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Neg"]


def test_strict_aborts_instead():
    with pytest.raises(CheckFailed, match="test-wrong-math' rolled back \\(--strict\\)"):
        api.optimize(_relu_model(), passes="test-wrong-math", strict=True)


def test_crash_names_the_pass_and_its_predecessors():
    with pytest.raises(
        PassCrashed,
        match="pass 'test-crash' crashed \\(ZeroDivisionError: boom\\); passes before it: cleanup",
    ):
        api.optimize(_relu_model(), passes="cleanup,test-crash")


def test_opset_too_old_is_refused_before_any_work():
    with pytest.raises(PassRefused, match="needs opset >= 99, the model has opset 17"):
        api.optimize(_relu_model(), passes="cleanup,test-new-opset")


def test_analyses_are_cached_until_a_pass_changes_the_model():
    _AnalysisUserPass.calls.clear()
    pipeline = "test-analysis,test-analysis,test-analysis{touch=true},test-analysis"
    api.optimize(_relu_model(), passes=pipeline)
    assert _AnalysisUserPass.calls == [2, 2, 2, 2]


def test_analysis_cache_invalidation_keeps_preserved():
    cache = AnalysisCache()
    model = _relu_model()
    cache.get("a", lambda m: 1, model)
    cache.get("b", lambda m: 2, model)
    cache.invalidate(frozenset({"a"}))
    assert cache.get("a", lambda m: 10, model) == 1
    assert cache.get("b", lambda m: 20, model) == 20
    assert cache.computed == {"a": 1, "b": 2}


def test_metadata_says_how_the_model_was_made(convbnrelu_path):
    result = api.optimize(convbnrelu_path, passes="cleanup{fold_limit_mb=8}")
    props = {p.key: p.value for p in result.model.metadata_props}
    assert props["onnxopt.version"]
    assert parse_pipeline(props["onnxopt.pipeline"]) == parse_pipeline("cleanup{fold_limit_mb=8}")
    summary = json.loads(props["onnxopt.passes"])
    assert summary[0]["status"] == "changed"
    assert summary[0]["stats"]["bn_folded"] > 0
    assert all(not isinstance(v, (list, dict)) for v in summary[0]["stats"].values())


def test_same_input_same_seed_same_bytes(convbnrelu_path, tmp_path):
    first = api.optimize(convbnrelu_path, tmp_path / "a.onnx", passes="cleanup", seed=3)
    second = api.optimize(convbnrelu_path, tmp_path / "b.onnx", passes="cleanup", seed=3)
    assert first.output.read_bytes() == second.output.read_bytes()


def test_report_has_timings_memory_and_fidelity(convbnrelu_path, tmp_path):
    report_path = tmp_path / "report.json"
    api.optimize(convbnrelu_path, tmp_path / "out.onnx", report=report_path)
    report = json.loads(report_path.read_text())
    record = report["passes"][0]
    assert record["seconds"] > 0 and record["peak_rss_mb"] > 0
    assert record["before"]["params"] >= record["after"]["params"] > 0
    assert record["fidelity"]["outputs"][0]["cosine"] > 0.99999
    assert report["fidelity"]["synthetic"] is True


def test_one_changed_pass_reports_its_gate_fidelity_without_running_the_data_again(
    monkeypatch,
):
    calls = []
    measure = checks.measure_fidelity

    def counted(before, after, data, limit_samples=None):
        calls.append((before, after))
        return measure(before, after, data, limit_samples)

    monkeypatch.setattr(checks, "measure_fidelity", counted)
    result = api.optimize(_relu_model(), passes="test-analysis{touch=true}")
    assert result.report.passes[0].status == "changed"
    assert len(calls) == 1  # the gate only: it already compared the input model's outputs
    assert result.report.fidelity == result.report.passes[0].fidelity
    assert result.report.fidelity["outputs"][0]["max_abs"] == 0.0
    calls.clear()
    result = api.optimize(
        _relu_model(), passes="test-analysis{touch=true},test-analysis{touch=true}"
    )
    assert len(calls) == 3  # two gates, then the input model against the final one
    assert calls[-1][0] is calls[0][0] and calls[-1][1] is calls[1][1]


SEEN_ROWS: list[np.ndarray] = []


@register_pass
class _RecordingPass(Pass):
    """Test pass: records the calibration samples it is given, then rewrites the model."""

    name = "test-record-data"
    summary = "test only"

    def apply(self, model, ctx):
        SEEN_ROWS.append(np.concatenate([feed["x"][:, 0] for feed in ctx.calibration]))
        model.graph.node[1].name = "touched"
        return PassResult(model, True)


def _indexed_data(tmp_path, samples: int):
    """`samples` rows whose first value is the row's index: a pass's view is traceable."""
    x = np.zeros((samples, 8), np.float32)
    x[:, 0] = np.arange(samples)
    path = tmp_path / "data.npz"
    np.savez(path, x=x)
    model = _relu_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n"
    return model, path


def test_gates_measure_on_a_holdout_no_pass_sees(tmp_path):
    model, data = _indexed_data(tmp_path, 200)
    SEEN_ROWS.clear()
    result = api.optimize(model, passes="test-record-data", calib=data, seed=3)
    report = result.report
    assert report.fidelity_on == "holdout: 40 of 200 samples of data.npz"
    assert report.fidelity_in_sample is False
    assert report.passes[0].fidelity["samples"] == 40
    assert report.fidelity["samples"] == 40
    seen = SEEN_ROWS[0]
    assert len(seen) == 160 and len(set(seen.tolist())) == 160
    SEEN_ROWS.clear()
    api.optimize(model, passes="test-record-data", calib=data, seed=3)
    np.testing.assert_array_equal(SEEN_ROWS[0], seen)  # the holdout is seeded
    SEEN_ROWS.clear()
    api.optimize(model, passes="test-record-data", calib=data, seed=4)
    assert not np.array_equal(SEEN_ROWS[0], seen)


def test_validation_data_leaves_all_calibration_samples_to_the_passes(tmp_path):
    model, data = _indexed_data(tmp_path, 200)
    SEEN_ROWS.clear()
    result = api.optimize(model, passes="test-record-data", calib=data, val=data)
    assert result.report.fidelity_on == "--val: data.npz (200 samples)"
    assert result.report.passes[0].fidelity["samples"] == 200
    np.testing.assert_array_equal(SEEN_ROWS[0], np.arange(200))


@pytest.mark.parametrize(("samples", "holdout"), [(40, 0.2), (200, 0.0)])
def test_too_little_data_or_no_holdout_is_labelled_in_sample(tmp_path, samples, holdout):
    model, data = _indexed_data(tmp_path, samples)
    SEEN_ROWS.clear()
    result = api.optimize(model, passes="test-record-data", calib=data, holdout=holdout)
    assert result.report.fidelity_in_sample is True
    assert result.report.fidelity_on.startswith("in-sample: ")
    assert result.report.passes[0].fidelity["samples"] == min(samples, GATE_CALIBRATION_SAMPLES)
    np.testing.assert_array_equal(SEEN_ROWS[0], np.arange(samples))


def test_a_holdout_over_the_limit_is_refused():
    with pytest.raises(OptionError, match="holdout must be a fraction"):
        api.optimize(_relu_model(), passes="cleanup", holdout=0.9)
