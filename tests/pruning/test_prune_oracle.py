"""The rewrite's correctness oracle on hypothesis-generated graphs.

Without reconstruction, a pruned model must compute what the original computes when every
consumer's input slices of the removed channels are zeroed (up to float rounding): removed
channels only ever reach the outputs through consumers, whatever couples them on the way.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analyses.channel_groups import analyze_channel_groups
from onnxopt.ir.graph import GraphIndex
from onnxopt.pruning.rewrite import apply_keep, consumer_masks
from onnxopt.pruning.select import ensure_ranges

SIDE = 6
BLOCKS = (
    "deconv",
    "slice",
    "conv",
    "residual",
    "concat",
    "depthwise",
    "se",
    "split",
    "pool",
    "affine",
    "opaque",
    "reshape",
)
HEADS = ("gap_gemm", "flatten_gemm", "matmul")
ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu", "HardSwish", "Clip")


class RandomNet:
    """Builds a random NCHW network (input 'x' 2x3x6x6, output 'y') from a list of blocks."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, dtype=np.float32) -> str:
        name = self.fresh("k")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        name = self.fresh(op_type.lower())
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def width(self) -> int:
        return int(self.rng.integers(3, 11))

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1) -> str:
        w = self.const(self.rng.standard_normal((c_out, c_in // group, k, k)) / np.sqrt(c_in * k))
        inputs = [x, w] + (
            [self.const(self.rng.standard_normal(c_out) * 0.1)] if self.rng.random() < 0.7 else []
        )
        return self.op("Conv", inputs, pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [
            r.uniform(0.5, 1.5, c),
            r.normal(0, 0.1, c),
            r.normal(0, 0.1, c),
            r.uniform(0.5, 2, c),
        ]
        return self.op("BatchNormalization", [x, *map(self.const, params)])

    def act(self, x: str) -> str:
        kind = ACTIVATIONS[int(self.rng.integers(len(ACTIVATIONS)))]
        if kind == "Clip":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)])
        return self.op(kind, [x])

    def block(self, kind: str, x: str, c: int) -> tuple[str, int]:
        if kind == "conv":
            out = self.width()
            return self.act(self.bn(self.conv(x, c, out, int(self.rng.choice([1, 3]))), out)), out
        if kind == "residual":
            y = self.conv(self.act(self.conv(x, c, c)), c, c)
            return self.op("Relu", [self.op("Add", [x, self.bn(y, c)])]), c
        if kind == "concat":
            a, b = self.width(), self.width()
            left = self.conv(x, c, a, 1)
            right = self.act(self.conv(self.conv(x, c, b, 1), b, b, 3, group=b))
            return self.op("Concat", [left, right], axis=1), a + b
        if kind == "depthwise":
            return self.act(self.bn(self.conv(x, c, c, 3, group=c), c)), c
        if kind == "se":
            r = max(1, c // 2)
            s = self.conv(
                self.op("Relu", [self.conv(self.op("GlobalAveragePool", [x]), c, r, 1)]), r, c, 1
            )
            return self.op("Mul", [x, self.op("Sigmoid", [s])]), c
        if kind == "split":
            first = int(self.rng.integers(1, c)) if c > 1 else 1
            if c == 1:
                return x, c
            sizes = self.const([first, c - first], np.int64)
            a, b = self.op("Split", [x, sizes], 2, axis=1)
            out = self.width()
            return self.op("Concat", [self.conv(a, first, out), b], axis=1), out + c - first
        if kind == "pool":
            return self.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1] * 4), c
        if kind == "affine":
            scaled = self.op("Mul", [x, self.const(self.rng.uniform(0.5, 1.5, (c, 1, 1)))])
            return self.op("Add", [scaled, self.const(self.rng.normal(0, 0.1, (1, c, 1, 1)))]), c
        if kind == "opaque":
            return self.op("Softmax", [x], axis=1), c
        if kind == "deconv":
            out = self.width()
            w = self.const(self.rng.standard_normal((c, out, 3, 3)) / np.sqrt(c * 3))
            y = self.op(
                "ConvTranspose", [x, w, self.const(self.rng.normal(0, 0.1, out))], pads=[1] * 4
            )
            return self.act(y), out
        if kind == "slice":
            starts, ends = self.const([0, 0], np.int64), self.const([2**31, SIDE], np.int64)
            return self.op("Slice", [x, starts, ends, self.const([1, 3], np.int64)]), c
        flat = self.op("Reshape", [x, self.const([0, c, -1], np.int64)])
        return self.op("Reshape", [flat, self.const([0, c, SIDE, SIDE], np.int64)]), c

    def head(self, kind: str, x: str, c: int) -> None:
        classes = 4
        if kind == "gap_gemm":
            flat = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
            w = self.const(self.rng.standard_normal((classes, c)))
            self.nodes.append(
                helper.make_node("Gemm", [flat, w, self.const(np.zeros(classes))], ["y"], transB=1)
            )
        elif kind == "flatten_gemm":
            flat = self.op("Flatten", [x], axis=1)
            w = self.const(self.rng.standard_normal((c * SIDE * SIDE, classes)) * 0.1)
            self.nodes.append(helper.make_node("Gemm", [flat, w], ["y"]))
        else:
            pooled = self.op(
                "Squeeze", [self.op("GlobalAveragePool", [x]), self.const([2, 3], np.int64)]
            )
            mm = self.op("MatMul", [pooled, self.const(self.rng.standard_normal((c, classes)))])
            self.nodes.append(helper.make_node("Add", [mm, self.const(np.ones(classes))], ["y"]))

    def model(self, blocks: list[str], head: str) -> onnx.ModelProto:
        x, c = self.act(self.conv("x", 3, self.width())), None
        c = int(numpy_helper.to_array(self.inits[0]).shape[0])
        for kind in blocks:
            x, c = self.block(kind, x, c)
        self.head(head, x, c)
        graph = helper.make_graph(
            self.nodes,
            "random_net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, SIDE, SIDE])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        onnx.checker.check_model(model, full_check=True)
        return model


def oracle(model: onnx.ModelProto, masks: dict) -> onnx.ModelProto:
    """`model` with each consumer's weight slices of removed input channels set to zero."""
    zeroed = copy.deepcopy(model)
    index = GraphIndex(zeroed.graph)
    inits = {t.name: t for t in zeroed.graph.initializer}
    for node in zeroed.graph.node:
        key = node.name or node.output[0]
        if key in masks:
            weight_index, axis, removed = masks[key]
            name = node.input[weight_index]
            value = index.constant(name).copy()
            where = [slice(None)] * value.ndim
            where[axis] = removed
            value[tuple(where)] = 0
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return zeroed


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    head=st.sampled_from(HEADS),
    seed=st.integers(0, 2**16),
)
def test_pruned_model_equals_original_with_zeroed_consumer_inputs(blocks, head, seed):
    model = RandomNet(seed).model(blocks, head)
    groups = analyze_channel_groups(model)
    rng = np.random.default_rng(seed + 1)
    keep, scores = {}, {}
    for group in groups.prunable():
        count = int(rng.integers(1, group.size + 1))
        keep[group.id] = np.sort(rng.choice(group.size, count, replace=False))
        scores[group.id] = rng.random(group.size)
    keep = ensure_ranges(keep, scores, groups)
    pruned = apply_keep(copy.deepcopy(model), groups, keep)
    onnx.checker.check_model(pruned, full_check=True)
    x = rng.standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    expected = run(oracle(model, consumer_masks(groups, keep)), x)
    got = run(pruned, x)
    np.testing.assert_allclose(
        got, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(expected).max())
    )
    removed = sum(groups.groups[g].size - len(k) for g, k in keep.items())
    params = lambda m: sum(numpy_helper.to_array(t).size for t in m.graph.initializer)  # noqa: E731
    assert params(pruned) < params(model) or removed == 0


def test_opaque_block_leaves_its_groups_whole():
    model = RandomNet(3).model(["conv", "opaque", "conv"], "gap_gemm")
    groups = analyze_channel_groups(model)
    blocked = [g for g in groups.groups if g.sources and not g.prunable]
    assert any("Softmax" in reason for g in blocked for reason in g.reasons)
