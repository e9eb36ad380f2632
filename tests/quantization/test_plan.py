"""`quantization/plan.py`: which ops run in int8 around float neighbours, and why others stay
float."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxopt.quantization.coverage import int8_coverage
from onnxopt.quantization.plan import PlanConfig, make_plan
from tests.conftest import float_model, random_feed
from tests.quantization.test_quant import _random, quantize, run


def _conv_sigmoid_reshape(sigmoid_first: bool = False):
    """x -> Conv -> Sigmoid -> Reshape -> y (Silero VAD's head); `sigmoid_first`: x -> Sigmoid
    -> Conv -> Reshape -> y."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    first, second = ("sig", "conv") if sigmoid_first else ("conv", "sig")
    ops = {
        "conv": lambda i, o: helper.make_node("Conv", [i, "w"], [o], pads=[1] * 4, name="conv"),
        "sig": lambda i, o: helper.make_node("Sigmoid", [i], [o], name="sig"),
    }
    nodes = [
        ops[first]("x", "a"),
        ops[second]("a", "b"),
        helper.make_node("Reshape", ["b", "shape"], ["y"], name="flat"),
    ]
    return float_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 256])], inits)


def _dtypes(*names: str) -> dict[str, int]:
    return dict.fromkeys(names, TensorProto.FLOAT)


def test_table_op_reading_int8_runs_int8_though_only_float_reads_it():
    model = _conv_sigmoid_reshape()
    plan = make_plan(model, _dtypes("x", "a", "b"), PlanConfig())
    assert plan.nodes == ["conv", "sig"]
    assert plan.root("b") == "b" and "flat" not in plan.nodes  # the DQ moves after the table
    result = quantize(model, _random(model), prepare=False)
    assert int8_coverage(result.model).kernels.get("QLinearSigmoid") == 1
    float_sigmoid = quantize(model, _random(model), prepare=False, exclude=("Sigmoid",)).model
    feed = random_feed(model, seed=5)
    want = run(model, feed)[0]
    table_error = np.abs(run(result.model, feed)[0] - want).max()
    float_error = np.abs(run(float_sigmoid, feed)[0] - want).max()
    assert table_error <= float_error + 1 / 255  # the conv's error + at most one table step


def test_table_op_without_int8_input_stays_float_and_says_why():
    model = _conv_sigmoid_reshape(sigmoid_first=True)
    plan = make_plan(model, _dtypes("x", "a", "b"), PlanConfig())
    assert plan.nodes == ["conv"]
    assert "Sigmoid 'sig' stays float: no int8 input" in " | ".join(plan.skipped)
