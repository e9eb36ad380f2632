"""`cleanup` folds a constant zero Pad into the Conv/AveragePool reading it (TF-style SAME
exports), in each Pad form, and says why it keeps any other Pad."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt import api
from tests.conftest import float_model, ort_outputs, random_feed

TF_SAME = [0, 0, 0, 0, 0, 0, 1, 1]  # stride 2, kernel 3 on an even size: one row/column at the end


def _weights(seed: int = 0) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
    ]


def _conv(source: str = "p", **attrs) -> onnx.NodeProto:
    attrs.setdefault("strides", [2, 2])
    return helper.make_node("Conv", [source, "w", "b"], ["y"], name="conv", **attrs)


def _model(pad: onnx.NodeProto, reader: onnx.NodeProto, opset: int, extra=(), outputs=None):
    return float_model(
        [pad, reader],
        [("x", [2, 4, 10, 10])],
        outputs or [("y", None)],
        [*_weights(), *extra],
        opset=opset,
    )


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _cleanup(model: onnx.ModelProto):
    result = api.optimize(model, passes="cleanup")
    return result.model, result.report.passes[0]


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    feed = random_feed(before, seed=3)
    for ref, got in zip(ort_outputs(before, feed), ort_outputs(after, feed), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


FOLDABLE = {
    "pad2 attribute": (lambda: helper.make_node("Pad", ["x"], ["p"], pads=TF_SAME), 10, []),
    "pad11 input, no value": (
        lambda: helper.make_node("Pad", ["x", "pads"], ["p"]),
        13,
        [_ints("pads", TF_SAME)],
    ),
    "pad11 input, value 0": (
        lambda: helper.make_node("Pad", ["x", "pads", "zero"], ["p"], mode="constant"),
        13,
        [
            _ints("pads", [0, 0, 1, 2, 0, 0, 2, 1]),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ],
    ),
    "pad18 axes": (
        lambda: helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"]),
        18,
        [_ints("pads", [1, 0, 1, 1]), _ints("axes", [-2, 3])],
    ),
}


@pytest.mark.parametrize("form", list(FOLDABLE))
def test_zero_pad_folds_into_the_conv(form):
    make_pad, opset, extra = FOLDABLE[form]
    model = _model(make_pad(), _conv(pads=[1, 0, 0, 1]), opset, extra)
    after, record = _cleanup(model)
    assert [n.op_type for n in after.graph.node] == ["Conv"]
    assert record.stats["pads_folded"] == 1 and record.status == "changed"
    conv = after.graph.node[0]
    assert conv.input[0] == "x"
    pads = helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads"))
    expected = {
        "pad2 attribute": [1, 0, 1, 2],
        "pad11 input, no value": [1, 0, 1, 2],
        "pad11 input, value 0": [2, 2, 2, 2],
        "pad18 axes": [2, 0, 1, 2],
    }[form]
    assert list(pads) == expected
    _assert_same_outputs(model, after)


def test_zero_pad_folds_into_an_average_pool_that_counts_pads():
    pool = helper.make_node(
        "AveragePool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2], count_include_pad=1
    )
    model = _model(
        helper.make_node("Pad", ["x", "pads"], ["p"]), pool, 13, [_ints("pads", TF_SAME)]
    )
    after, record = _cleanup(model)
    assert [n.op_type for n in after.graph.node] == ["AveragePool"]
    assert record.stats["pads_folded"] == 1
    _assert_same_outputs(model, after)


def _pad_input_model():
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"]), _conv()],
        "g",
        [
            helper.make_tensor_value_info("x", 1, [2, 4, 10, 10]),
            helper.make_tensor_value_info("pads", onnx.TensorProto.INT64, [8]),
        ],
        [helper.make_tensor_value_info("y", 1, None)],
        _weights(),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


REFUSED = {
    "non-zero value": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads", "v"], ["p"]),
            _conv(),
            13,
            [_ints("pads", TF_SAME), numpy_helper.from_array(np.array(0.5, np.float32), "v")],
        ),
        "the padding value is 0.5, not 0",
    ),
    "reflect": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
            _conv(),
            13,
            [_ints("pads", TF_SAME)],
        ),
        "mode 'reflect'",
    ),
    "channel axis": (
        lambda: _model(
            helper.make_node("Pad", ["x"], ["p"], pads=[0, 1, 0, 0, 0, 0, 1, 1]), _conv(), 10
        ),
        "it pads the batch or channel axis",
    ),
    "negative": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads"], ["p"]),
            _conv(),
            13,
            [_ints("pads", [0, 0, -1, 0, 0, 0, 1, 1])],
        ),
        "negative pads",
    ),
    "pads as an input": (_pad_input_model, "its pads are not a constant input"),
    "two readers": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads"], ["p"]),
            _conv(),
            13,
            [_ints("pads", TF_SAME)],
            outputs=[("y", None), ("p", None)],
        ),
        "several readers or is a graph output",
    ),
    "auto_pad": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads"], ["p"]),
            _conv(auto_pad="SAME_UPPER"),
            13,
            [_ints("pads", TF_SAME)],
        ),
        "auto_pad SAME_UPPER",
    ),
    "pool without counted pads": (
        lambda: _model(
            helper.make_node("Pad", ["x", "pads"], ["p"]),
            helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3]),
            13,
            [_ints("pads", TF_SAME)],
        ),
        "count_include_pad=0",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_pad_that_cannot_fold_is_kept_with_its_reason(case):
    make, reason = REFUSED[case]
    model = make()
    after, record = _cleanup(model)
    assert "Pad" in [n.op_type for n in after.graph.node]
    assert record.stats["pads_folded"] == 0
    assert any("not folded" in s and reason in s for s in record.skipped), record.skipped
