"""Every registered pass on unusual models: it improves them and they still compute the same,
leaves them unchanged, or refuses in one line. Never a crash, a broken model, a changed
interface or a modified input (oracle: `tests.oracle`).

The passes come from the registry, so a new pass is covered without editing this file.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest

from onnxopt import api
from onnxopt.infra.pass_base import Pass, PassResult
from onnxopt.infra.registry import register_pass
from tests.conftest import ort_outputs, run_cli
from tests.oracle import (
    Outcome,
    assert_sound,
    feeds_for,
    registered_passes,
    run_pipeline,
)
from tests.zoo.hostile import HOSTILE_MODELS, shadowed_initializers
from tests.zoo.small_cnn import opset_cnn

PASSES = registered_passes()
PIPELINES = [*PASSES, ",".join(PASSES)]
DIMS = {"N": 2, "batch": 2, "H": 8, "seq": 5, "T": 6}
"""Values of the symbolic dims in the hostile models' feeds."""


def _run(model: onnx.ModelProto, passes: str, tmp_path) -> tuple[Outcome, list[dict]]:
    feeds = feeds_for(model, seed=1, dims=DIMS)
    return run_pipeline(model, passes, feeds, tmp_path / "out.onnx"), feeds


@pytest.mark.parametrize("passes", PASSES)  # the whole pipeline: test_cli_full_pipeline_...
@pytest.mark.parametrize("case", sorted(HOSTILE_MODELS))
def test_every_pass_is_sound_on_hostile_models(case, passes, tmp_path):
    model = HOSTILE_MODELS[case](seed=0)
    outcome, feeds = _run(model, passes, tmp_path)
    assert_sound(model, outcome, feeds)


OPSET_STEPS = (11, 12, 13, 18, 21)
"""Where the CNN's ops change signature: Clip inputs (11), int8 MaxPool (12), Squeeze axes and
per-channel DequantizeLinear (13), ReduceMean axes (18), the newest (21)."""


@pytest.mark.parametrize(
    ("opset", "passes"),
    [(o, p) for o in range(11, 22) for p in PIPELINES if o in OPSET_STEPS or p == PIPELINES[-1]],
)
def test_every_pass_is_sound_at_every_opset(opset, passes, tmp_path):
    model = opset_cnn(opset)
    outcome, feeds = _run(model, passes, tmp_path)
    assert_sound(model, outcome, feeds)
    assert outcome.kind == "ran", outcome.message  # opset 11 is new enough for every pass
    if "cleanup" in passes.split(","):
        assert _records(outcome)["cleanup"][0] == "changed"  # the BatchNormalization folds


@pytest.mark.parametrize("opset", [11, 12])
def test_quant_converts_models_older_than_opset_13(opset, tmp_path):
    if "quant" not in PASSES:
        pytest.skip("no quant pass registered")
    model = opset_cnn(opset)
    result = api.optimize(model, passes="quant", calib=feeds_for(model, dims=DIMS))
    record = result.report.passes[-1]  # after the cleanup quant asks for
    assert record.status == "changed"
    assert record.stats["converted_opset"] == [opset, 13]
    assert [o.version for o in result.model.opset_import if o.domain == ""] == [13]


@pytest.fixture(scope="session")
def recurrent_paths(zoo_dir):
    from tests.zoo.recurrent import make_recurrent_onnx

    with warnings.catch_warnings():  # the exporter's tracer and batch-size warnings
        warnings.simplefilter("ignore")
        return {c: make_recurrent_onnx(zoo_dir / f"{c}.onnx", c) for c in ("lstm", "gru")}


@pytest.mark.parametrize("passes", PIPELINES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_pass_is_sound_on_torch_lstm_and_gru(recurrent_paths, cell, passes, tmp_path):
    model = onnx.load(recurrent_paths[cell])
    assert cell.upper() in {n.op_type for n in model.graph.node}
    outcome, feeds = _run(model, passes, tmp_path)
    assert_sound(model, outcome, feeds)


# --- the behaviours behind the sound outcomes ------------------------------------------------


def _records(outcome: Outcome) -> dict[str, tuple[str, str]]:
    return {name: (status, reason) for name, status, reason in outcome.steps}


def test_weights_in_constant_nodes_are_folded(tmp_path):
    model = HOSTILE_MODELS["constant_weights"](seed=0)
    result = api.optimize(model, passes="cleanup")
    assert result.report.passes[0].stats["bn_folded"] == 1
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph.node}


def test_shadowed_initializers_stay_inputs_the_caller_can_override(tmp_path):
    model = shadowed_initializers()
    shadowed = ["stem.w", "bn.mean", "res.w", "fc.w"]
    rng = np.random.default_rng(5)
    feed = feeds_for(model, seed=2, dims=DIMS)[0]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    feed.update(
        {name: rng.standard_normal(inits[name].shape).astype(np.float32) for name in shadowed}
    )
    expected = ort_outputs(model, feed)
    for passes in PIPELINES:
        outcome, feeds = _run(model, passes, tmp_path)
        assert_sound(model, outcome, feeds)
        optimized = onnx.load(outcome.output)
        assert {t.name for t in optimized.graph.initializer} >= set(shadowed), passes
        got = ort_outputs(optimized, feed)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4, err_msg=passes)


