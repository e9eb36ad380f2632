"""Layer-level oddities real exports contain, each a valid model ORT 1.31 runs: 1-D and 3-D
convolutions, a weight shared by two Convs or exposed as a graph output, a Resize with an
empty roi, an int64 token input, a float64 model, a Split whose halves go different ways, an
explicit Dropout training_mode=false input, and MaxPool indices as a graph output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.small_cnn import cnn_weights, finish, small_cnn, value


def _normal(rng: np.random.Generator, *shape: int, scale: float = 0.2) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _inits(**arrays: np.ndarray) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(a, name) for name, a in arrays.items()]


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return model


def conv1d(seed: int = 0) -> onnx.ModelProto:
    """Conv1d-BN-Relu-Conv1d over x [N, 4, T], mean over time, MatMul head."""
    rng = np.random.default_rng(seed)
    inits = _inits(
        w1=_normal(rng, 32, 4, 3), b1=_normal(rng, 32), w2=_normal(rng, 32, 32, 3, scale=0.1),
        s=(0.5 + rng.random(32)).astype(np.float32), bb=_normal(rng, 32), m=_normal(rng, 32),
        v=(0.5 + rng.random(32)).astype(np.float32), fc=_normal(rng, 32, 5),
    )  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["g"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["g", "fc"], ["y"]),
    ]
    return finish(nodes, [value("x", ["N", 4, "T"])], [value("y", ["N", 5])], inits)


def conv3d(seed: int = 0) -> onnx.ModelProto:
    """Two 3-D convolutions over x [N, 2, 4, 4, 4] and a global pool."""
    rng = np.random.default_rng(seed)
    inits = _inits(
        w1=_normal(rng, 32, 2, 3, 3, 3), w2=_normal(rng, 32, 32, 1, 1, 1, scale=0.1),
        b2=_normal(rng, 32),
    )  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 6),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("GlobalAveragePool", ["c2"], ["y"]),
    ]
    return finish(nodes, [value("x", ["N", 2, 4, 4, 4])], [value("y", ["N", 32, 1, 1, 1])], inits)


def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """Two Convs read the same weight and bias initializers; a BN follows the second."""
    w = cnn_weights(seed)
    nodes = [
        helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "res.w", "res.b"], ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "res.w", "res.b"], ["c3"], pads=[1] * 4),
        helper.make_node(
            "BatchNormalization", ["c3", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b3"]
        ),
        helper.make_node("Relu", ["b3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1),
    ]
    return finish(nodes, [value("x", ["N", 3, 8, 8])], [value("y", ["N", 10])], _inits(**w))


def weight_as_output(seed: int = 0) -> onnx.ModelProto:
    """The CNN also outputs its residual Conv's weight initializer."""
    model = small_cnn(seed)
    model.graph.output.append(value("res.w", [32, 32, 3, 3]))
    return _checked(model)


def resize_empty_roi(seed: int = 0) -> onnx.ModelProto:
    """A nearest 2x Resize (empty roi initializer, constant scales) inside the residual block."""
    model = small_cnn(seed)
    graph = model.graph
    graph.initializer.extend(
        _inits(roi=np.zeros(0, np.float32), scales=np.array([1, 1, 2, 2], np.float32))
    )
    for node in graph.node:
        if node.op_type in ("Conv", "Add") and "r1" in node.input:
            node.input[list(node.input).index("r1")] = "up"
    graph.node.insert(3, helper.make_node("Resize", ["r1", "roi", "scales"], ["up"]))
    return _checked(model)


def gather_embedding(seed: int = 0) -> onnx.ModelProto:
    """int64 token ids [N, T] -> Gather from an embedding table -> MLP -> [N, T, 8]."""
    rng = np.random.default_rng(seed)
    inits = _inits(
        emb=_normal(rng, 50, 32), w=_normal(rng, 32, 32), b=_normal(rng, 32),
        head=_normal(rng, 32, 8),
    )  # fmt: skip
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "head"], ["y"]),
    ]
    ids = value("ids", ["N", "T"], TensorProto.INT64)
    return finish(nodes, [ids], [value("y", ["N", "T", 8])], inits)


def double_mlp(seed: int = 0) -> onnx.ModelProto:
    """An MLP entirely in float64."""
    rng = np.random.default_rng(seed)
    inits = _inits(
        w1=rng.standard_normal((12, 32)), b1=rng.standard_normal(32),
        w2=rng.standard_normal((32, 4)),
    )  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    double = TensorProto.DOUBLE
    return finish(nodes, [value("x", ["N", 12], double)], [value("y", ["N", 4], double)], inits)


def split_halves(seed: int = 0) -> onnx.ModelProto:
    """The stem's 32 channels Split in two: one half feeds the Conv, both are concatenated back
    for the residual Add."""
    model = small_cnn(seed)
    graph = model.graph
    rng = np.random.default_rng(seed + 4)
    graph.initializer.extend(_inits(sp=np.array([16, 16], np.int64)))
    for tensor in graph.initializer:
        if tensor.name == "res.w":
            tensor.CopyFrom(numpy_helper.from_array(_normal(rng, 32, 16, 3, 3, scale=0.1), "res.w"))
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] == "r1":
            node.input[0] = "half0"
        if node.op_type == "Add":
            node.input[1] = "cat"
    graph.node.insert(3, helper.make_node("Split", ["r1", "sp"], ["half0", "half1"], axis=1))
    graph.node.insert(4, helper.make_node("Concat", ["half0", "half1"], ["cat"], axis=1))
    return _checked(model)


def dropout_inference(seed: int = 0) -> onnx.ModelProto:
    """A Dropout with explicit ratio and training_mode=false inputs after the stem."""
    model = small_cnn(seed)
    graph = model.graph
    graph.initializer.extend(_inits(ratio=np.array(0.5, np.float32), train=np.array(False)))
    for node in graph.node:
        if node.op_type == "Relu" and node.input[0] == "b1":
            node.output[0] = "pre"
    graph.node.insert(3, helper.make_node("Dropout", ["pre", "ratio", "train"], ["r1"]))
    return _checked(model)


def maxpool_indices(seed: int = 0) -> onnx.ModelProto:
    """A MaxPool before the head whose Indices output is a second graph output."""
    model = small_cnn(seed)
    graph = model.graph
    for node in graph.node:
        if node.op_type == "GlobalAveragePool":
            node.input[0] = "mp"
    pool = helper.make_node("MaxPool", ["r2"], ["mp", "idx"], kernel_shape=[2, 2], strides=[2, 2])
    graph.node.insert(len(graph.node) - 3, pool)
    graph.output.append(value("idx", ["N", 32, 4, 4], TensorProto.INT64))
    return _checked(model)


LAYER_CASES: dict[str, Callable[..., onnx.ModelProto]] = {
    "conv1d": conv1d,
    "conv3d": conv3d,
    "shared_weight": shared_weight,
    "weight_as_output": weight_as_output,
    "resize_empty_roi": resize_empty_roi,
    "gather_embedding": gather_embedding,
    "double_mlp": double_mlp,
    "split_halves": split_halves,
    "dropout_inference": dropout_inference,
    "maxpool_indices": maxpool_indices,
}
