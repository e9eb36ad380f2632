"""A Paddle-style export (paddle2onnx): opset 12, every weight in a `Constant` node, nodes named
`p2o.<Op>.<n>`, and the ops whose opset-13 forms differ (Squeeze axes, a Softmax over a
non-last axis) that onnx's version converter rewrites into unnamed nodes.

Input "x" [batch, 3, size, size]; output "logits" [batch, 10]: three Conv-BN-Relu (two strided),
an attention-like pooling (Reshape -> Softmax over channels -> MatMul by a constant), Squeeze,
Gemm.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.count: dict[str, int] = {}

    def name(self, op_type: str) -> str:
        number = self.count.get(op_type, 0)
        self.count[op_type] = number + 1
        return f"p2o.{op_type}.{number}"

    def const(self, array: np.ndarray) -> str:
        name = self.name("Constant")
        value = numpy_helper.from_array(array)
        self.nodes.append(helper.make_node("Constant", [], [f"{name}.out"], name=name, value=value))
        return f"{name}.out"

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        name = self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [f"{name}.out"], name=name, **attrs))
        return f"{name}.out"


def paddle_cnn(seed: int = 0, batch: int | str = "N", size: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = _Builder()

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    x = "x"
    widths = [3, 32, 32, 64]
    for i in range(3):
        cin, cout = widths[i], widths[i + 1]
        w = b.const(normal(cout, cin, 3, 3, scale=(2 / (9 * cin)) ** 0.5))
        x = b.op("Conv", [x, w], pads=[1] * 4, strides=[2 if i else 1] * 2)
        bn = [
            b.const((0.5 + rng.random(cout)).astype(np.float32)),
            b.const(normal(cout, scale=0.1)),
            b.const(normal(cout, scale=0.1)),
            b.const((0.5 + rng.random(cout)).astype(np.float32)),
        ]
        x = b.op("BatchNormalization", [x, *bn], epsilon=1e-5)
        x = b.op("Relu", [x])
    positions = (size // 4) ** 2
    flat = b.op("Reshape", [x, b.const(np.array([0, 64, positions], np.int64))])
    attention = b.op("Softmax", [flat], axis=1)  # over channels: opset 13 rewrites it
    pooled = b.op("MatMul", [attention, b.const(normal(positions, 1, scale=0.5))])
    pooled = b.op("Squeeze", [pooled], axes=[2])
    logits = b.op("Gemm", [pooled, b.const(normal(64, 10, scale=0.2)), b.const(normal(10))])
    b.nodes[-1].output[0] = "logits"
    del logits
    graph = helper.make_graph(
        b.nodes,
        "paddle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 12)], producer_name="PaddlePaddle"
    )
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model
