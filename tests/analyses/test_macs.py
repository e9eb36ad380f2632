"""MAC counts on layers with hand-computed counts, symbolic dims, and a full MobileNetV2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analyses.macs import Poly, count_macs
from onnxopt.errors import InputError


def model_of(nodes, inputs, weights, outputs=None) -> onnx.ModelProto:
    """A graph whose inputs are (name, shape) pairs and whose weights are zero initializers."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs or ["y"]],
        [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def conv(c_in, c_out, kernel, size, group=1, stride=1, pad=1, batch=1) -> onnx.ModelProto:
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4
    )
    weights = {"w": (c_out, c_in // group, kernel, kernel), "b": (c_out,)}
    return model_of([node], [("x", [batch, c_in, size, size])], weights)


@pytest.mark.parametrize(
    ("model", "expected", "params"),
    [
        (conv(3, 8, 3, 8), 8 * 3 * 9 * 64, 8 * 3 * 9 + 8),
        (conv(8, 8, 3, 8, group=8), 8 * 1 * 9 * 64, 8 * 9 + 8),  # depthwise
        (conv(8, 16, 3, 8, group=4), 16 * 2 * 9 * 64, 16 * 2 * 9 + 16),  # grouped
        (conv(3, 8, 3, 8, stride=2), 8 * 3 * 9 * 16, 8 * 3 * 9 + 8),  # 4x4 output
        (conv(3, 8, 1, 8, pad=0, batch=4), 4 * 8 * 3 * 64, 8 * 3 + 8),
    ],
)
def test_conv_counts(model, expected, params):
    report = count_macs(model)
    assert report.total == expected
    (layer,) = report.per_layer
    assert (layer.op_type, layer.macs, layer.params) == ("Conv", expected, params)


def test_conv_transpose_counts_input_positions():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2)
    model = model_of([node], [("x", [1, 4, 5, 5])], {"w": (4, 3, 3, 3)})
    assert count_macs(model).total == 4 * 25 * 3 * 9  # C_in x H x W x (C_out/group) x k x k


@pytest.mark.parametrize(
    ("attrs", "a", "b", "expected"),
    [
        ({}, (4, 16), (16, 8), 4 * 8 * 16),
        ({"transB": 1}, (4, 16), (8, 16), 4 * 8 * 16),
        ({"transA": 1, "transB": 1}, (16, 4), (8, 16), 4 * 8 * 16),
    ],
)
def test_gemm_counts(attrs, a, b, expected):
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], **attrs)
    model = model_of([node], [("a", list(a))], {"w": b, "c": (8,)})
    report = count_macs(model)
    assert report.total == expected and report.per_layer[0].params == 16 * 8 + 8


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([2, 3, 4, 5], [5, 6], 2 * 3 * 4 * 6 * 5),
        ([2, 1, 4, 5], [3, 5, 6], 2 * 3 * 4 * 6 * 5),  # broadcast batch dims
        ([5], [5, 6], 6 * 5),  # vector x matrix
    ],
)
def test_matmul_counts(a, b, expected):
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = model_of([node], [("a", a), ("b", b)], {})
    assert count_macs(model).total == expected


def test_dynamic_dims_are_symbolic_and_can_be_fixed():
    model = conv(3, 8, 3, 8, batch="N")
    report = count_macs(model)
    assert report.symbols == ["N"] and report.expression == "13.82K*N"
    assert report.total == 8 * 3 * 9 * 64  # symbols at 1
    fixed = count_macs(model, {"x": (4, 3, 8, 8)})
    assert fixed.symbols == [] and fixed.total == 4 * 8 * 3 * 9 * 64
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # untouched


def test_attention_scores_are_quadratic_in_sequence_length():
    nodes = [
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["y"]),
    ]
    report = count_macs(model_of(nodes, [("q", ["B", "T", 16])], {}))
    assert report.expression == "16*B*T^2"
    assert count_macs(model_of(nodes, [("q", ["B", "T", 16])], {}), {"q": (2, 10, 16)}).total == (
        2 * 10 * 10 * 16
    )


def test_unknown_shapes_are_reported_not_guessed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's symbolic inference drops a temp file in the cwd
    nodes = [
        helper.make_node("Mystery", ["x"], ["h"], domain="example.custom"),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    model = model_of(nodes, [("x", [2, 4])], {"w": (4, 4)})
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    report = count_macs(model)
    assert report.total == 0 and report.per_layer == []
    assert report.skipped and "MatMul" in report.skipped[0] and "unknown" in report.skipped[0]


def test_input_shape_errors():
    model = conv(3, 8, 3, 8)
    with pytest.raises(InputError, match="'nope', which is not a model input"):
        count_macs(model, {"nope": (1,)})
    with pytest.raises(InputError, match=r"--shape x:1x4x8x8 does not fit \[1x3x8x8\]"):
        count_macs(model, {"x": (1, 4, 8, 8)})


def test_count_is_read_only():
    model = conv(3, 8, 3, 8, batch="N")
    before = model.SerializeToString()
    count_macs(model)
    count_macs(model, {"x": (2, 3, 8, 8)})
    assert model.SerializeToString() == before


def test_poly_arithmetic_and_text():
    a = Poly.product(("B", 3, "T"))
    b = Poly.product(("T", 2, "B"))
    assert str(a + b) == "5*B*T" and (a + b).value({"B": 2, "T": 7}) == 70
    assert str(Poly.product((2, 1500))) == "3K" and str(Poly()) == "0"


def test_subgraph_layers_are_reported(if_model_path):
    report = count_macs(onnx.load(if_model_path))
    assert any("inside a subgraph are not counted" in note for note in report.skipped)


def test_mobilenet_v2_imagenet_counts(tmp_path):
    """torchvision's MobileNetV2 at 224x224: 300.8 M MACs, 3.5 M parameters."""
    from onnxopt.analyses.stats import parameter_count
    from tests.zoo import make_mobilenet_v2_onnx

    path = make_mobilenet_v2_onnx(
        tmp_path / "m.onnx", width_mult=1.0, num_classes=1000, image_size=224
    )
    model = onnx.load(path)
    report = count_macs(model, {"input": (1, 3, 224, 224)})
    assert abs(report.total / 300.77e6 - 1) < 0.02
    assert abs(parameter_count(model) / 3.5e6 - 1) < 0.02
    assert len(report.per_layer) == 53  # 52 Conv + the classifier Gemm
    depthwise = [layer for layer in report.per_layer if "conv.1.0" in layer.name]
    assert depthwise and all(layer.params == layer.output_shape[1] * 9 for layer in depthwise)


def test_macs_at_a_shape_that_fits_paddle_style_dynamic_dims():
    """-1 and '?' dims are dynamic: any size fits them, and the count follows the size."""
    from tests.data.test_feeds import paddle_style_conv

    model = paddle_style_conv()
    report = count_macs(model, {"x": (1, 3, 12, 20)})
    assert report.total == 4 * 3 * 3 * 3 * 12 * 20
    with pytest.raises(InputError, match=r"does not fit \[\?x3x\?x\?\]"):
        count_macs(model, {"x": (1, 4, 12, 20)})
