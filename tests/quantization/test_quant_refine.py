"""Calibration-side pieces of `quant` checked against direct computations: GPTQ's input moments
under a row budget, bias correction from input patch means, the float image stem and the float
guard, and calibration sessions that do not spin."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.quant import QuantOptions, QuantPass

from onnxopt.analyses.input_moments import (
    LayerInput,
    RowBudget,
    accumulate,
    patch_rows,
    patches,
)
from onnxopt.data.sources import IterableSource, RandomSource, input_specs
from onnxopt.infra.options import build_options
from onnxopt.infra.pass_base import PassContext
from onnxopt.quantization.bias_correction import Tap, output_shift
from onnxopt.quantization.coverage import int8_coverage
from onnxopt.quantization.plan import PlanConfig, make_plan
from onnxopt.runtime.probe import expose_tensors
from onnxopt.runtime.session import make_session, session_options
from tests.conftest import float_model, run_pass

# --- GPTQ input moments -------------------------------------------------------------------


def _im2col(x: np.ndarray, layer: LayerInput, step: int) -> np.ndarray:
    """(positions, C*kh*kw) patches of every `step`-th output row and column, by loops."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for n in range(x.shape[0]):
        for i in range(0, out_h, step):
            for j in range(0, out_w, step):
                window = padded[
                    n, :, i * sh : i * sh + dh * kh : dh, j * sw : j * sw + dw * kw : dw
                ]
                rows.append(window.reshape(-1))
    return np.array(rows, np.float64)


def test_row_budget_takes_every_sample_and_at_least_its_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    layer = LayerInput("conv", "Conv", "x", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    budget = RowBudget(samples=8, rows_per_column=8, min_rows=64)
    per_sample = budget.per_sample(27)  # 8 rows x 27 columns over 8 samples
    assert per_sample == 27
    h = accumulate(None, x, layer, budget)
    step = 7  # 40x40 outputs: a stride of 7 leaves 6x6 = 36 >= 27 positions, 8 would leave 25
    reference = _im2col(x, layer, step)
    np.testing.assert_allclose(h, reference.T @ reference, rtol=1e-5, atol=1e-4)
    assert patch_rows(x.shape, layer, budget) == len(reference) == 2 * 36
    full = accumulate(None, x, layer)  # no budget: every position of this small map
    everything = _im2col(x, layer, 1)
    np.testing.assert_allclose(full, everything.T @ everything, rtol=1e-5, atol=1e-3)


def test_depthwise_moments_with_budget_match_explicit_patches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 23, 17)).astype(np.float32)
    layer = LayerInput("dw", "Conv", "x", (3, 3), (2, 2), (0, 1, 2, 1), (1, 1), depthwise=True)
    budget = RowBudget(samples=4, rows_per_column=1, min_rows=40)  # 10 positions per sample
    h = accumulate(None, x, layer, budget)
    assert h.shape == (5, 9, 9)
    step = 3  # 12x9 outputs: stride 3 leaves 4x3 = 12 >= 10 positions, stride 4 only 3x3 = 9
    for c in range(5):
        reference = _im2col(x[:, c : c + 1], layer, step)
        np.testing.assert_allclose(h[c], reference.T @ reference, rtol=1e-5, atol=1e-4)
    assert patch_rows(x.shape, layer, budget) == 2 * 4 * 3
    assert patches(x, layer, step).shape == (5, 9, 2 * 4 * 3)


def test_matmul_rows_are_strided_to_the_budget_and_h_accumulates_in_place():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64, 6)).astype(np.float32)  # 4 samples of 64 rows
    layer = LayerInput("mm", "MatMul", "x")
    budget = RowBudget(samples=4, rows_per_column=2, min_rows=64)  # 16 rows per sample
    h = accumulate(None, x, layer, budget)
    rows = x.reshape(-1, 6)[::4].astype(np.float64)
    np.testing.assert_allclose(h, rows.T @ rows, rtol=1e-5)
    assert patch_rows(x.shape, layer, budget) == 64
    again = accumulate(h, x, layer, budget)
    assert again is h
    np.testing.assert_allclose(h, 2 * rows.T @ rows, rtol=1e-5)


