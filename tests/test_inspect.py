"""`inspect`: the summary of a model, its JSON, its text, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt import api
from onnxopt.analyses.summary import summarize
from tests.conftest import run_cli


def conv_model() -> onnx.ModelProto:
    """Conv 3->8 k3 (pads 1) -> Relu -> custom op, dynamic batch, 8x8 images."""
    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Reshape", ["r", "shape"], ["y"]),
            helper.make_node("Tag", ["y"], ["t"], domain="example.custom"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, None),
        ],
        [weight, bias, shape],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="test")
    model.ir_version = 10
    return model


def test_summary_fields():
    summary = summarize(conv_model())
    assert [(t.name, t.dtype, t.shape) for t in summary.inputs] == [
        ("x", "float32", ["batch", 3, 8, 8])
    ]
    assert [t.describe() for t in summary.outputs] == ["float32[batch,512]", "float32[?]"]
    assert summary.opsets == {"ai.onnx": 17, "example.custom": 1}
    assert summary.domains == {"": 3, "example.custom": 1}
    assert summary.op_histogram == {"Conv": 1, "Relu": 1, "Reshape": 1, "example.custom:Tag": 1}
    assert summary.params == 8 * 3 * 9 + 8  # the int64 shape tensor is not a parameter
    assert summary.tensor_bytes == (8 * 3 * 9 + 8) * 4 + 2 * 8
    assert summary.macs.total == 8 * 3 * 9 * 64 and summary.macs.expression == "13.82K*batch"
    assert summary.subgraphs == [] and summary.external_data == {}


def test_summary_at_a_given_shape_and_subgraphs(if_model_path):
    summary = api.inspect(conv_model(), shapes=["x:4x3x8x8"])
    assert summary.macs.total == 4 * 8 * 3 * 9 * 64 and summary.macs.symbols == []
    assert summary.input_shapes == {"x": [4, 3, 8, 8]}
    with_if = api.inspect(if_model_path)
    assert with_if.subgraphs and {s.op_type for s in with_if.subgraphs} == {"If"}
    assert sum(with_if.op_histogram.values()) > with_if.nodes  # subgraph nodes are counted


def test_external_data_is_reported(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(conv_model(), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    summary = api.inspect(path)
    assert list(summary.external_data) == ["ext.data"]
    assert summary.external_data["ext.data"] == (tmp_path / "ext.data").stat().st_size
    assert summary.params == 8 * 3 * 9 + 8 and summary.file_bytes == path.stat().st_size


def test_cli_inspect_json_and_text(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    result = run_cli("inspect", path, "--json", "--shape", "x:2x3x8x8")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["macs"]["total"] == 2 * 13824 and data["params"] == 224
    assert data["macs"]["per_layer"][0] == {
        "name": "conv",
        "op_type": "Conv",
        "macs": 2 * 13824,
        "expression": "27.65K",
        "params": 224,
        "output_shape": [2, 8, 8, 8],
    }
    text = run_cli("inspect", path)
    assert text.returncode == 0, text.stderr
    assert "MACs: 13.82K (13824) = 13.82K*batch with batch at 1 (set them with --shape)" in (
        text.stdout
    )
    assert "top 1 of 1 layers by MACs" in text.stdout and "example.custom:Tag" in text.stdout


def test_cli_inspect_errors_are_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    for args, fragment in [
        (["--shape", "x:1x3"], "error: --shape x:1x3 does not fit [?x3x8x8]"),
        (["--shape", "x=1x3"], "error: bad --shape 'x=1x3' (expected NAME:DIMS"),
        (["--shape", "z:1"], "error: --shape names 'z', which is not a model input (x)"),
    ]:
        result = run_cli("inspect", path, *args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith(fragment), result.stderr
    missing = run_cli("inspect", tmp_path / "nope.onnx")
    assert missing.returncode == 2 and "model file not found" in missing.stderr
