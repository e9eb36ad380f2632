"""Building blocks of `quant`: streaming histograms, range selection, parameters, channel
equalization, GPTQ rounding, and the plan's handling of data movement ops and of the float
image stem's block."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data.sources import RandomSource, input_specs
from onnxopt.ir.shapes import infer_shapes
from onnxopt.numerics.histogram import StreamingHistogram, choose_range
from onnxopt.numerics.rounding import error_feedback, gptq
from onnxopt.quantization.equalize import (
    Rescaler,
    clipped_factors,
    equalization_factors,
    find_scale_groups,
    usable,
)
from onnxopt.quantization.params import activation_params, quantize_bias, weight_scales
from onnxopt.quantization.plan import PlanConfig, make_plan
from onnxopt.runtime.session import make_session
from tests.conftest import float_model


def test_streaming_histogram_is_exact_and_bounded():
    rng = np.random.default_rng(0)
    hist = StreamingHistogram(max_bins=1024)
    chunks = [rng.standard_normal(5000).astype(np.float32) * (1 + i) for i in range(30)]
    for chunk in chunks:
        hist.update(chunk)
    values = np.concatenate(chunks)
    assert hist.counts.size <= 1024
    assert hist.count == values.size
    assert (hist.minimum, hist.maximum) == (float(values.min()), float(values.max()))
    reference, _ = np.histogram(values, bins=hist.edges())
    np.testing.assert_array_equal(reference, hist.counts)


def test_histogram_bins_an_even_stride_of_large_updates():
    values = np.arange(10 * 4096, dtype=np.float32)
    hist = StreamingHistogram(max_elements=4096)
    hist.update(values)
    binned = values[::10]
    assert hist.count == binned.size == hist.counts.sum()
    assert (hist.minimum, hist.maximum) == (0.0, float(binned.max()))
    reference, _ = np.histogram(binned, bins=hist.edges())
    np.testing.assert_array_equal(reference, hist.counts)


def test_histogram_memory_does_not_grow_with_samples():
    rng = np.random.default_rng(1)
    hist = StreamingHistogram(max_bins=2048)
    sizes = []
    for _ in range(200):
        hist.update(rng.standard_normal(1000).astype(np.float32))
        sizes.append(hist.counts.nbytes)
    assert max(sizes) <= 2048 * 8


def test_percentile_matches_numpy_and_ranges_contain_zero():
    rng = np.random.default_rng(2)
    values = rng.standard_normal(400_000).astype(np.float32)
    hist = StreamingHistogram()
    for chunk in np.split(values, 8):  # each under max_elements: every value is binned
        hist.update(chunk)
    lo, hi = choose_range(hist, "percentile", 99.9)
    expected = np.percentile(values, [0.1, 99.9])
    assert lo == pytest.approx(expected[0], abs=0.01) and hi == pytest.approx(expected[1], abs=0.01)
    relu = StreamingHistogram()
    relu.update(np.maximum(values, 0) + 1.0)  # all positive: the range still starts at 0
    for method in ("minmax", "percentile", "mse", "entropy"):
        lo, hi = choose_range(relu, method)
        assert lo == 0.0 and 0 < hi <= relu.maximum


def test_mse_and_entropy_clip_heavy_tails():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(60_000), [80.0, -60.0]]).astype(np.float32)
    hist = StreamingHistogram()
    for chunk in np.split(values, 2):  # each under max_elements: every value is binned
        hist.update(chunk)
    for method in ("mse", "entropy"):
        lo, hi = choose_range(hist, method)
        assert -60 < lo < -2 and 2 < hi < 80, method


def test_activation_params_cover_the_range_with_zero_exact():
    p = activation_params(-1.0, 3.0, np.uint8)
    assert p.scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert p.fake_quantize(np.array([0.0]))[0] == 0.0
    s = activation_params(-1.0, 3.0, np.int8, symmetric=True)
    assert s.zero_point == 0 and s.scale == pytest.approx(3.0 / 127, rel=1e-6)


def test_weight_scales_per_channel_and_bias_int32():
    weight = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32)
    scales = weight_scales(weight, 0)
    np.testing.assert_allclose(scales, [2.0 / 127, 0.5 / 127], rtol=1e-6)
    bias, bias_scales = quantize_bias(np.array([0.3, -0.1]), 0.01, scales)
    assert bias.dtype == np.int32
    np.testing.assert_allclose(bias * bias_scales, [0.3, -0.1], atol=bias_scales.max())


def test_gptq_beats_nearest_rounding_on_correlated_inputs():
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((16, 16))
    x = rng.standard_normal((4000, 16)) @ mix  # correlated features
    weight = rng.standard_normal((8, 16))
    scales = np.abs(weight).max(axis=1) / 127 * 8  # coarse levels make rounding matter
    h = x.T @ x
    nearest = np.clip(np.round(weight / scales[:, None]), -127, 127)
    rounded = gptq(weight, scales, h).astype(np.float64)

    def error(codes):
        return np.sum(((weight - codes * scales[:, None]) @ x.T) ** 2)

    assert error(rounded) < 0.7 * error(nearest)


def test_gptq_rounds_high_energy_inputs_first():
    rng = np.random.default_rng(0)
    energy = np.geomspace(0.01, 10, 64)  # natural order would round the weak inputs first
    mix = np.eye(64) + 0.3 * rng.standard_normal((64, 64))
    x = (rng.standard_normal((4000, 64)) * energy) @ mix
    h = x.T @ x / len(x)
    weight = rng.standard_normal((32, 64))
    scales = np.abs(weight).max(axis=1) / 127 * 8

    def to_levels(column, _):
        return np.clip(np.round(column / scales), -127, 127) * scales

    def error(values):
        return np.trace((weight - values) @ h @ (weight - values).T)

    act_order = gptq(weight, scales, h).astype(np.float64) * scales[:, None]
    natural_order = error_feedback(weight, h, to_levels)
    assert error(act_order) < 0.6 * error(natural_order)


def test_equalization_keeps_the_function(convbnrelu_path, transformer_path):
    for path in (convbnrelu_path, transformer_path):
        model = onnx.load(str(path))
        ranks = {k: len(v) for k, v in infer_shapes(model).shapes.items() if v is not None}
        groups = usable(find_scale_groups(model, ranks))
        assert groups, path.name
        equalized = onnx.ModelProto()
        equalized.CopyFrom(model)
        rescaler = Rescaler(equalized)
        rng = np.random.default_rng(5)
        for group in groups:
            peaks = rng.uniform(0.1, 10.0, group.channels)
            rescaler.apply(
                group, equalization_factors(group, peaks, rescaler.consumer_peaks(group))
            )
        feed = next(iter(RandomSource(input_specs(model), seed=0, batch=2)))
        before = make_session(model).run(None, feed)[0]
        after = make_session(equalized).run(None, feed)[0]
        np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-4 * np.abs(before).max())


def test_transformer_groups_run_through_layernorm_into_matmuls(transformer_path):
    model = onnx.load(str(transformer_path))
    ranks = {k: len(v) for k, v in infer_shapes(model).shapes.items() if v is not None}
    groups = usable(find_scale_groups(model, ranks))
    layer_norm_groups = [
        g for g in groups if any(op == "LayerNormalization" for _, op in g.producers)
    ]
    assert layer_norm_groups
    assert any(len(g.consumers) == 3 for g in layer_norm_groups)  # q, k and v read one LN


def _conv_act_conv(activation: str, low: float, high: float, depthwise: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    reader = (4, 1, 3, 3) if depthwise else (4, 4, 1, 1)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (4, 3, 1, 1)), ("w2", reader))
    ] + [
        numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", low), ("hi", high))
    ]
    inits[0] = numpy_helper.from_array(  # channels of unequal ranges
        numpy_helper.to_array(inits[0]) * np.float32([2.0, 0.5, 0.1, 1.0])[:, None, None, None],
        "w1",
    )
    inputs = ["a", "lo", "hi"] if activation == "Clip" else ["a"]
    attrs = {"group": 4, "pads": [1, 1, 1, 1]} if depthwise else {}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node(activation, inputs, ["b"], name="act"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2", **attrs),
    ]
    return _model(nodes, inits)


@pytest.mark.parametrize(
    ("activation", "low", "high", "grouped"),
    [("Relu", 0, 0, True), ("Clip", 0, 6, True), ("Clip", -1, 6, False), ("Clip", 0, 0, False)],
)
def test_only_relu_like_activations_carry_a_scale_group(activation, low, high, grouped):
    model = _conv_act_conv(activation, low, high, depthwise=False)
    ranks = {k: len(v) for k, v in infer_shapes(model).shapes.items() if v is not None}
    found = usable(find_scale_groups(model, ranks))
    assert bool(found) == grouped
    assert [g.clipped for g in found] == (
        [["b"]] if grouped and activation == "Clip" else [[]] * grouped
    )


@pytest.mark.parametrize("depthwise", [False, True])
def test_equalizing_through_relu6_grows_channels_and_keeps_the_function(depthwise):
    model = _conv_act_conv("Clip", 0, 2.0, depthwise)  # a bound the data crosses
    feed = {"x": np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    session = make_session(model)
    before = session.run(None, feed)[0]
    clipped = make_session(_with_output(model, "b")).run(["b"], feed)[0]
    peaks = clipped.max(axis=(0, 2, 3))
    ranks = {k: len(v) for k, v in infer_shapes(model).shapes.items() if v is not None}
    (group,) = usable(find_scale_groups(model, ranks))
    factors = clipped_factors(group, peaks)
    assert np.all(factors <= 1) and np.all(peaks / factors <= peaks.max() * (1 + 1e-6))
    assert factors.min() < 0.9  # channels really grow
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    Rescaler(equalized).apply(group, factors)
    grown = make_session(_with_output(equalized, "b")).run(["b"], feed)[0]
    np.testing.assert_allclose(grown.max(axis=(0, 2, 3)), peaks / factors, rtol=1e-5)
    after = make_session(equalized).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())


@pytest.mark.parametrize("pooled", [True, False])
def test_classifier_group_runs_through_global_pool_and_flatten(pooled):
    """Conv -> ReLU6 -> GlobalAveragePool -> Flatten -> Gemm (a CNN's head) is one group;
    a Flatten of spatial positions mixes channels into features and blocks it."""
    rng = np.random.default_rng(11)
    features = 4 if pooled else 4 * 64  # 4 channels, pooled or of 8x8 positions
    scales = np.float32([3.0, 0.5, 0.1, 1.0])[:, None, None, None]
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((4, 3, 1, 1)).astype(np.float32) * scales, "w1"
        ),
        numpy_helper.from_array(rng.standard_normal((5, features)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2"),
        numpy_helper.from_array(np.float32(0), "lo"),
        numpy_helper.from_array(np.float32(6), "hi"),
    ]
    pool = [helper.make_node("GlobalAveragePool", ["b"], ["p"], name="pool")] if pooled else []
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"], name="act"),
        *pool,
        helper.make_node("Flatten", ["p" if pooled else "b"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    model = _model(nodes, inits)
    ranks = {k: len(v) for k, v in infer_shapes(model).shapes.items() if v is not None}
    found = usable(find_scale_groups(model, ranks))
    if not pooled:
        assert found == []
        return
    (group,) = found
    assert group.consumers == [("fc", "gemm_t")] and "f" in group.tensors
    feed = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    before = make_session(model).run(None, feed)[0]
    peaks = make_session(_with_output(model, "b")).run(["b"], feed)[0].max(axis=(0, 2, 3))
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    Rescaler(equalized).apply(group, clipped_factors(group, peaks))
    after = make_session(equalized).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return extended


def test_data_movement_shares_parameters_between_int8_ops():
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], name="c2"),
    ]
    model = _model(nodes, inits)
    dtypes = dict(infer_shapes(model).dtypes)
    dtypes["x"] = TensorProto.FLOAT
    plan = make_plan(model, dtypes, PlanConfig())
    assert plan.root("b") == "a"  # MaxPool's output reuses its input's scale/zero point
    assert plan.calibration_tensors() == ["a", "x", "y"]  # QLinearConv needs a Q on y too


def _model(nodes, initializers) -> onnx.ModelProto:
    return float_model(nodes, [("x", [1, 3, 8, 8])], [("y", None)], initializers)


# --- the float stem block -----------------------------------------------------------------


def stem_block_model(channels: int = 32, projected: int = 16, stem_output: bool = False):
    """x (3x64x64) -> stem 3x3/2 -> ReLU6 -> depthwise 3x3 -> ReLU6 -> 1x1 projection -> 1x1
    conv "next" (MobileNetV2's first block); `stem_output`: the stem's ReLU6 is an output too."""
    rng = np.random.default_rng(9)
    shapes = {
        "w_stem": (channels, 3, 3, 3),
        "w_dw": (channels, 1, 3, 3),
        "w_proj": (projected, channels, 1, 1),
        "w_next": (8, projected, 1, 1),
    }
    inits = [
        numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)
        for name, shape in shapes.items()
    ]
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["s"], name="stem", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Clip", ["s", "zero", "six"], ["s6"], name="stem_relu6"),
        helper.make_node("Conv", ["s6", "w_dw"], ["d"], name="dw", pads=[1] * 4, group=channels),
        helper.make_node("Clip", ["d", "zero", "six"], ["d6"], name="dw_relu6"),
        helper.make_node("Conv", ["d6", "w_proj"], ["p"], name="proj"),
        helper.make_node("Conv", ["p", "w_next"], ["y"], name="next"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 32, 32])]
    if stem_output:
        outputs.append(helper.make_tensor_value_info("s6", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "stem_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 64, 64])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(
    ("channels", "projected", "stem_output", "floats", "boundary"),
    [
        (32, 16, False, {"stem", "dw"}, "d6"),  # MobileNetV2's first block
        (64, 32, False, {"stem"}, "s6"),  # 64 channels: the int8 depthwise kernel is faster
        (32, 16, True, {"stem"}, "s6"),  # the stem output is quantized for nobody else
    ],
)
def test_float_stem_block_moves_the_boundary_to_the_cheaper_tensor(
    channels, projected, stem_output, floats, boundary
):
    model = stem_block_model(channels, projected, stem_output)
    dtypes = {name: TensorProto.FLOAT for name in ("x", "s", "s6", "d", "d6", "p", "y")}
    plan = make_plan(model, dtypes, PlanConfig(float_stem=True))
    assert set(plan.weighted) == {"stem", "dw", "proj", "next"} - floats
    # quantized tensors: the boundary, the int8 convs' outputs and the int8 depthwise's input
    assert set(plan.roots) == {boundary, "p", "y"} | ({"d6"} if "dw" not in floats else set())
    reasons = " | ".join(plan.skipped)
    assert ("depthwise conv of 32 channels reading the float image stem 'stem'" in reasons) == (
        "dw" in floats
    )


@pytest.mark.parametrize("config", [PlanConfig(), PlanConfig(provider="cuda", float_stem=True)])
def test_stem_block_runs_int8_without_float_stem_or_off_cpu(config):
    model = stem_block_model()
    dtypes = {name: TensorProto.FLOAT for name in ("x", "s", "s6", "d", "d6", "p", "y")}
    plan = make_plan(model, dtypes, config)
    assert set(plan.weighted) == {"stem", "dw", "proj", "next"}
