"""Random small CNN and MLP graphs built with ``onnx.helper`` from a recipe, for fuzzing.

A recipe is a list of ``(block, params)`` steps; ``build_cnn`` / ``build_mlp`` turn it into a
checked model whose weights come from a seeded generator. Every block keeps the graph valid
whatever its parameters (a block that does not fit the current shape degrades to a Relu), so a
recipe drawn at random always gives a model ORT runs.

CNN blocks: conv (plain, grouped or depthwise; explicit pads, SAME_UPPER or dilation 2; optional
bias, BatchNormalization and Relu/Clip), deconv (ConvTranspose stride 2, optional BN, MaxPool
back), residual (Conv+BN then Add with the block input), branches (two convs concatenated), pool
(MaxPool / AveragePool), transpose (to NHWC and back), reshape (flatten the spatial dims and
back), scale (Mul by a per-channel constant). Heads: GlobalAveragePool/Flatten/Gemm or
Flatten/Gemm on the whole map. MLP blocks: dense (Gemm with transB, alpha/beta, bias shapes and
BN variants, or MatMul+Add; Relu/Clip), residual, branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.export import MAX_IR_VERSION

CNN_BLOCKS = ("conv", "deconv", "residual", "branches", "pool", "transpose", "reshape", "scale")
MLP_BLOCKS = ("dense", "residual", "branches")
WIDTHS = (8, 16, 24, 32)


@dataclass
class _Builder:
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        scale = 1.0 / np.sqrt(max(fan_in, 1))
        return self.const(base, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def activation(self, x: str, kind: int) -> str:
        if kind == 1:
            return self.node("Relu", [x])
        if kind == 2:
            lo = self.const("lo", np.array(0.0, np.float32))
            hi = self.const("hi", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi])
        return x

    def batchnorm(self, x: str, channels: int) -> str:
        rng = self.rng
        params = [
            (0.5 + rng.random(channels)).astype(np.float32),
            (0.1 * rng.standard_normal(channels)).astype(np.float32),
            (0.2 * rng.standard_normal(channels)).astype(np.float32),
            (0.5 + rng.random(channels)).astype(np.float32),
        ]
        names = [self.const(f"bn{i}_", p) for i, p in enumerate(params)]
        return self.node("BatchNormalization", [x, *names])


def _conv(b: _Builder, x: str, c_in: int, c_out: int, kernel: int, groups: int, p: dict) -> str:
    w = b.weight("w", (c_out, c_in // groups, kernel, kernel), c_in // groups * kernel * kernel)
    inputs = [x, w]
    if p.get("bias", True):
        inputs.append(b.const("b", (0.1 * b.rng.standard_normal(c_out)).astype(np.float32)))
    variant = p.get("variant", 0) if kernel > 1 else 0
    attrs = {"group": groups, "kernel_shape": [kernel, kernel]}
    if variant == 1:
        attrs["auto_pad"] = "SAME_UPPER"
    elif variant == 2:
        attrs.update(dilations=[2, 2], pads=[kernel - 1] * 4)
    else:
        attrs["pads"] = [(kernel - 1) // 2] * 4
    y = b.node("Conv", inputs, **attrs)
    if p.get("bn", False):
        y = b.batchnorm(y, c_out)
    return b.activation(y, p.get("act", 1))


def _cnn_block(b: _Builder, x: str, shape: list[int], block: str, p: dict) -> str:
    c, h, w = shape
    if block == "conv":
        groups = {0: 1, 1: c, 2: 2 if c % 2 == 0 else 1}[p.get("groups", 0)]
        c_out = c * p.get("multiplier", 1) if groups == c else WIDTHS[p.get("width", 1)]
        if groups == 2 and c_out % 2:
            groups = 1
        shape[0] = c_out
        return _conv(b, x, c, c_out, p.get("kernel", 3), groups, p)
    if block == "deconv":  # ConvTranspose doubles H and W, MaxPool halves them again
        c_out = WIDTHS[p.get("width", 0)]
        w_t = b.weight("wt", (c, c_out, 2, 2), c * 4)
        y = b.node("ConvTranspose", [x, w_t], kernel_shape=[2, 2], strides=[2, 2])
        y = b.batchnorm(y, c_out) if p.get("bn", False) else y
        shape[0] = c_out
        return b.node(
            "MaxPool", [b.activation(y, p.get("act", 1))], kernel_shape=[2, 2], strides=[2, 2]
        )
    if block == "residual":
        y = _conv(b, x, c, c, 3, 1, {**p, "act": 0})
        return b.activation(b.node("Add", [y, x]), 1)
    if block == "branches":
        left = _conv(b, x, c, WIDTHS[p.get("width", 0)], 1, 1, p)
        right = _conv(b, x, c, c, 3, c, {**p, "bias": False})
        shape[0] = WIDTHS[p.get("width", 0)] + c
        return b.node("Concat", [left, right], axis=1)
    if block == "pool" and h >= 4 and p.get("max", True):
        shape[1], shape[2] = h // 2, w // 2
        return b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    if block == "pool":
        return b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4)
    if block == "transpose":
        nhwc = b.node("Transpose", [x], perm=[0, 2, 3, 1])
        return b.node("Transpose", [b.activation(nhwc, 1)], perm=[0, 3, 1, 2])
    if block == "reshape":
        flat = b.node("Reshape", [x, b.const("shape", np.array([0, c, -1], np.int64))])
        return b.node("Reshape", [flat, b.const("shape", np.array([-1, c, h, w], np.int64))])
    if block == "scale":
        factor = (0.5 + b.rng.random((1, c, 1, 1))).astype(np.float32)
        return b.node("Mul", [x, b.const("scale", factor)])
    return b.node("Relu", [x])


def _finish(b: _Builder, x_info, out: str, classes: int, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes,
        "fuzz",
        [x_info],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_cnn(
    recipe: list[tuple[str, dict]],
    *,
    seed: int,
    channels: int = 3,
    size: int = 8,
    head: str = "pool",
    opset: int = 17,
    dynamic: bool = False,
) -> onnx.ModelProto:
    """Input "x" [N, channels, size, size] -> the recipe's blocks -> head -> "logits" [N, 10].

    `dynamic`: the input's spatial dims are "H" and "W" (fed `size`) under the pooling head.
    """
    b = _Builder(np.random.default_rng(seed))
    shape = [channels, size, size]
    x = "x"
    for block, params in recipe:
        x = _cnn_block(b, x, shape, block, params)
    c, h, w = shape
    if head == "pool":
        x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
        features = c
    else:
        x = b.node("Flatten", [x])
        features = c * h * w
    fc = b.weight("fc", (10, features), features)
    bias = b.const("fcb", (0.1 * b.rng.standard_normal(10)).astype(np.float32))
    out = b.node("Gemm", [x, fc, bias], transB=1)
    spatial = ["H", "W"] if dynamic and head == "pool" else [size, size]
    info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *spatial])
    return _finish(b, info, out, 10, opset)


def _gemm(b: _Builder, x: str, f_in: int, f_out: int, variant: int) -> str:
    """Gemm with transB=1 and a bias vector (0), transB=0, alpha 0.5 and a [1, n] bias (1),
    beta 2 and a one-element bias (2), or followed by BatchNormalization (3)."""
    trans_b = variant != 1
    w = b.weight("w", (f_out, f_in) if trans_b else (f_in, f_out), f_in)
    bias_shape = {1: (1, f_out), 2: (1,)}.get(variant, (f_out,))
    bias = b.const("b", (0.1 * b.rng.standard_normal(bias_shape)).astype(np.float32))
    attrs = {"transB": int(trans_b), "alpha": 0.5 if variant == 1 else 1.0}
    attrs["beta"] = 2.0 if variant == 2 else 1.0
    y = b.node("Gemm", [x, w, bias], **attrs)
    return b.batchnorm(y, f_out) if variant == 3 else y


def _dense(b: _Builder, x: str, f_in: int, f_out: int, p: dict) -> str:
    if p.get("gemm", True):
        y = _gemm(b, x, f_in, f_out, p.get("variant", 0))
    else:
        w = b.weight("w", (f_in, f_out), f_in)
        bias = b.const("b", (0.1 * b.rng.standard_normal(f_out)).astype(np.float32))
        y = b.node("Add", [b.node("MatMul", [x, w]), bias])
    return b.activation(y, p.get("act", 1))


def build_mlp(
    recipe: list[tuple[str, dict]], *, seed: int, features: int = 12, opset: int = 17
) -> onnx.ModelProto:
    """Input "x" [N, features] -> the recipe's blocks -> MatMul head -> "logits" [N, 10]."""
    b = _Builder(np.random.default_rng(seed))
    x, width = "x", features
    for block, params in recipe:
        if block == "dense":
            out = WIDTHS[params.get("width", 1)]
            x, width = _dense(b, x, width, out, params), out
        elif block == "residual":
            x = b.activation(b.node("Add", [_dense(b, x, width, width, params), x]), 1)
        else:
            out = WIDTHS[params.get("width", 0)]
            left = _dense(b, x, width, out, params)
            right = _dense(b, x, width, width, {**params, "gemm": not params.get("gemm", True)})
            x, width = b.node("Concat", [left, right], axis=1), out + width
    head = b.weight("head", (width, 10), width)
    out = b.node("MatMul", [x, head])
    info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])
    return _finish(b, info, out, 10, opset)
