"""benchmarks/agreement_vs_snr.py: the margin and per-photo breakdown of top-1 agreement."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.agreement_vs_snr import (
    MARGIN_EDGES,
    agreement_by,
    breakdown,
    float_activations,
    margin_bins,
    margins,
    render,
)


def test_margins_are_top1_minus_top2():
    logits = np.array([[0.0, 3.0, 2.5], [1.0, -1.0, 4.0], [2.0, 2.0, 0.0]])
    np.testing.assert_allclose(margins(logits), [0.5, 3.0, 0.0])


def test_margin_bins_put_edges_in_the_upper_bin():
    # a margin equal to an edge starts that edge's bin; below the first edge is bin 0
    values = [0.0, MARGIN_EDGES[0], 0.7, MARGIN_EDGES[-1], 9.0]
    logits = np.array([[0.0, m] for m in values])
    assert margin_bins(logits).tolist() == [0, 1, 2, len(MARGIN_EDGES), len(MARGIN_EDGES)]


def test_agreement_by_group():
    reference = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    other = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    groups = np.array(["a", "a", "b", "b"])
    assert agreement_by(groups, reference, other, ["a", "b", "c"]) == [0.5, 1.0, None]


def test_breakdown_and_render_show_where_disagreements_are():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((40, 10)) * 3
    confident = margins(reference) >= 1.0
    # the student flips exactly the near-tie crops: their top-2 classes swap
    student = reference.copy()
    order = np.argsort(reference, axis=1)
    for row in np.flatnonzero(~confident):
        first, second = order[row, -1], order[row, -2]
        student[row, [first, second]] = student[row, [second, first]]
    names = np.array(["x", "y"] * 20)
    parts = breakdown(reference, {"quant": student}, names, ("x", "y"))
    assert sum(parts["bin_counts"]) == 40
    by_bin = parts["by_bin"]["quant"]
    low_bins = sum(1 for edge in MARGIN_EDGES if edge <= 1.0)
    assert all(v == 0.0 for v in by_bin[:low_bins] if v is not None)
    assert all(v == 1.0 for v in by_bin[low_bins:] if v is not None)
    expected = [float(confident[names == photo].mean()) for photo in ("x", "y")]
    assert parts["by_photo"]["quant"] == expected
    lines = [("new crops", 20.0, float(confident.mean()), {"Gaussian noise": [0.9] * 10}, parts)]
    text = render(lines, SimpleNamespace(calib_samples=1024, eval_samples=40))
    assert "| fp32 margin | < 0.25 |" in text
    near_x = float((margins(reference) < 0.5)[names == "x"].mean())
    assert f"| x | 20 | {100 * near_x:.1f} % | {100 * expected[0]:.1f} % |" in text
    assert "| photo | crops | near-ties | `quant` |" in text
    assert f"| `quant` | {100 * confident.mean():.1f} % |" in text


def _qdq_model() -> onnx.ModelProto:
    """x -> Q/DQ (uint8, scale 0.1, zero point 10) -> Mul by an int8 weight's DQ -> y."""
    init = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(10, np.uint8), "z"),
        numpy_helper.from_array(np.array([3, -5], np.int8), "w"),
        numpy_helper.from_array(np.array(0.5, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq"),
        helper.make_node("Mul", ["xd", "wd"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                       [2])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_float_activations_clip_instead_of_rounding_and_keep_int8_weights():
    original = _qdq_model()
    model = float_activations(original)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") == 0 and ops.count("Clip") == 1
    assert ops.count("DequantizeLinear") == 1  # the weight's
    assert len(original.graph.node) == 4  # the input model is not changed
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rounded = ort.InferenceSession(original.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    # 1.234 is not on the 0.1 grid: rounding moves it, the clip does not; 30 is past the top
    # of the uint8 range (0.1 * (255 - 10) = 24.5) and -5 below its bottom (-1.0)
    for x, expected in (([1.234, 1.234], [1.851, -3.085]), ([30.0, -5.0], [36.75, 2.5])):
        feed = {"x": np.array(x, np.float32)}
        np.testing.assert_allclose(session.run(None, feed)[0], expected, rtol=1e-6)
    assert not np.allclose(rounded.run(None, {"x": np.array([1.234] * 2, np.float32)})[0],
                           [1.851, -3.085])


def test_float_activations_default_zero_point_and_per_channel_pairs():
    model = _qdq_model()
    q, dq = model.graph.node[0], model.graph.node[1]
    del q.input[2], dq.input[2]  # no zero point: uint8 with zero point 0, range [0, 25.5]
    unrounded = float_activations(model)
    session = ort.InferenceSession(unrounded.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": np.array([-3.0, 40.0], np.float32)})[0]
    np.testing.assert_allclose(got, [0.0 * 1.5, 25.5 * -2.5], rtol=1e-6)
    per_channel = _qdq_model()
    per_channel.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "s"))
    untouched = float_activations(per_channel)
    assert [n.op_type for n in untouched.graph.node] == [n.op_type for n in
                                                          per_channel.graph.node]