def test_depthwise_moments_come_from_the_first_samples_and_others_from_more():
    """Depthwise layers stop gathering H after DEPTHWISE_GPTQ_ROWS.samples samples; the 1x1
    layer behind them keeps going until GPTQ_ROWS.samples."""
    from onnxopt.quantization.calibrate import DEPTHWISE_GPTQ_ROWS, GPTQ_ROWS, Calibrator

    rng = np.random.default_rng(4)
    dw = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    pw = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "dw"], ["h"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "pw"], ["y"], name="pw"),
    ]
    inits = [numpy_helper.from_array(dw, "dw"), numpy_helper.from_array(pw, "pw")]
    model = float_model(nodes, [("x", [None, 4, 5, 5])], [("y", None)], inits)
    samples = GPTQ_ROWS.samples + 8
    x = rng.standard_normal((samples, 4, 5, 5)).astype(np.float32)
    x[DEPTHWISE_GPTQ_ROWS.samples :] *= 100.0  # any later sample in H would dominate it
    data = IterableSource([{"x": x[i : i + 8]} for i in range(0, samples, 8)], input_specs(model))
    layers = [
        LayerInput("dw", "Conv", "x", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), depthwise=True),
        LayerInput("pw", "Conv", "h", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ]
    hessians = Calibrator(model, data, QuantOptions()).ensure([], layers)
    first = x[: DEPTHWISE_GPTQ_ROWS.samples]
    expected = accumulate(None, first, layers[0], DEPTHWISE_GPTQ_ROWS)
    np.testing.assert_allclose(hessians["dw"], expected, rtol=1e-5)
    values = make_session(expose_tensors(model, ["h"])).run(["h"], {"x": x[: GPTQ_ROWS.samples]})[0]
    expected_pw = accumulate(None, values, layers[1], GPTQ_ROWS)
    np.testing.assert_allclose(hessians["pw"], expected_pw, rtol=1e-4)


# --- bias correction ----------------------------------------------------------------------


