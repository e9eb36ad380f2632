"""Shape and layout: Shape, Size, Reshape, Flatten, Concat, Split, Slice, Transpose, Squeeze,
Unsqueeze, Pad, Expand, Tile, DepthToSpace, SpaceToDepth.

Covered attributes, per opset where they moved:
- Shape: start, end (opset 15). Reshape: 0 copies the input's dim unless allowzero, -1 infers.
  Flatten: axis (negative from opset 11).
- Split: `split` attribute before 13, input from 13; num_outputs (18, last part smaller);
  equal parts otherwise.
- Slice: starts/ends/axes attributes before opset 10, inputs (with steps) from 10; negative
  starts/ends count from the end, out-of-range values (INT64_MAX...) are clamped as ONNX says,
  negative steps select in reverse (index_select: differentiable).
- Transpose: perm, default reversed. Squeeze/Unsqueeze: axes attribute before 13, input from
  13; Squeeze without axes drops every dim of size 1.
- Pad: modes constant, reflect, edge, wrap (19); `paddings` (opset 1) is declined, `pads` and
  `value` attributes before 11, pads/constant_value inputs from 11, axes input from 18;
  negative pads crop.
- Expand (bidirectional broadcast), Tile (repeats input), DepthToSpace (blocksize, mode
  DCR/CRD), SpaceToDepth (blocksize).
Integer, bool and float tensors all keep their dtype; shape outputs are int64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onnxopt.training.nodes import (
    Inputs,
    NodeView,
    Tensor,
    Unsupported,
    axis_of,
    ints,
    ints_moved,
)

INT64_MAX = 2**63 - 1


def _int64(values: list[int], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.int64, device=like.device)


def shape(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    dims = list(x.shape)
    start, end = node.attr("start", 0), node.attr("end", len(dims))
    return [_int64(dims[start:end], x)]


def size(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [torch.tensor(inputs[0].numel(), dtype=torch.int64, device=inputs[0].device)]


def reshape(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, target = inputs[0], ints(inputs[1])
    if node.opset < 5:
        raise Unsupported("Reshape before opset 5 (shape attribute)")
    if not node.attr("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


def flatten(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axis = axis_of(node.attr("axis", 1), x.dim())
    rows = int(torch.Size(x.shape[:axis]).numel())
    return [x.reshape(rows, int(torch.Size(x.shape[axis:]).numel()))]


def concat(node: NodeView, inputs: Inputs) -> list[Tensor]:
    present = [t for t in inputs if t is not None]
    return [torch.cat(present, axis_of(node.attr("axis", 1), present[0].dim()))]


def split(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axis = axis_of(node.attr("axis", 0), x.dim())
    sizes = ints_moved(node, inputs, "split", 1, 13)
    count = len(node.node.output)
    length = x.shape[axis]
    if not sizes:
        parts = node.attr("num_outputs", count)
        chunk = -(-length // parts)
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, axis))


def _clamped(start: int, end: int, step: int, length: int) -> tuple[int, int]:
    start = start + length if start < 0 else start
    end = end + length if end < 0 else end
    if step > 0:
        return min(max(start, 0), length), min(max(end, 0), length)
    return min(max(start, 0), length - 1), min(max(end, -1), length - 1)


def slice_(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    if node.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
        steps = ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis_of(axis, x.dim())
        begin, stop = _clamped(start, end, step, x.shape[axis])
        if step == 1:
            x = x.narrow(axis, begin, max(0, stop - begin))
        else:
            picked = list(range(begin, stop, step))
            x = x.index_select(axis, _int64(picked, x))
    return [x]


def transpose(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    perm = node.attr("perm", list(range(x.dim() - 1, -1, -1)))
    return [x.permute(list(perm))]


def squeeze(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axes = ints_moved(node, inputs, "axes", 1, 13)
    if axes is None:
        return [x.squeeze()] if x.dim() else [x]
    keep = {axis_of(a, x.dim()) for a in axes}
    return [x.reshape([n for d, n in enumerate(x.shape) if d not in keep])]


def unsqueeze(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axes = ints_moved(node, inputs, "axes", 1, 13) or []
    rank = x.dim() + len(axes)
    dims = list(x.shape)
    for axis in sorted(axis_of(a, rank) for a in axes):
        dims.insert(axis, 1)
    return [x.reshape(dims)]


def _pad_spec(node: NodeView, inputs: Inputs, rank: int) -> tuple[list, object]:
    """Per-axis (begin, end) pads and the constant value (a tensor, a number or None)."""
    if node.opset < 11:
        if node.attr("paddings") is not None:
            raise Unsupported("Pad's `paddings` attribute (opset 1)")
        pads, value = list(node.attr("pads")), node.attr("value", 0.0)
    else:
        pads = ints(inputs[1])
        value = inputs[2] if len(inputs) > 2 else None
    axes = list(range(rank))
    if node.opset >= 18 and len(inputs) > 3 and inputs[3] is not None:
        axes = [axis_of(a, rank) for a in ints(inputs[3])]
    per_axis = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        per_axis[axis] = (pads[i], pads[i + len(axes)])
    return per_axis, value


def _pad_indices(mode: str, begin: int, end: int, length: int, device) -> Tensor:
    positions = torch.arange(-begin, length + end, device=device)
    if mode == "edge":
        return positions.clamp(0, length - 1)
    if mode == "wrap":
        return positions.remainder(length)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = positions.abs().remainder(period)
    return torch.where(folded < length, folded, period - folded)


def pad(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    mode = node.attr("mode", "constant")
    per_axis, value = _pad_spec(node, inputs, x.dim())
    if mode == "constant":
        fill = 0 if value is None else value
        fill = fill.item() if isinstance(fill, Tensor) else fill
        return [F.pad(x, [p for pair in reversed(per_axis) for p in pair], value=fill)]
    if mode not in ("reflect", "edge", "wrap"):
        raise Unsupported(f"Pad mode={mode}")
    for axis, (begin, end) in enumerate(per_axis):
        if begin or end:
            index = _pad_indices(mode, begin, end, x.shape[axis], x.device)
            x = x.index_select(axis, index)
    return [x]


def expand(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [x.expand(torch.broadcast_shapes(x.shape, tuple(ints(inputs[1]))))]


def tile(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].repeat(ints(inputs[1]))]


def depth_to_space(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, block = inputs[0], node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // block**2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // block**2, h * block, w * block)]


def space_to_depth(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, block = inputs[0], node.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * block**2, h // block, w // block)]


HANDLERS = {
    "Shape": shape,
    "Size": size,
    "Reshape": reshape,
    "Flatten": flatten,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Pad": pad,
    "Expand": expand,
    "Tile": tile,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
}

ATTRIBUTES = {
    "Shape": frozenset({"start", "end"}),
    "Size": frozenset(),
    "Reshape": frozenset({"allowzero"}),
    "Flatten": frozenset({"axis"}),
    "Concat": frozenset({"axis"}),
    "Split": frozenset({"axis", "split", "num_outputs"}),
    "Slice": frozenset({"starts", "ends", "axes"}),
    "Transpose": frozenset({"perm"}),
    "Squeeze": frozenset({"axes"}),
    "Unsqueeze": frozenset({"axes"}),
    "Pad": frozenset({"mode", "pads", "value"}),
    "Expand": frozenset(),
    "Tile": frozenset(),
    "DepthToSpace": frozenset({"blocksize", "mode"}),
    "SpaceToDepth": frozenset({"blocksize"}),
}