def test_batchnorm_is_not_folded_into_a_conv_a_subgraph_reads(tmp_path):
    model = HOSTILE_MODELS["if_with_outer_conv"](seed=0)
    outcome, _ = _run(model, "cleanup", tmp_path)
    status, reason = _records(outcome)["cleanup"]
    assert status == "unchanged", reason
    assert "BatchNormalization" in {n.op_type for n in onnx.load(outcome.output).graph.node}


def test_batchnorm_is_not_folded_into_a_conv_whose_output_is_a_graph_output(tmp_path):
    result = api.optimize(HOSTILE_MODELS["pre_bn_output"](seed=0), passes="cleanup")
    assert result.report.passes[0].stats["bn_folded"] == 0
    assert any("other readers" in s for s in result.report.passes[0].skipped)


@pytest.mark.parametrize("case", ["qlinear_conv", "qdq_cnn"])
def test_already_quantized_models_are_declined_by_quant(case):
    if "quant" not in PASSES:
        pytest.skip("no quant pass registered")
    model = HOSTILE_MODELS[case](seed=0)
    result = api.optimize(model, passes="quant", calib=feeds_for(model, dims=DIMS))
    record = result.report.passes[0]
    assert record.status == "unchanged"
    assert record.skipped[0].startswith("model declined: already quantized")


@pytest.mark.parametrize("case", ["empty_graph", "constant_output"])
def test_graphs_without_nodes_come_out_unchanged(case, tmp_path):
    model = HOSTILE_MODELS[case](seed=0)
    outcome, _ = _run(model, ",".join(PASSES), tmp_path)
    assert [status for _, status, _ in outcome.steps] == ["unchanged"] * len(PASSES)
    assert {status for _, status, _ in outcome.records} == {"unchanged"}
    assert onnx.load(outcome.output).graph == model.graph


def test_prune_keeps_channels_that_reach_maxpool_indices():
    model = HOSTILE_MODELS["maxpool_indices"](seed=0)
    result = api.optimize(model, passes="prune", calib=feeds_for(model, dims=DIMS))
    assert result.report.passes[0].status == "unchanged"
    assert any("has its indices read" in s for s in result.report.passes[0].skipped)


@pytest.mark.parametrize("case", ["conv1d", "conv3d"])
def test_prune_handles_convolutions_that_are_not_2d(case, tmp_path):
    model = HOSTILE_MODELS[case](seed=0)
    outcome, feeds = _run(model, "prune", tmp_path)
    assert_sound(model, outcome, feeds)
    assert outcome.records[0][1] in ("changed", "rolled back")  # scored by weight magnitude


def test_contrib_ops_block_what_they_touch(tmp_path):
    outcome, _ = _run(HOSTILE_MODELS["contrib_ops"](seed=0), ",".join(PASSES), tmp_path)
    records = _records(outcome)
    assert records["cleanup"][0] == "unchanged"  # the BN after FusedConv stays
    result = api.optimize(HOSTILE_MODELS["contrib_ops"](seed=0), passes="cleanup")
    assert any("not preceded by Conv" in s for s in result.report.passes[0].skipped)


@register_pass
class _DropsInputPass(Pass):
    """Test pass: turns the first shadowed graph input into a plain initializer."""

    name = "test-drop-input"
    summary = "test only"

    def apply(self, model, ctx):
        inits = {t.name for t in model.graph.initializer}
        for index, value in enumerate(model.graph.input):
            if value.name in inits:
                del model.graph.input[index]
                return PassResult(model, True)
        return PassResult(model, False)


def test_a_pass_that_changes_the_graph_inputs_is_rolled_back():
    result = api.optimize(shadowed_initializers(), passes="test-drop-input")
    record = result.report.passes[0]
    assert record.status == "rolled back"
    assert record.reason.startswith("graph inputs changed: [x, stem.w,")
    assert len(result.model.graph.input) == 5


# --- the console script: the user-visible contract --------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE_MODELS))
def test_cli_full_pipeline_on_hostile_models(case, tmp_path):
    model = HOSTILE_MODELS[case](seed=0)
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    path = source / "model.onnx"
    onnx.save(model, path)
    feeds = feeds_for(model, seed=3, batches=2, dims=DIMS)
    np.savez(source / "calib.npz", **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    passes = ",".join(PASSES)
    result = run_cli(
        "optimize",
        path,
        "-o",
        out / "o.onnx",
        "--passes",
        passes,
        "--calib",
        source / "calib.npz",
        "--report",
        out / "report.json",
    )
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
        assert list(out.iterdir()) == []
        return
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["o.onnx", "report.json"]
    report = json.loads((out / "report.json").read_text())
    records = [(p["name"], p["status"], p.get("reason") or "") for p in report["passes"]]
    assert_sound(model, Outcome("ran", records=records, output=out / "o.onnx"), feeds)
