"""The small CNN the hostile-model tests start from, and ``onnx.helper`` shortcuts.

``small_cnn``: Conv-BN-Relu, a residual Conv + Add, GlobalAveragePool, Flatten, Gemm (input "x"
[N, 3, 8, 8], output "logits" [N, 10]), 32 channels so that pruning to multiples of 16 applies.
``opset_cnn`` is the same network written at opset 11 and converted to any later opset.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.export import MAX_IR_VERSION

FLOAT = TensorProto.FLOAT


def finish(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    domains: dict[str, int] | None = None,
    name: str = "hostile",
) -> onnx.ModelProto:
    """A checked model with the default-domain `opset` and the extra opset `domains`."""
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="tests.zoo.hostile")
    model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def value(name: str, shape: list, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def cnn_weights(seed: int = 0, channels: int = 32, classes: int = 10) -> dict[str, np.ndarray]:
    """Weights of ``small_cnn``: a stem Conv+BN, a residual Conv+BN, a Gemm head."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    c = channels
    return {
        "stem.w": normal(c, 3, 3, 3, scale=0.3),
        "stem.b": normal(c, scale=0.1),
        "bn.scale": (0.5 + rng.random(c)).astype(np.float32),
        "bn.bias": normal(c, scale=0.1),
        "bn.mean": normal(c, scale=0.2),
        "bn.var": (0.5 + rng.random(c)).astype(np.float32),
        "res.w": normal(c, c, 3, 3, scale=0.1),
        "res.b": normal(c, scale=0.1),
        "fc.w": normal(classes, c, scale=0.2),
        "fc.b": normal(classes, scale=0.1),
    }


def cnn_nodes(prefix: str = "") -> list[onnx.NodeProto]:
    """Conv-BN-Relu -> Conv + residual Add -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    p = prefix
    return [
        helper.make_node("Conv", ["x", f"{p}stem.w", f"{p}stem.b"], ["c1"], pads=[1] * 4),
        helper.make_node(
            "BatchNormalization",
            ["c1", f"{p}bn.scale", f"{p}bn.bias", f"{p}bn.mean", f"{p}bn.var"],
            ["b1"],
        ),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", f"{p}res.w", f"{p}res.b"], ["c2"], pads=[1] * 4),
        helper.make_node("Add", ["c2", "r1"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", f"{p}fc.w", f"{p}fc.b"], ["logits"], transB=1),
    ]


def small_cnn(
    seed: int = 0, *, opset: int = 17, batch="N", size: int | str = 8, channels: int = 32
) -> onnx.ModelProto:
    """The reference CNN: input x [batch, 3, size, size], output logits [batch, 10]."""
    weights = cnn_weights(seed, channels)
    return finish(
        cnn_nodes(),
        [value("x", [batch, 3, size, size])],
        [value("logits", [batch, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
        opset=opset,
    )


def opset_cnn(opset: int, seed: int = 0) -> onnx.ModelProto:
    """A CNN with ops whose signature changed across opsets (Clip, Squeeze, ReduceMean, MaxPool),
    written at opset 11 and converted to `opset` with onnx.version_converter."""
    weights = cnn_weights(seed)
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits += [
        numpy_helper.from_array(np.array(0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6, np.float32), "hi"),
    ]
    nodes = cnn_nodes()[:6]
    nodes[2] = helper.make_node("Clip", ["b1", "lo", "hi"], ["r1"])
    nodes += [
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["p2"], ["gap"], axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["gap"], ["flat"], axes=[2, 3]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    model = finish(
        nodes, [value("x", ["N", 3, 8, 8])], [value("logits", ["N", 10])], inits, opset=11
    )
    if opset != 11:
        model = onnx.version_converter.convert_version(model, opset)
        model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose initializers are Constant nodes (Paddle / older PyTorch style)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    nodes = [*constants, *graph.node]
    del graph.initializer[:]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(result, full_check=True)
    return result
