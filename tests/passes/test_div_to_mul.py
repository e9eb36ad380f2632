"""`cleanup` turns a Div by a float constant into a Mul by its reciprocal (hard-swish exports),
so that `quant` runs the whole block in int8, and says why it keeps a Div by a constant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import api
from onnxopt.quantization.coverage import int8_coverage
from tests.conftest import float_model, ort_outputs, random_feed


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _hardswish_model(divisor=6.0) -> onnx.ModelProto:
    """x -> Conv -> hard-swish as Paddle exports it (h * clip(h + 3, 0, 6) / 6) -> Conv -> y."""
    rng = np.random.default_rng(4)
    inits = [
        _const("w1", 0.5 * rng.standard_normal((8, 3, 3, 3))),
        _const("w2", 0.5 * rng.standard_normal((4, 8, 1, 1))),
        _const("three", 3.0),
        _const("zero", 0.0),
        _const("six", 6.0),
        _const("d", divisor),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 4, name="c1"),
        helper.make_node("Add", ["h", "three"], ["h3"], name="add"),
        helper.make_node("Clip", ["h3", "zero", "six"], ["r6"], name="clip"),
        helper.make_node("Mul", ["h", "r6"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "d"], ["hs"], name="div"),
        helper.make_node("Conv", ["hs", "w2"], ["y"], name="c2"),
    ]
    return float_model(nodes, [("x", [1, 3, 8, 8])], [("y", None)], inits)


def _cleanup(model: onnx.ModelProto):
    result = api.optimize(model, passes="cleanup")
    return result.model, result.report.passes[0]


def test_div_by_a_constant_becomes_a_mul_by_its_reciprocal():
    model = _hardswish_model()
    cleaned, record = _cleanup(model)
    ops = [n.op_type for n in cleaned.graph.node]
    assert "Div" not in ops and ops.count("Mul") == 2
    assert record.stats["divs_to_muls"] == 1
    feed = random_feed(model, seed=1)
    ref, got = ort_outputs(model, feed)[0], ort_outputs(cleaned, feed)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize(
    ("divisor", "reason"),
    [(0.0, "the divisor has a 0"), (np.float32(1e-40), "reciprocal overflows")],
)
def test_div_by_zero_or_subnormal_is_kept_with_the_reason(divisor, reason):
    cleaned, record = _cleanup(_hardswish_model(divisor))
    assert "Div" in [n.op_type for n in cleaned.graph.node]
    assert any("Div 'div' kept" in s and reason in s for s in record.skipped)


def test_integer_and_activation_divisors_are_left_alone():
    nodes = [
        helper.make_node("Div", ["i", "two"], ["q"], name="int_div"),
        helper.make_node("Div", ["x", "x2"], ["y"], name="act_div"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("q", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
        ],
        [_const("two", 2, np.int64)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cleaned, record = _cleanup(model)
    assert [n.op_type for n in cleaned.graph.node] == ["Div", "Div"]
    assert [s for s in record.skipped if "Div" in s] == [
        "Div 'int_div' kept: int64 divisor (integer division truncates)"
    ]


def test_quant_runs_the_hardswish_block_in_int8_after_the_rewrite():
    from tests.quantization.test_quant import _random, quantize

    model = _hardswish_model()
    result = quantize(model, _random(model))  # the manager's cleanup runs first
    kernels = int8_coverage(result.model).kernels
    assert kernels.get("QLinearMul") == 2 and kernels.get("QLinearAdd") == 1
    assert "Div" not in kernels and "Mul" not in kernels
