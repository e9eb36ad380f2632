"""Taking the first samples of data: whole batches up to a count, or cut exactly at it."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.data.feeds import feed_rows, feeds_cut_at, feeds_up_to

FEEDS = [{"x": np.full((4, 2), i, np.float32)} for i in range(3)]


def test_feeds_up_to_keeps_whole_batches_and_feeds_cut_at_cuts_the_last():
    assert [feed_rows(f) for f in feeds_up_to(FEEDS, 6)] == [4, 4]
    assert [feed_rows(f) for f in feeds_up_to(FEEDS, None)] == [4, 4, 4]
    cut = list(feeds_cut_at(FEEDS, 6))
    assert [feed_rows(f) for f in cut] == [4, 2]
    assert cut[0] is FEEDS[0]  # a batch taken whole is not copied
    np.testing.assert_array_equal(cut[1]["x"], FEEDS[1]["x"][:2])
    assert [feed_rows(f) for f in feeds_cut_at(FEEDS, 8)] == [4, 4]
    assert [feed_rows(f) for f in feeds_cut_at(FEEDS, 100)] == [4, 4, 4]


def paddle_style_conv() -> onnx.ModelProto:
    """Conv + BatchNormalization whose input has -1 and '?' for its dynamic dims, as
    Paddle2ONNX writes them (the PP-OCR direction classifier: float32[-1,3,'?','?'])."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, 4).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"]),
        ],
        "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_negative_and_question_mark_dims_are_unknown_and_a_paddle_style_input_is_fed():
    import onnxruntime as ort

    from onnxopt.api import optimize
    from onnxopt.data.feeds import check_feed, input_specs

    model = paddle_style_conv()
    specs = input_specs(model)
    assert specs[0].shape == (None, 3, None, None)
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((8, 3, 12, 20)).astype(np.float32)} for _ in range(2)]
    check_feed(feeds[0], specs, "feed")
    result = optimize(model, passes="cleanup", calib=feeds)
    assert result.report.passes[0].status == "changed"  # the BatchNormalization folded
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    folded = ort.InferenceSession(
        result.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        folded.run(None, feeds[1])[0], run.run(None, feeds[1])[0], rtol=1e-5, atol=1e-5
    )
