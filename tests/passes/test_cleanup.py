"""`cleanup` on exported models and hand-built graphs: structure first, then numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import api
from tests.conftest import ort_outputs, random_feed

TOLERANCE = 1e-5


def _optimize(model, **kwargs):
    return api.optimize(model, passes=kwargs.pop("passes", "cleanup"), **kwargs)


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0):
    feed = random_feed(before, seed=seed)
    for ref, got in zip(ort_outputs(before, feed), ort_outputs(after, feed), strict=True):
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(ref - got).max() <= TOLERANCE * scale


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_exported_cnn_folds_every_batchnorm(convbnrelu_path):
    before = onnx.load(convbnrelu_path)
    assert "BatchNormalization" in _ops(before)
    result = _optimize(convbnrelu_path)
    after = result.model
    assert "BatchNormalization" not in _ops(after)
    assert result.report.passes[0].stats["bn_folded"] == _ops(before).count("BatchNormalization")
    assert result.report.passes[0].status == "changed"
    _assert_same_outputs(before, after)
    _assert_same_outputs(before, after, seed=1)


def test_transformer_is_unchanged_numerically(transformer_path):
    before = onnx.load(transformer_path)
    after = _optimize(transformer_path).model
    assert "MatMul" in _ops(after) and "Softmax" in _ops(after)
    _assert_same_outputs(before, after)


def test_if_subgraphs_survive(if_model_path):
    before = onnx.load(if_model_path)
    after = _optimize(if_model_path).model
    if_nodes = [n for n in after.graph.node if n.op_type == "If"]
    assert len(if_nodes) == 1
    branches = {a.name: a.g for a in if_nodes[0].attribute}
    original = {a.name: a.g for n in before.graph.node if n.op_type == "If" for a in n.attribute}
    assert {k: len(g.node) for k, g in branches.items()} == {
        k: len(g.node) for k, g in original.items()
    }
    for seed in range(3):
        _assert_same_outputs(before, after, seed=seed)


def _graph_model(nodes, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _bn_params(rng, channels, prefix):
    return [
        numpy_helper.from_array((0.5 + rng.random(channels)).astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"{prefix}_bias"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"{prefix}_mean"),
        numpy_helper.from_array((0.5 + rng.random(channels)).astype(np.float32), f"{prefix}_var"),
    ]


def _bn_node(inp, out, prefix):
    names = [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [inp, *names], [out], epsilon=1e-3)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm_folds_exactly(group):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 6 // group, 3, 3)).astype(np.float32)
    model = _graph_model(
        [
            helper.make_node("ConvTranspose", ["x", "w"], ["t"], group=group),
            _bn_node("t", "y", "bn"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), *_bn_params(rng, 6, "bn")],
    )
    after = _optimize(model).model
    assert _ops(after) == ["ConvTranspose"]
    _assert_same_outputs(model, after)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_batchnorm_folds_exactly(trans_b):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 5) if trans_b else (5, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    model = _graph_model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["t"], transB=trans_b, alpha=0.7, beta=1.3),
            _bn_node("t", "y", "bn"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(bias, "b"),
            *_bn_params(rng, 8, "bn"),
        ],
    )
    after = _optimize(model).model
    assert _ops(after) == ["Gemm"]
    _assert_same_outputs(model, after)


def test_batchnorms_in_a_row_fold_one_after_another_with_one_graph_index(monkeypatch):
    from onnxopt.passes import cleanup as cleanup_module

    built = []

    class CountingIndex(cleanup_module.GraphIndex):
        def __init__(self, graph):
            built.append(graph)
            super().__init__(graph)

    monkeypatch.setattr(cleanup_module, "GraphIndex", CountingIndex)
    rng = np.random.default_rng(4)
    model = _graph_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            _bn_node("c", "b1", "bn1"),
            _bn_node("b1", "b2", "bn2"),
            helper.make_node("Conv", ["b2", "w2"], ["d"], name="conv2"),
            _bn_node("d", "y", "bn3"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
            *_bn_params(rng, 4, "bn1"),
            *_bn_params(rng, 4, "bn2"),
            *_bn_params(rng, 2, "bn3"),
        ],
    )
    result = _optimize(model)
    assert _ops(result.model) == ["Conv", "Conv"]
    assert result.report.passes[0].stats["bn_folded"] == 3
    assert len(built) == 1
    weights = {n.name: n.input[1] for n in result.model.graph.node}
    assert weights == {"conv": "conv.weight_bnfolded_1", "conv2": "conv2.weight_bnfolded"}
    _assert_same_outputs(model, result.model)


def test_weights_in_constant_nodes_are_folded():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    params = _bn_params(rng, 4, "bn")
    constants = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w"))
    ]
    constants += [helper.make_node("Constant", [], [p.name], value=p) for p in params]
    model = _graph_model(
        [*constants, helper.make_node("Conv", ["x", "w"], ["c"]), _bn_node("c", "y", "bn")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [],
    )
    after = _optimize(model).model
    assert _ops(after) == ["Conv"]
    _assert_same_outputs(model, after)


def test_shared_conv_output_is_not_folded_and_says_why():
    rng = np.random.default_rng(3)
    model = _graph_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            _bn_node("c", "y", "bn"),
            helper.make_node("Relu", ["c"], ["z"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            *_bn_params(rng, 4, "bn"),
        ],
    )
    result = _optimize(model)
    assert "BatchNormalization" in _ops(result.model)
    assert any("output has other readers" in s for s in result.report.passes[0].skipped)


def test_identity_dropout_and_noop_reshape_are_removed():
    shape = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape")
    model = _graph_model(
        [
            helper.make_node("Identity", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Dropout", ["b"], ["c"]),
            helper.make_node("Reshape", ["c", "shape"], ["d"]),
            helper.make_node("Sigmoid", ["d"], ["e"]),
            helper.make_node("Identity", ["e"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [shape],
    )
    result = _optimize(model)
    assert _ops(result.model) == ["Relu", "Sigmoid"]
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert [i.name for i in result.model.graph.input] == ["x"]
    _assert_same_outputs(model, result.model)


def test_dropout_with_read_mask_is_kept():
    model = _graph_model(
        [helper.make_node("Dropout", ["x"], ["y", "mask"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 3]),
        ],
        [],
    )
    assert _ops(_optimize(model).model) == ["Dropout"]


def test_constant_subgraphs_are_folded():
    a = numpy_helper.from_array(np.full((2, 3), 2.0, dtype=np.float32), "a")
    b = numpy_helper.from_array(np.full((2, 3), 3.0, dtype=np.float32), "b")
    model = _graph_model(
        [
            helper.make_node("Mul", ["a", "b"], ["ab"]),
            helper.make_node("Sqrt", ["ab"], ["s"]),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [a, b],
    )
    after = _optimize(model).model
    assert _ops(after) == ["Add"]
    _assert_same_outputs(model, after)


def test_unknown_ops_are_left_untouched():
    model = _graph_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [],
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = _optimize(model)
    assert _ops(result.model) == ["Relu", "Gelu"]
    _assert_same_outputs(model, result.model)


def test_shape_start_end_fold_to_the_sliced_shape():
    # Shape{end=1}(x) is [2]: the Reshape target is [2, -1], not x's whole shape.
    model = _graph_model(
        [
            helper.make_node("Shape", ["x"], ["batch"], end=1),
            helper.make_node("Shape", ["x"], ["tail"], start=-2),
            helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 60]),
            helper.make_tensor_value_info("tail", TensorProto.INT64, [2]),
        ],
        [numpy_helper.from_array(np.array([-1], np.int64), "minus_one")],
    )
    result = _optimize(model)
    assert result.report.passes[0].status == "changed"
    assert "Shape" not in _ops(result.model)
    _assert_same_outputs(model, result.model)


def test_shapes_declared_wrong_in_the_file_are_not_folded_in():
    # value_info claims t is 7x7; folding Shape(t) from that claim would break the Reshape.
    model = _graph_model(
        [
            helper.make_node("Relu", ["x"], ["t"]),
            helper.make_node("Shape", ["t"], ["target"]),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [],
    )
    model.graph.value_info.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [7, 7]))
    result = _optimize(model)
    assert result.report.passes[0].status == "changed"
    target = next(t for t in result.model.graph.initializer if t.name == "target")
    assert numpy_helper.to_array(target).tolist() == [2, 3]
    _assert_same_outputs(model, result.model)
