"""Shape inference keeps symbolic dims and says which tensors stay unknown."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxopt.ir.shapes import infer_shapes


def test_symbolic_dims_are_kept(transformer_path):
    info = infer_shapes(onnx.load(transformer_path))
    assert info.unknown == []
    assert info.shape("logits")[0] == "batch"


def test_data_propagation_resolves_reshape_targets():
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Reshape", ["x", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    info = infer_shapes(model)
    assert info.static_shape("y") == (2, 3, 4)


def test_unknown_custom_op_output_is_reported():
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    model.ir_version = 10
    info = infer_shapes(model)
    assert info.static_shape("y") is None