def _conv_output_sum(x, error, **attrs) -> tuple[np.ndarray, int]:
    """(per output channel, the sum over samples and positions of Conv(x, error) run by ORT;
    the number of samples times positions)."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(error.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    y = make_session(model).run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)
    return y.sum(axis=(0, 2, 3)), y.size // y.shape[1]


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"strides": [2, 2], "pads": [0, 1, 2, 0], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
        {"group": 2, "pads": [1, 0, 1, 0]},
    ],
)
def test_conv_shift_from_patch_means_equals_the_mean_output_difference(attrs):
    rng = np.random.default_rng(3)
    group = attrs.get("group", 1)
    error = rng.standard_normal((6, 4 // group, 3, 3)) * 1e-2
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    tap = Tap(node, "x", error=error)
    batches = [rng.standard_normal((3, 4, 11, 9)), rng.standard_normal((2, 4, 7, 12))]
    for batch in batches:  # two map sizes: each gets its own sums
        tap.add(batch.astype(np.float32))
    shift = output_shift(tap, tap.mean_input())
    sums = [_conv_output_sum(b, error, **attrs) for b in batches]
    expected = sum(total for total, _ in sums) / sum(count for _, count in sums)
    np.testing.assert_allclose(shift, expected, rtol=1e-4, atol=1e-9)


def test_int8_inputs_are_dequantized_and_gemm_shift_uses_alpha_and_trans_b():
    rng = np.random.default_rng(4)
    error = rng.standard_normal((5, 8)) * 1e-2  # transB: (N, K)
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1, alpha=0.5)
    tap = Tap(node, "a_quantized", scale=0.05, zero_point=128, error=error)
    codes = rng.integers(0, 256, (10, 8)).astype(np.uint8)
    tap.add(codes[:6])
    tap.add(codes[6:])
    dequantized = (codes.astype(np.float64) - 128) * 0.05
    expected = 0.5 * (dequantized @ error.T).mean(axis=0)
    np.testing.assert_allclose(output_shift(tap, tap.mean_input()), expected, rtol=1e-9)


# --- the float stem and the float guard ---------------------------------------------------


def _quantize(model, **options):
    calib = RandomSource(input_specs(model), seed=0, batches=2, batch=4)
    ctx = PassContext(calibration=calib)
    return run_pass(QuantPass(build_options(QuantOptions, options, "quant")), model, ctx)


def test_image_stem_stays_float_without_a_guard_and_the_rest_runs_int8(convbnrelu_path):
    model = onnx.load(str(convbnrelu_path))
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    result = _quantize(model, rounding="nearest", bias_correction=False)
    assert any("image stem" in reason and stem.name in reason for reason in result.skipped)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["Sum"] == 0  # nothing upstream is int8: ORT cannot fuse the stem
    coverage = int8_coverage(result.model)
    assert len(coverage.float_layers) == 1 and coverage.dq_to_q == 0
    assert 0.9 < coverage.fraction < 1.0 and coverage.kernels["QLinearConv"] >= 1
    assert (
        result.stats["quantized_ops"]["Conv"]
        == sum(n.op_type == "Conv" for n in model.graph.node) - 1
    )
    feed = {"input": np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)}
    reference = make_session(model).run(None, feed)[0].ravel()
    got = make_session(result.model).run(None, feed)[0].ravel()
    assert reference @ got / np.sqrt((reference @ reference) * (got @ got)) > 0.98


def test_node_kept_float_between_int8_nodes_keeps_its_guard(convbnrelu_path):
    model = onnx.load(str(convbnrelu_path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    result = _quantize(model, exclude=[convs[1]], rounding="nearest", bias_correction=False)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["Sum"] == 1  # its input is dequantized: without the Sum ORT would fuse it
    coverage = int8_coverage(result.model)
    assert convs[1] in str(coverage.float_layers)


def test_float_readers_of_a_float_stream_read_it_unrounded():
    """Residual Adds kept float: the stream between them stays float (only the int8 convs
    read it quantized), so it is not rounded again at every block."""
    rng = np.random.default_rng(12)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3, n)
        for n in ("w1", "w2", "w3")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Add", ["x", "c1"], ["s1"], name="add1"),
        helper.make_node("Conv", ["s1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["s1", "c2"], ["s2"], name="add2"),
        helper.make_node("Conv", ["s2", "w3"], ["y"], name="conv3"),
    ]
    model = float_model(nodes, [("x", [1, 8, 6, 6])], [("y", None)], weights)
    result = _quantize(model, exclude=["Add"], rounding="nearest", bias_correction=False)
    nodes = {n.name: n for n in result.model.graph.node}
    producers = {o: n.op_type for n in result.model.graph.node for o in n.output}
    assert nodes["add1"].input[0] == "x"
    assert nodes["add2"].input[0] == "s1"  # the float sum itself, not DQ(Q(s1))
    assert producers[nodes["add2"].input[1]] == "DequantizeLinear"  # conv2 runs int8
    assert producers[nodes["conv2"].input[0]] == "DequantizeLinear"
    assert int8_coverage(result.model).kernels["QLinearConv"] == 3
    feed = {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)}
    reference = make_session(model).run(None, feed)[0].ravel()
    got = make_session(result.model).run(None, feed)[0].ravel()
    assert reference @ got / np.sqrt((reference @ reference) * (got @ got)) > 0.99


def test_calibration_sessions_do_not_spin():
    options = session_options(spinning=False)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _stem_model(kernel: int, size: int) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="stem", pads=[kernel // 2] * 4),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w1"], ["y"], name="next", pads=[1] * 4),
    ]
    weights = [
        numpy_helper.from_array(
            rng.standard_normal((8, 3, kernel, kernel)).astype(np.float32), "w0"
        ),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, size, size])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(
    ("kernel", "size", "provider", "stays_float"),
    [
        (3, 32, "cpu", True),  # 27-value patches on an image: float is faster
        (7, 32, "cpu", False),  # 147-value patches (ResNet): int8 is faster
        (3, 8, "cpu", False),  # tiny input: equally fast, kept int8 with the rest
        (3, 32, "cuda", False),
    ],
)
def test_only_small_patch_image_stems_stay_float_on_cpu(kernel, size, provider, stays_float):
    model = _stem_model(kernel, size)
    dtypes = {name: TensorProto.FLOAT for name in ("x", "a", "r", "y")}
    plan = make_plan(model, dtypes, PlanConfig(provider=provider, float_stem=True))
    assert ("stem" not in plan.weighted) == stays_float
    assert "next" in plan.weighted
    assert any("image stem" in reason for reason in plan.skipped) == stays_float
    assert "stem" in make_plan(model, dtypes, PlanConfig(provider=provider)).weighted
