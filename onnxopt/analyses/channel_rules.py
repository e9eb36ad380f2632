"""The channel table: how each op type moves, couples, creates or consumes channels.

Each rule reads the layouts of a node's inputs from the `Builder`, sets its outputs' layouts,
couples or blocks groups, and records what the rewrite must slice (`NodeRole`). A rule that
meets a configuration it does not handle calls `Builder.refuse` with the reason; an op type
with no rule is opaque too (`Builder.opaque`, see `analyze_channel_groups`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnxopt.analyses.channel_model import Builder, Consumer, Fixup, NodeRole, ParamSlice
from onnxopt.analyses.channel_moves import (
    concat,
    flatten,
    reduce,
    reshape,
    slice_,
    split,
    squeeze,
    transpose,
    unsqueeze,
)
from onnxopt.ir.graph import node_attr
from onnxopt.ir.layers import node_output_channel_axis

Rule = Callable[[Builder, int, onnx.NodeProto], None]


def _has(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def _bias(b: Builder, node: onnx.NodeProto, index: int) -> tuple[bool, bool]:
    """(present, usable): an optional bias input must be a constant when present."""
    if not _has(node, index):
        return False, True
    return True, b.index.is_constant(node.input[index])


# --- layers that create channels ---------------------------------------------------------


def conv(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    w = b.index.constant(node.input[1]) if _has(node, 1) else None
    has_bias, bias_ok = _bias(b, node, 2)
    if w is None or not bias_ok:
        return b.refuse(node, "has a non-constant weight or bias")
    if x is not None and (x.axis != 1 or x.block != 1):
        return b.refuse(node, "reads channels that are not on axis 1")
    out = node.output[0]
    group = int(node_attr(node, "group", 1))
    c_out, c_in = w.shape[0], w.shape[1] * group
    bias = (ParamSlice(2, 0, out),) if has_bias else ()
    if group == 1:
        b.new_source(position, node, c_out, 1, w.ndim)
        params = (ParamSlice(1, 0, out), *bias)
        if x is not None:
            params += (ParamSlice(1, 1, node.input[0]),)
            _consumer(b, position, node, 1, 1)
        b.add_role(NodeRole(position, "conv", params))
    elif group == c_in and c_out == c_in and w.shape[1] == 1:
        if x is None:
            return
        b.set_layout(out, x.moved(1, w.ndim))
        fix = (Fixup("conv_group", out),)
        b.add_role(NodeRole(position, "depthwise", (ParamSlice(1, 0, out), *bias), fix))
    else:
        reason = (
            f"grouped Conv '{b.node_name(node)}' (group={group}) can only lose whole per-group "
            "patterns, which this version does not do"
        )
        b.block(x, reason)
        layout = b.new_source(position, node, c_out, 1, w.ndim)
        b.block(layout, reason)


def conv_transpose(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    w = b.index.constant(node.input[1]) if _has(node, 1) else None
    has_bias, bias_ok = _bias(b, node, 2)
    if w is None or not bias_ok:
        return b.refuse(node, "has a non-constant weight or bias")
    if int(node_attr(node, "group", 1)) != 1:
        return b.refuse(node, "is grouped")
    if x is not None and (x.axis != 1 or x.block != 1):
        return b.refuse(node, "reads channels that are not on axis 1")
    out = node.output[0]
    b.new_source(position, node, w.shape[1], 1, w.ndim)
    params = (ParamSlice(1, 1, out), *((ParamSlice(2, 0, out),) if has_bias else ()))
    if x is not None:
        params += (ParamSlice(1, 0, node.input[0]),)
        _consumer(b, position, node, 1, 0)
    b.add_role(NodeRole(position, "conv_transpose", params))


def gemm(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    w = b.index.constant(node.input[1])
    if w is None or w.ndim != 2 or node_attr(node, "transA", 0):
        return b.refuse(node, "has a non-constant weight or transposed input")
    if x is not None and x.axis != 1:
        return b.refuse(node, "reads features that are not on axis 1")
    out_axis = node_output_channel_axis(node, w.ndim)
    in_axis = 1 - out_axis
    out = node.output[0]
    features = w.shape[out_axis]
    params = [ParamSlice(1, out_axis, out)]
    if _has(node, 2):
        c = b.index.constant(node.input[2])
        if c is None:
            return b.refuse(node, "has a non-constant bias")
        if c.ndim >= 1 and c.shape[-1] == features:
            params.append(ParamSlice(2, c.ndim - 1, out))
    b.new_source(position, node, features, 1, 2)
    if x is not None:
        params.append(ParamSlice(1, in_axis, node.input[0]))
        _consumer(b, position, node, 1, in_axis)
    b.add_role(NodeRole(position, "gemm", tuple(params)))


def matmul(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    w = b.index.constant(node.input[1])
    if w is None or w.ndim != 2 or b.layout(node.input[1]) is not None:
        return b.refuse(node, "has no constant 2-D weight as its second input")
    if x is not None and x.axis != x.rank - 1:
        return b.refuse(node, "reads features that are not on the last axis")
    rank = b.rank(node.output[0]) or (x.rank if x is not None else 2)
    out = node.output[0]
    b.new_source(position, node, w.shape[1], rank - 1, rank)
    params = (ParamSlice(1, 1, out),)
    if x is not None:
        params += (ParamSlice(1, 0, node.input[0]),)
        _consumer(b, position, node, 1, 0)
    b.add_role(NodeRole(position, "matmul", params))


def _consumer(
    b: Builder, position: int, node: onnx.NodeProto, weight_index: int, axis: int
) -> None:
    b.consumers.append(
        Consumer(
            position,
            b.node_name(node),
            node.op_type,
            node.input[0],
            node.output[0],
            weight_index,
            axis,
        )
    )


# --- ops that pass channels through ------------------------------------------------------


def batch_norm(
    b: Builder, position: int, node: onnx.NodeProto, params: range = range(1, 5)
) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    if len([o for o in node.output if o]) > 1 or node_attr(node, "training_mode", 0):
        return b.refuse(node, "is in training mode")
    if x.axis != 1 or x.block != 1:
        return b.refuse(node, "normalizes an axis other than the channels")
    if not all(b.index.is_constant(node.input[i]) for i in params if _has(node, i)):
        return b.refuse(node, "has non-constant parameters")
    out = node.output[0]
    b.set_layout(out, x)
    slices = tuple(ParamSlice(i, 0, out) for i in params if _has(node, i))
    b.add_role(NodeRole(position, "batch_norm", slices))


def instance_norm(b: Builder, position: int, node: onnx.NodeProto) -> None:
    batch_norm(b, position, node, range(1, 3))


def elementwise(b: Builder, position: int, node: onnx.NodeProto) -> None:
    """Unary, binary and variadic elementwise ops with numpy broadcasting."""
    tracked = [b.layout(n) for n in node.input if b.layout(n) is not None]
    if not tracked:
        return
    from_right = {lay.rank - lay.axis for lay in tracked}
    if len(from_right) != 1:
        return b.refuse(node, "combines tensors whose channel axes do not line up")
    k = from_right.pop()
    main = max(tracked, key=lambda lay: lay.size)
    out = node.output[0]
    params = []
    for i, name in enumerate(node.input):
        if not name or b.layout(name) is not None:
            continue
        shape = b.shape(name)
        if shape is None:
            return b.refuse(node, f"combines them with '{name}' of unknown shape")
        aligned = len(shape) - k
        dim = shape[aligned] if aligned >= 0 else 1
        if dim == 1:
            continue
        if dim == main.size and b.index.is_constant(name):
            params.append(ParamSlice(i, aligned, out))
            continue
        return b.refuse(node, f"combines them with '{name}', whose channels are untracked")
    reason = f"{node.op_type} '{b.node_name(node)}' couples channel ranges that do not line up"
    for lay in tracked:
        if lay is main:
            continue
        if lay.size == main.size:
            b.couple(main, lay, reason)
        elif lay.size == 1:
            b.block(
                lay, f"broadcast over {main.size} channels by {node.op_type} '{b.node_name(node)}'"
            )
        else:
            return b.refuse(node, "broadcasts channels of different counts")
    ranks = [b.rank(n) for n in node.input if n]
    rank = b.rank(out) or max(r for r in ranks if r is not None)
    b.set_layout(out, main.moved(rank - k, rank))
    if params:
        b.add_role(NodeRole(position, "elementwise", tuple(params)))


def _second_output_read(b: Builder, node: onnx.NodeProto) -> bool:
    """Whether a node's optional second output (mask, indices) is read or is a graph output."""
    if len(node.output) < 2 or not node.output[1]:
        return False
    name = node.output[1]
    index = b.index
    return bool(index.consumers.get(name)) or name in index.graph_outputs | index.subgraph_reads


