"""Channel rules of ops that rearrange the channel axis: Concat, Split, Slice, Flatten, Reshape,
Transpose, Squeeze, Unsqueeze and the Reduce family (see `channel_rules` for the table)."""

from __future__ import annotations

import math

import onnx

from onnxopt.analyses.channel_model import Builder, Fixup, Layout, NodeRole, Segment
from onnxopt.ir.graph import node_attr


def _has(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def concat(b: Builder, position: int, node: onnx.NodeProto) -> None:
    tracked = [b.layout(n) for n in node.input if b.layout(n) is not None]
    if not tracked:
        return
    rank = tracked[0].rank
    axis = int(node_attr(node, "axis")) % rank
    if any(lay.rank != rank for lay in tracked):
        return b.refuse(node, "joins tensors of different ranks")
    if any(lay.axis != axis for lay in tracked):
        return _along_other_axis(b, position, node, tracked)
    if any(lay.block != 1 for lay in tracked):
        return b.refuse(node, "joins flattened features")
    segments: list[Segment] = []
    for name in node.input:
        lay = b.layout(name)
        if lay is not None:
            segments.extend(lay.segments)
            continue
        shape = b.shape(name)
        size = shape[axis] if shape is not None and len(shape) == rank else None
        if not isinstance(size, int):
            return b.refuse(node, f"joins '{name}', whose channel count is unknown")
        group = b.new_group(size, f"concatenated with '{name}', whose channels are untracked")
        segments.append(Segment(group, 0, size))
    b.set_layout(node.output[0], Layout(axis, rank, tuple(segments)))


def _along_other_axis(
    b: Builder, position: int, node: onnx.NodeProto, tracked: list[Layout]
) -> None:
    if len(tracked) != len([n for n in node.input if n]):
        return b.refuse(node, "joins tracked channels with untracked ones")
    reason = f"{node.op_type} '{b.node_name(node)}' couples channel ranges that do not line up"
    for lay in tracked[1:]:
        b.couple(tracked[0], lay, reason)
    b.set_layout(node.output[0], tracked[0])


def split(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    axis = int(node_attr(node, "axis", 0)) % x.rank
    if axis != x.axis:
        for out in node.output:
            b.set_layout(out, x)
        return
    if x.block != 1:
        return b.refuse(node, "splits flattened features")
    sizes = _split_sizes(b, node, x.size)
    if sizes is None:
        return b.refuse(node, "has split sizes that are not constant")
    offset = 0
    for out, size in zip(node.output, sizes, strict=True):
        segments = slice_segments(x.segments, offset, offset + size)
        b.ranges.extend(segments)
        b.set_layout(out, Layout(x.axis, x.rank, segments))
        offset += size
    b.add_role(NodeRole(position, "split", (), (Fixup("split"),)))


def _split_sizes(b: Builder, node: onnx.NodeProto, total: int) -> list[int] | None:
    if _has(node, 1):
        value = b.index.constant(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    if node_attr(node, "split") is not None:
        return [int(v) for v in node_attr(node, "split")]
    count = int(node_attr(node, "num_outputs", len(node.output)))
    if total % count:
        return None
    return [total // count] * count


def slice_segments(segments: tuple[Segment, ...], lo: int, hi: int) -> tuple[Segment, ...]:
    """The segments covering positions [lo, hi) of the concatenation of `segments`."""
    out, offset = [], 0
    for seg in segments:
        start, stop = max(lo, offset), min(hi, offset + seg.size)
        if start < stop:
            out.append(Segment(seg.group, seg.start + start - offset, seg.start + stop - offset))
        offset += seg.size
    return tuple(out)


def flatten(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    axis = int(node_attr(node, "axis", 1)) % x.rank
    shape = b.shapes.shape(node.input[0])
    trailing = shape[axis + 1 :] if shape is not None else None
    if axis != x.axis or trailing is None or not all(isinstance(d, int) for d in trailing):
        return b.refuse(node, "does not start at the channel axis of a known shape")
    b.set_layout(node.output[0], Layout(1, 2, x.segments, x.block * math.prod(trailing)))


def reshape(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    target = b.index.constant(node.input[1])
    before, after = b.shapes.shape(node.input[0]), b.shapes.shape(node.output[0])
    if target is None or before is None or after is None:
        return b.refuse(node, "has a non-constant target or unknown shapes")
    a = x.axis
    keeps_prefix = tuple(after[: a + 1]) == tuple(before[: a + 1])
    tail = before[a + 1 :]
    if keeps_prefix and len(after) > a:
        layout = x.moved(a, len(after))
    elif (
        len(after) == a + 1
        and tuple(after[:a]) == tuple(before[:a])
        and all(isinstance(d, int) for d in tail)
        and after[a] == before[a] * math.prod(tail)
    ):
        layout = x.moved(a, a + 1, x.block * math.prod(tail))
    else:
        return b.refuse(node, "moves the channel axis")
    out = node.output[0]
    b.set_layout(out, layout)
    if int(target.reshape(-1)[a]) > 0:
        b.add_role(NodeRole(position, "reshape", (), (Fixup("reshape", out, a),)))


def transpose(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    perm = list(node_attr(node, "perm", list(range(x.rank))[::-1]))
    if x.block != 1:
        return b.refuse(node, "permutes flattened features")
    b.set_layout(node.output[0], x.moved(perm.index(x.axis), x.rank))


def _axes(b: Builder, node: onnx.NodeProto) -> list[int] | None:
    """Axes from the attribute or the second input; [] when absent; None when not constant."""
    if _has(node, 1):
        value = b.index.constant(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return [int(v) for v in node_attr(node, "axes", [])]


def squeeze(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    axes = _axes(b, node)
    if axes == []:
        shape = b.shapes.shape(node.input[0])
        axes = None if shape is None else [i for i, d in enumerate(shape) if d == 1]
    if axes is None:
        return b.refuse(node, "has unknown axes")
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        return b.refuse(node, "removes the channel axis")
    b.set_layout(
        node.output[0], x.moved(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes))
    )


def unsqueeze(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    axes = _axes(b, node)
    if not axes:
        return b.refuse(node, "has unknown axes")
    rank = x.rank + len(axes)
    inserted = {a % rank for a in axes}
    remaining = [i for i in range(rank) if i not in inserted]
    b.set_layout(node.output[0], x.moved(remaining[x.axis], rank))


def reduce(b: Builder, position: int, node: onnx.NodeProto) -> None:
    x = b.layout(node.input[0])
    if x is None:
        return
    axes = _axes(b, node)
    if axes is None:
        return b.refuse(node, "has non-constant axes")
    if not axes:
        if node_attr(node, "noop_with_empty_axes", 0):
            b.set_layout(node.output[0], x)
            return
        return b.refuse(node, "reduces over the channel axis")
    axes = [a % x.rank for a in axes]
    if x.axis in axes or x.block != 1:
        return b.refuse(node, "reduces over the channel axis")
    if node_attr(node, "keepdims", 1):
        b.set_layout(node.output[0], x)
    else:
        b.set_layout(
            node.output[0], x.moved(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes))
        )


def slice_(b: Builder, position: int, node: onnx.NodeProto) -> None:
    """Slice passes channels through when it leaves the channel axis whole."""
    x = b.layout(node.input[0])
    if x is None:
        return
    values = [b.index.constant(node.input[i]) if _has(node, i) else None for i in range(1, 5)]
    starts, ends, axes, steps = values
    if starts is None or ends is None or (_has(node, 3) and axes is None):
        return b.refuse(node, "has non-constant starts, ends or axes")
    if _has(node, 4) and steps is None:
        return b.refuse(node, "has non-constant steps")
    axes = list(range(len(starts))) if axes is None else [int(a) % x.rank for a in axes]
    if x.axis in axes:
        i = axes.index(x.axis)
        step = 1 if steps is None else int(steps[i])
        if step != 1 or int(starts[i]) != 0 or int(ends[i]) < x.size:
            return b.refuse(node, "cuts the channel axis")
    if x.block != 1 and x.axis in axes:
        return b.refuse(node, "slices flattened features")
    b.set_layout(node.output[0], x)
