"""Model-zoo CNNs as they were exported at opsets 7-9 (ResNet/SqueezeNet/VGG era), written with
onnx.helper in the old forms: IR 3 with the initializers also listed as graph inputs (opsets 7
and 8; the opset-9 one is at IR 4 and lists only the image, as later exporters wrote it),
BatchNormalization with `spatial`, Dropout with `ratio`, Upsample (scales attribute at opset 7,
an input at 9), Reshape by a shape initializer, Concat, MaxPool, Gemm.

Input "data" [batch, 3, 32, 32]; output "prob" [batch, 10]: Conv-BN-Relu-MaxPool, a residual
pair, a SqueezeNet-style fire module (two expand convs concatenated), an upsampled side branch
pooled back, Dropout, Reshape, Gemm.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OLD_IR = {7: 3, 8: 3, 9: 4}
"""The IR versions the exporters of the time wrote with these opsets."""


def zoo_cnn(opset: int, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, name: str, cin: int, cout: int, k: int, **attrs) -> str:
        weights[f"{name}_w"] = (
            rng.standard_normal((cout, cin, k, k)) * (2 / (k * k * cin)) ** 0.5
        ).astype(np.float32)
        weights[f"{name}_b"] = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        nodes.append(
            helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name, **attrs)
        )
        return name

    def bn(x: str, name: str, c: int) -> str:
        weights[f"{name}_s"] = (0.5 + rng.random(c)).astype(np.float32)
        weights[f"{name}_o"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        weights[f"{name}_m"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        weights[f"{name}_v"] = (0.5 + rng.random(c)).astype(np.float32)
        extra = {"spatial": 1} if opset < 9 else {}
        inputs = [x] + [f"{name}_{p}" for p in "somv"]
        nodes.append(
            helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-5, **extra)
        )
        return name

    def op(op_type: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    x = conv("data", "conv1", 3, 32, 3, pads=[1] * 4)
    x = op("Relu", [bn(x, "bn1", 32)], "relu1")
    x = op("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    r = op("Relu", [bn(conv(x, "res2a", 32, 32, 3, pads=[1] * 4), "bn2a", 32)], "relu2a")
    r = bn(conv(r, "res2b", 32, 32, 3, pads=[1] * 4), "bn2b", 32)
    x = op("Relu", [op("Add", [x, r], "add2")], "relu2")
    squeeze = op("Relu", [conv(x, "fire_s", 32, 16, 1)], "fire_s_relu")
    e1 = op("Relu", [conv(squeeze, "fire_e1", 16, 32, 1)], "fire_e1_relu")
    e3 = op("Relu", [conv(squeeze, "fire_e3", 16, 32, 3, pads=[1] * 4)], "fire_e3_relu")
    x = op("Concat", [e1, e3], "fire_cat", axis=1)
    x = op("MaxPool", [x], "pool3", kernel_shape=[2, 2], strides=[2, 2])
    side = conv(x, "side", 64, 64, 1, strides=[2, 2])
    if opset >= 9:
        weights["up_scales"] = np.array([1, 1, 2, 2], np.float32)
        side = op("Upsample", [side, "up_scales"], "up", mode="nearest")
    else:
        side = op("Upsample", [side], "up", mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])
    x = op("Relu", [op("Add", [x, side], "side_add")], "side_relu")
    x = op("AveragePool", [x], "pool4", kernel_shape=[8, 8])
    x = op("Dropout", [x], "drop", ratio=0.5)
    weights["flat_shape"] = np.array([0, -1], np.int64)
    x = op("Reshape", [x, "flat_shape"], "flat")
    weights["fc_w"] = (0.2 * rng.standard_normal((10, 64))).astype(np.float32)
    weights["fc_b"] = (0.1 * rng.standard_normal(10)).astype(np.float32)
    op("Gemm", [x, "fc_w", "fc_b"], "prob", transB=1)
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 32, 32])]
    if OLD_IR[opset] < 4:  # IR 3: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        nodes,
        "zoo",
        inputs,
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="zoo"
    )
    model.ir_version = OLD_IR[opset]
    onnx.checker.check_model(model, full_check=True)
    return model