def dropout(b: Builder, position: int, node: onnx.NodeProto) -> None:
    if _second_output_read(b, node):
        return b.refuse(node, "has its mask read")
    x = b.layout(node.input[0])
    if x is not None:
        b.set_layout(node.output[0], x)


def pool(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    if x.axis != 1 or x.block != 1:
        return b.refuse(node, "pools a tensor whose channels are not on axis 1")
    if _second_output_read(b, node):
        return b.refuse(node, "has its indices read")
    b.set_layout(node.output[0], x)


def pad(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    pads = b.index.constant(node.input[1]) if _has(node, 1) else node_attr(node, "pads")
    axes = b.index.constant(node.input[3]) if _has(node, 3) else None
    if pads is None or (_has(node, 3) and axes is None):
        return b.refuse(node, "has non-constant pads")
    pads = np.asarray(pads).reshape(-1)
    axes = list(range(x.rank)) if axes is None else [int(a) % x.rank for a in axes]
    n = len(axes)
    if x.axis in axes:
        i = axes.index(x.axis)
        if pads[i] != 0 or pads[i + n] != 0:
            return b.refuse(node, "pads the channel axis")
    b.set_layout(node.output[0], x)


def resize(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    scales = b.index.constant(node.input[2]) if _has(node, 2) else None
    if _has(node, 3) or node_attr(node, "axes") is not None or scales is None:
        return b.refuse(node, "is not given constant per-axis scales")
    if x.axis >= scales.size or scales.reshape(-1)[x.axis] != 1:
        return b.refuse(node, "scales the channel axis")
    b.set_layout(node.output[0], x)


ELEMENTWISE = (
    *("Abs", "Acos", "Add", "And", "Asin", "Atan", "Cast", "Ceil", "Celu", "Clip", "Cos", "Div"),
    *("Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid"),
    *("HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max"),
    *("Mean", "Min", "Mish", "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu"),
    *("Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum"),
    *("Tan", "Tanh", "ThresholdedRelu", "Where", "Xor"),
)
POOLS = ("AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LpPool", "MaxPool")
REDUCES = (
    *("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean"),
    *("ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"),
)

RULES: dict[str, Rule] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "Dropout": dropout,
    "Pad": pad,
    "Resize": resize,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    **{op: elementwise for op in ELEMENTWISE},
    **{op: pool for op in POOLS},
    **{op: reduce for op in REDUCES},
}
"""Op type -> rule. Ops not listed (Softmax, LayerNormalization, Shape, Gather, ...) are opaque:
the groups they read are blocked."""
