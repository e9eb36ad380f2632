"""A Paddle-style export (opset 12, Constant-node weights) through `cleanup,prune,share,quant`
(issue 20: `quant` crashed with a KeyError on an op type outside its RULES table)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt import api
from onnxopt.ir.opset import upgrade_opset
from onnxopt.quantization.plan import PlanConfig, make_plan
from onnxopt.quantization.rules import RULES
from onnxopt.runtime.session import make_session
from tests.conftest import float_model
from tests.zoo.paddle import paddle_cnn


def _images(path, samples: int, seed: int):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((samples, 3, 16, 16)).astype(np.float32))
    return path


def test_paddle_export_goes_through_the_full_pipeline(tmp_path):
    model = paddle_cnn(0)
    calib = _images(tmp_path / "calib.npz", 16, seed=0)
    val = _images(tmp_path / "val.npz", 32, seed=1)
    result = api.optimize(
        model, tmp_path / "out.onnx", passes="cleanup,prune,share,quant", calib=calib, val=val
    )
    rows = {record.step.split("{")[0]: record for record in result.report.passes}
    assert rows["quant"].status == "changed"
    assert rows["quant"].stats["converted_opset"] == [12, 13]
    assert rows["quant"].stats["quantized_ops"]["Conv"] == 3
    for record in result.report.passes:
        if record.fidelity is not None:  # each accepted step within its pass's gate
            assert not record.fidelity["failures"]
            assert min(o["cosine"] for o in record.fidelity["outputs"]) >= 0.9
    written = onnx.load(tmp_path / "out.onnx")
    feed = {"x": np.load(val)["x"]}
    before = make_session(model).run(None, feed)[0]
    after = make_session(written).run(None, feed)[0]
    cosine = np.sum(before * after) / (np.linalg.norm(before) * np.linalg.norm(after))
    assert cosine >= 0.95


def test_converted_nodes_are_named_uniquely():
    converted = upgrade_opset(paddle_cnn(0), 13)
    names = [node.name for node in converted.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert {"Shape", "Flatten"} <= {node.op_type for node in converted.graph.node}


def test_plan_treats_ops_outside_rules_as_opaque_whatever_their_names():
    """Unnamed nodes: a Reshape candidate and a Shape / Constant (outside RULES) all named ''."""
    assert "Shape" not in RULES and "Constant" not in RULES
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 4], np.eye(4).ravel().tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Shape", ["m"], ["s"], name=""),
        helper.make_node("Constant", [], ["c"], name="", value_ints=[-1]),
        helper.make_node("Reshape", ["m", "c"], ["r"], name=""),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm2"),
        helper.make_node("Cast", ["s"], ["sf"], name="", to=onnx.TensorProto.FLOAT),
    ]
    model = float_model(nodes, [("x", [2, 4])], [("y", [2, 4]), ("sf", [2])], [w])
    dtypes = {"x": 1, "m": 1, "r": 1, "y": 1}
    plan = make_plan(model, dtypes, PlanConfig())
    assert plan.counts() == {"MatMul": 2, "Reshape": 1}
