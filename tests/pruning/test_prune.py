"""The `prune` pass: accuracy with real labels, options, determinism, refusals, pipelines."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.prune import PruneOptions, PrunePass

from onnxopt.analyses.channel_groups import analyze_channel_groups
from onnxopt.analyses.macs import count_macs
from onnxopt.data.sources import IterableSource, NpzSource, input_specs
from onnxopt.errors import InputError
from onnxopt.infra.pass_base import PassContext
from onnxopt.infra.pipeline import parse_pipeline
from onnxopt.pruning.rewrite import apply_keep, consumer_masks
from onnxopt.pruning.select import Rounding, layer_macs, pruned_macs, select_by_loss
from onnxopt.pruning.sensitivity import Probe, loss_curves
from onnxopt.runtime.session import make_session
from tests.conftest import REPO, random_feed
from tests.pruning.test_prune_oracle import oracle

DATA_FREE = {"criterion": "l1", "reconstruct": False}


def digits_accuracy(model: onnx.ModelProto) -> float:
    val = np.load(REPO / "examples" / "digits_val.npz")
    logits = make_session(model).run(None, {"input": val["input"]})[0]
    return float(np.mean(logits.argmax(1) == val["label"]))


@pytest.fixture(scope="module")
def digits(digits_model) -> onnx.ModelProto:
    return onnx.load(digits_model)


@pytest.fixture(scope="module")
def digits_ctx(digits, digits_calib) -> PassContext:
    return PassContext(calibration=NpzSource(digits_calib, input_specs(digits), 32), seed=0)


def run(model: onnx.ModelProto, ctx: PassContext, **options):
    return PrunePass(PruneOptions(**options)).run(copy.deepcopy(model), ctx)


def conv_widths(model: onnx.ModelProto) -> dict[str, int]:
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: inits[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv"}


@pytest.fixture(scope="module")
def digits_half(digits, digits_ctx):
    return run(digits, digits_ctx, ratio=0.5)


def test_digits_half_the_channels_keeps_accuracy(digits, digits_half):
    assert digits_accuracy(digits) == pytest.approx(1.0)
    result = digits_half
    assert result.changed
    onnx.checker.check_model(result.model, full_check=True)
    assert digits_accuracy(result.model) >= 0.985
    stats = result.stats
    assert stats["before_reconstruction"]["top1_agreement"] < 0.5  # what magnitude pruning leaves
    assert stats["after_reconstruction"]["top1_agreement"] >= 0.95
    assert stats["fidelity_data"].startswith("refit held-out samples (32 samples)")
    assert stats["layers_refit"] + stats["layers_kept_pruned"] == len(stats["layers"]) > 0
    applied = [layer for layer in stats["layers"] if layer["applied"]]
    assert all(la["error_held_out"] < la["unrefit_error_held_out"] for la in applied)
    assert stats["refit_error_held_out"] < stats["unrefit_error_held_out"]
    assert count_macs(result.model).total <= 0.3 * count_macs(digits).total
    assert stats["channels_after"] * 2 == stats["channels_before"]
    assert stats["params_after"] < 0.35 * stats["params_before"]


def test_digits_widths_follow_the_groups(digits_half):
    widths = conv_widths(digits_half.model)
    assert widths["/stem/stem.0/Conv"] == widths["/res/conv2/Conv"] == 16  # coupled by the residual
    assert widths["/branches/depthwise/depthwise.0/depthwise.0.0/Conv"] == 16  # depthwise follows
    assert widths["/down/down.0/Conv"] == 32
    gemm = next(n for n in digits_half.model.graph.node if n.op_type == "Gemm")
    weight = next(t for t in digits_half.model.graph.initializer if t.name == gemm.input[1])
    assert sorted(weight.dims) == [10, 32 * 16]  # Flatten -> Gemm keeps 4x4 blocks


def test_same_seed_same_bytes(digits, digits_ctx):
    first = run(digits, digits_ctx, ratio=0.4, samples=64, positions=8)
    second = run(digits, digits_ctx, ratio=0.4, samples=64, positions=8)
    assert first.model.SerializeToString() == second.model.SerializeToString()


def test_defaults_need_calibration_data(digits):
    with pytest.raises(InputError, match=r"criterion=l1,reconstruct=false"):
        PrunePass().check_applicable(digits, PassContext())
    result = run(digits, PassContext(), ratio=0.5, **DATA_FREE)
    assert result.changed and "before_reconstruction" not in result.stats


@pytest.mark.parametrize(
    "criterion", ["l1", "l2", "bn_scale", "activation", "output", "refit_error"]
)
def test_every_criterion_prunes_the_same_amount(digits, digits_ctx, criterion):
    result = run(digits, digits_ctx, ratio=0.5, criterion=criterion, reconstruct=False)
    assert result.stats["channels_after"] == 96
    assert sorted(conv_widths(result.model).values()) == [16] * 6 + [32]


def test_round_to_and_min_channels(digits, digits_ctx):
    result = run(digits, digits_ctx, ratio=0.5, round_to=8, min_channels=24, **DATA_FREE)
    widths = conv_widths(result.model)
    assert set(widths.values()) == {24, 32}
    assert all(w % 8 == 0 for w in widths.values())


def test_exclude_keeps_matching_groups_whole(digits, digits_ctx):
    result = run(digits, digits_ctx, ratio=0.5, exclude=("/down/*",), **DATA_FREE)
    assert conv_widths(result.model)["/down/down.0/Conv"] == 64
    assert conv_widths(result.model)["/res/conv1/conv1.0/Conv"] == 16
    assert any("excluded by exclude pattern '/down/*'" in line for line in result.skipped)


def test_target_macs_replaces_the_ratio(digits, digits_ctx):
    result = run(digits, digits_ctx, target_macs=0.5, round_to=1, **DATA_FREE)
    before, after = count_macs(digits).total, count_macs(result.model).total
    assert 0.45 * before < after <= 0.5 * before
    assert result.stats["macs_after"] == after


def test_global_scope_prunes_groups_unevenly(digits, digits_ctx):
    result = run(
        digits,
        digits_ctx,
        ratio=0.5,
        scope="global",
        round_to=1,
        criterion="output",
        reconstruct=False,
    )
    widths = conv_widths(result.model)
    assert len(set(widths.values())) > 2
    assert result.stats["channels_after"] == pytest.approx(96, abs=8)


def refusing_model() -> onnx.ModelProto:
    """Conv a -> Softmax -> Conv b (also an output) -> e -> grouped Conv g -> Conv c -> head."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(name, x, c_in, c_out, group=1):
        w = numpy_helper.from_array(
            rng.standard_normal((c_out, c_in // group, 3, 3)).astype(np.float32), f"{name}.w"
        )
        inits.append(w)
        nodes.append(
            helper.make_node("Conv", [x, w.name], [name], name=name, pads=[1] * 4, group=group)
        )
        return name

    soft = helper.make_node("Softmax", [conv("a", "x", 3, 16)], ["soft"], name="soft", axis=1)
    nodes.append(soft)
    conv("c", conv("g", conv("e", conv("b", "soft", 16, 16), 16, 16), 16, 16, group=4), 16, 16)
    nodes.append(helper.make_node("GlobalAveragePool", ["c"], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    inits.append(numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["y"], name="fc"))
    graph = helper.make_graph(
        nodes,
        "refusals",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 16, 8, 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_each_refusal_is_reported_and_only_c_is_pruned():
    result = run(refusing_model(), PassContext(), ratio=0.5, round_to=8, **DATA_FREE)
    assert result.skipped == [
        "channels of 'a' not pruned: read by Softmax 'soft', "
        "which the channel table does not cover",
        "channels of 'b' not pruned: it reaches graph output 'b'",
        "channels of 'e' not pruned: grouped Conv 'g' (group=4) can only lose whole per-group "
        "patterns, which this version does not do",
        "channels of 'g' not pruned: grouped Conv 'g' (group=4) can only lose whole per-group "
        "patterns, which this version does not do",
        "channels of 'fc' not pruned: it reaches graph output 'y'",
    ]
    assert conv_widths(result.model) == {"a": 16, "b": 16, "e": 16, "g": 16, "c": 8}
    assert result.stats["groups_pruned"] == 1


def test_nothing_prunable_leaves_the_model_alone():
    model = refusing_model()
    result = run(model, PassContext(), ratio=0.5, exclude=("c",), **DATA_FREE)
    assert not result.changed
    assert result.model.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("fixture", ["convbnrelu_path", "mobilenet_path", "transformer_path"])
def test_zoo_models_satisfy_the_oracle(request, fixture):
    """Unfolded BN, SE, concat, depthwise (MobileNetV2), MLP features (transformer)."""
    model = onnx.load(request.getfixturevalue(fixture))
    groups = analyze_channel_groups(model)
    rng = np.random.default_rng(1)
    keep = {
        g.id: np.sort(rng.choice(g.size, g.size // 2, replace=False)) for g in groups.prunable()
    }
    assert keep
    pruned = apply_keep(copy.deepcopy(model), groups, keep)
    onnx.checker.check_model(pruned, full_check=True)
    feed = random_feed(model, seed=2)
    expected = make_session(oracle(model, consumer_masks(groups, keep))).run(None, feed)[0]
    got = make_session(pruned).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_pipeline_cleanup_then_prune(convbnrelu_path):
    from onnxopt.infra.manager import PassManager

    model = onnx.load(convbnrelu_path)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    calib = IterableSource(feeds, input_specs(model))
    manager = PassManager(parse_pipeline("cleanup,prune{ratio=0.5,round_to=8}"), calibration=calib)
    optimized, report = manager.run(model)
    record = report.passes[1]
    assert record.status == "changed", record.reason
    assert (
        record.stats["after_reconstruction"]["cosine"]
        > record.stats["before_reconstruction"]["cosine"]
    )
    assert count_macs(optimized).total < 0.5 * count_macs(model).total


def test_rounding_lower_steps_through_the_allowed_counts():
    rounding = Rounding(round_to=16, min_channels=8)
    assert rounding.lower(100, 100) == 96
    assert rounding.lower(96, 100) == 80
    assert rounding.lower(16, 100) is None  # 8 is not a multiple of 16
    assert Rounding(16, 8).lower(24, 24) == 16
    assert Rounding(1, 3).lower(3, 10) is None


def test_loss_curves_follow_the_refit_error_and_grow_at_least_linearly_beyond_the_probe():
    scores = {0: np.array([0.4, 0.1, 0.2, 0.8]), 1: np.array([1.0, 2.0, 3.0, 4.0])}
    probes = {0: Probe(removed=2, loss=0.02), 1: Probe(removed=1, loss=0.0)}
    curves = loss_curves(scores, probes, cumulative=True)
    # group 0: loss 0.02 at its second-lowest error 0.2, so 0.1 per unit of error.
    np.testing.assert_allclose(curves[0][:3], [0.0, 0.01, 0.02])
    # beyond the probe: max(error curve, linear): 0.04 vs 0.03, then 0.08 vs 0.04
    np.testing.assert_allclose(curves[0][3:], [0.04, 0.08])
    # a probe that measured nothing gets the smallest measured loss (0.02) at its point
    np.testing.assert_allclose(curves[1], [0.0, 0.02, 0.04, 0.06, 0.08])
    linear = loss_curves(scores, probes, cumulative=False)
    np.testing.assert_allclose(linear[0], [0.0, 0.01, 0.02, 0.03, 0.04])


def test_select_by_loss_removes_the_cheapest_macs_first(digits):
    groups = analyze_channel_groups(digits)
    macs = layer_macs(digits, groups)
    scores = {g.id: np.arange(g.size, dtype=float) for g in groups.prunable()}
    cheap, costly = 4, 0  # the down conv, and the stem + residual stream
    curves = {g: np.linspace(0.0, 1.0, len(s) + 1) for g, s in scores.items()}
    curves[cheap] = np.linspace(0.0, 1e-3, len(scores[cheap]) + 1)
    curves[costly] = np.linspace(0.0, 1e3, len(scores[costly]) + 1)
    target = 0.8 * macs.total
    keep = select_by_loss(digits, groups, scores, curves, macs, target, Rounding(8, 8))
    assert costly not in keep
    assert len(keep[cheap]) < 64 and len(keep[cheap]) % 8 == 0
    assert pruned_macs(digits, groups, macs, keep) <= target
    # channels go by score: the highest-scored are kept
    np.testing.assert_array_equal(keep[cheap], np.arange(64 - len(keep[cheap]), 64))


def test_sensitivity_scope_probes_each_group_and_spends_the_same_macs(digits, digits_ctx):
    layer = run(digits, digits_ctx, ratio=0.5, round_to=8)
    measured = run(digits, digits_ctx, ratio=0.5, round_to=8, scope="sensitivity")
    probes = measured.stats["probes"]
    assert len(probes) == 5 and all(p["probe_removed"] == 16 for p in probes if p["size"] == 32)
    assert all(p["probe_loss"] >= 0 for p in probes)
    assert count_macs(measured.model).total <= count_macs(layer.model).total
    kept = {p["group"]: p["kept"] / p["size"] for p in probes}
    assert len(set(kept.values())) > 1, kept  # not the uniform 50 %
    onnx.checker.check_model(measured.model, full_check=True)
    assert digits_accuracy(measured.model) >= 0.985


def test_sensitivity_scope_with_too_few_samples_keeps_the_uniform_ratio(digits):
    images = np.load(REPO / "examples" / "digits_calib.npz")["input"][:3]
    ctx = PassContext(calibration=IterableSource([{"input": images}], input_specs(digits)))
    layer = run(digits, ctx, ratio=0.5, **DATA_FREE)
    measured = run(digits, ctx, ratio=0.5, scope="sensitivity", **DATA_FREE)
    assert measured.stats["probes"] == []
    assert conv_widths(measured.model) == conv_widths(layer.model)
