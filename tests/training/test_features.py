"""The feature term's pairing: student channels against the teacher channels they track, with
the factor between them (equalized and pruned tensors), and the tensors it considers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxopt.training.features import candidate_features, match_feature, narrowed, spread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def teacher_value():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 12, 9, 9)).astype(np.float32)


def test_equalized_channels_pair_one_to_one_with_their_factors(teacher_value):
    scales = np.linspace(0.01, 300.0, 12).astype(np.float32)  # what channel equalization does
    student = teacher_value * scales.reshape(1, -1, 1, 1)
    match = match_feature("t", student, teacher_value)
    assert match is not None and match.all_channels
    np.testing.assert_array_equal(match.teacher_channels, np.arange(12))
    np.testing.assert_allclose(match.factors, 1 / scales, rtol=1e-5)
    np.testing.assert_allclose(match.target(teacher_value), student, rtol=1e-4, atol=1e-5)


def test_pruned_channels_pair_with_the_teacher_channels_they_kept(teacher_value):
    kept = np.array([0, 3, 4, 8, 11])
    student = 2.0 * teacher_value[:, kept] + 0.01
    match = match_feature("t", student, teacher_value)
    assert match is not None
    np.testing.assert_array_equal(match.student_channels, np.arange(5))
    np.testing.assert_array_equal(match.teacher_channels, kept)
    np.testing.assert_allclose(match.factors, 0.5, rtol=1e-2)
    assert match.target(teacher_value).shape == student.shape


def test_channels_that_track_nothing_are_left_out(teacher_value):
    student = teacher_value.copy()
    noise = np.random.default_rng(1).standard_normal(student[:, :3].shape)
    student[:, :3] = noise.astype(np.float32)
    student[:, 3] = 0.0  # a dead channel
    match = match_feature("t", student, teacher_value)
    assert match is not None and not match.all_channels
    np.testing.assert_array_equal(match.student_channels, np.arange(4, 12))
    picked = match.student(torch.from_numpy(student))
    assert tuple(picked.shape) == (4, 8, 9, 9)


def test_a_tensor_that_mostly_tracks_nothing_is_dropped(teacher_value):
    noise = np.random.default_rng(2).standard_normal(teacher_value.shape).astype(np.float32)
    assert match_feature("t", noise, teacher_value) is None


def test_spread_keeps_the_last_and_spaces_the_rest():
    items = list(range(10))
    assert spread(items, 4) == [0, 3, 6, 9]
    assert spread(items, 0) == []
    assert spread(items[:3], 4) == [0, 1, 2]


def _conv_chain(channels: int) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [channels, 3, 3, 3],
                            rng.standard_normal((channels, 3, 3, 3)).ravel().tolist())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [4, channels, 1, 1],
                            rng.standard_normal((4, channels, 1, 1)).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"])],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_candidates_are_shared_names_with_as_many_or_fewer_channels():
    teacher = _conv_chain(8)
    assert candidate_features(_conv_chain(5), teacher) == ["h", "r"]
    assert candidate_features(teacher, teacher) == ["h", "r"]
    assert candidate_features(teacher, _conv_chain(5)) == []  # more channels than the teacher


def test_narrowed_names_what_pruning_thinned():
    teacher = _conv_chain(8)
    assert narrowed(_conv_chain(5), teacher) == ["h", "r"]
    assert narrowed(teacher, teacher) == []
