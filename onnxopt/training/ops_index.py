"""Indexing and constants: Gather, GatherElements, GatherND, ScatterElements (and Scatter, its
opset 9 name), ScatterND, TopK, NonZero, OneHot, Trilu, Constant, ConstantOfShape, Range.

- Gather, GatherElements: axis, negative indices counted from the end; int32 or int64
  indices (the codebook decoder gathers its centroids with int32 indices: gradients reach the
  gathered table). GatherND: batch_dims.
- ScatterElements, ScatterND: reduction none/add/mul (16), max/min (18), negative indices;
  differentiable in data and updates (torch scatter / scatter_reduce).
- TopK: K input (opset 10) or `k` attribute (opset 1), axis, largest, sorted; ties keep the
  lower index first, as ONNX requires (a stable sort).
- NonZero; OneHot (axis, negative indices, out-of-range indices give all-off rows); Trilu
  (upper, k input).
- Constant: value, value_float(s), value_int(s) (CPU tensors; strings and sparse_value are
  declined by the attribute check); ConstantOfShape: value (default float32 0); Range (int
  and float; ONNX's element count max(ceil((limit - start) / delta), 0)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported, axis_of, ints


def _positive(indices: Tensor, length: int) -> Tensor:
    indices = indices.long()
    return torch.where(indices < 0, indices + length, indices)


def gather(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, indices = inputs[0], inputs[1]
    axis = axis_of(node.attr("axis", 0), x.dim())
    flat = _positive(indices, x.shape[axis]).reshape(-1)
    picked = x.index_select(axis, flat)
    return [picked.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])]


def gather_elements(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, indices = inputs[0], inputs[1]
    axis = axis_of(node.attr("axis", 0), x.dim())
    return [torch.gather(x, axis, _positive(indices, x.shape[axis]))]


def gather_nd(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, indices = inputs[0], inputs[1].long()
    batch = node.attr("batch_dims", 0)
    depth = indices.shape[-1]
    batches = int(torch.Size(x.shape[:batch]).numel())
    table = x.reshape(batches, *x.shape[batch:])
    rows = indices.reshape(batches, -1, depth)
    keys = [torch.arange(batches, device=x.device).reshape(-1, 1)]
    keys += [_positive(rows[..., i], x.shape[batch + i]) for i in range(depth)]
    picked = table[tuple(keys)]
    return [picked.reshape(*indices.shape[:-1], *x.shape[batch + depth :])]


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _reduction(node: NodeView) -> str | None:
    reduction = node.attr("reduction", "none")
    if reduction != "none" and reduction not in _REDUCE:
        raise Unsupported(f"{node.op_type} reduction={reduction}")
    return _REDUCE.get(reduction)


def _scattered(data: Tensor, axis: int, index: Tensor, updates: Tensor, reduce: str | None):
    if reduce is None:
        return data.scatter(axis, index, updates)
    return data.scatter_reduce(axis, index, updates, reduce, include_self=True)


def scatter_elements(node: NodeView, inputs: Inputs) -> list[Tensor]:
    data, indices, updates = inputs[0], inputs[1], inputs[2]
    axis = axis_of(node.attr("axis", 0), data.dim())
    index = _positive(indices, data.shape[axis])
    return [_scattered(data, axis, index, updates, _reduction(node))]


def scatter_nd(node: NodeView, inputs: Inputs) -> list[Tensor]:
    """Through a flat view: the first k dims of `data` as one axis of linear positions."""
    data, indices, updates = inputs[0], inputs[1].long(), inputs[2]
    depth = indices.shape[-1]
    linear = torch.zeros(indices.shape[:-1], dtype=torch.long, device=data.device)
    for i in range(depth):
        linear = linear * data.shape[i] + _positive(indices[..., i], data.shape[i])
    rows = data.reshape(int(torch.Size(data.shape[:depth]).numel()), -1)
    values = updates.reshape(-1, rows.shape[1])
    index = linear.reshape(-1, 1).expand(-1, rows.shape[1])
    return [_scattered(rows, 0, index, values, _reduction(node)).reshape(data.shape)]


def top_k(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    k = node.attr("k") if node.opset < 10 else ints(inputs[1])[0]
    axis = axis_of(node.attr("axis", -1), x.dim())
    largest = bool(node.attr("largest", 1))
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]


def non_zero(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [torch.nonzero(inputs[0]).T.contiguous()]


def one_hot(node: NodeView, inputs: Inputs) -> list[Tensor]:
    indices, depth_tensor, values = inputs[0], inputs[1], inputs[2]
    depth = int(depth_tensor.reshape(-1)[0].item())
    positions = _positive(indices, depth)
    valid = (positions >= 0) & (positions < depth)
    hot = F.one_hot(positions.clamp(0, depth - 1), depth).bool() & valid.unsqueeze(-1)
    axis = axis_of(node.attr("axis", -1), indices.dim() + 1)
    return [torch.where(hot.movedim(-1, axis), values[1], values[0])]


def trilu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    k = ints(inputs[1])[0] if len(inputs) > 1 and inputs[1] is not None else 0
    return [torch.triu(x, k) if node.attr("upper", 1) else torch.tril(x, k)]


def _from_numpy(value: np.ndarray) -> Tensor:
    if value.dtype.kind not in "biuf" or value.dtype in (np.uint16, np.uint32, np.uint64):
        raise Unsupported(f"a constant of dtype {value.dtype}")
    return torch.from_numpy(np.array(value))


def constant(node: NodeView, inputs: Inputs) -> list[Tensor]:
    if "value" in node.attrs:
        return [_from_numpy(node.attr("value"))]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32)):
        if name in node.attrs:
            return [torch.tensor(node.attr(name), dtype=dtype)]
    for name in ("value_int", "value_ints"):
        if name in node.attrs:
            return [torch.tensor(node.attr(name), dtype=torch.int64)]
    raise Unsupported("Constant without a numeric value")


def constant_of_shape(node: NodeView, inputs: Inputs) -> list[Tensor]:
    value = node.attr("value")
    fill = torch.zeros(1) if value is None else _from_numpy(value).reshape(-1)
    dims = ints(inputs[0])
    return [torch.full(dims, fill[0].item(), dtype=fill.dtype, device=inputs[0].device)]


def range_(node: NodeView, inputs: Inputs) -> list[Tensor]:
    start, limit, delta = (t.reshape(-1)[0] for t in inputs[:3])
    count = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    steps = torch.arange(count, device=start.device).to(start.dtype)
    return [start + steps * delta]


HANDLERS = {
    "Gather": gather,
    "GatherElements": gather_elements,
    "GatherND": gather_nd,
    "ScatterElements": scatter_elements,
    "Scatter": scatter_elements,
    "ScatterND": scatter_nd,
    "TopK": top_k,
    "NonZero": non_zero,
    "OneHot": one_hot,
    "Trilu": trilu,
    "Constant": constant,
    "ConstantOfShape": constant_of_shape,
    "Range": range_,
}

ATTRIBUTES = {
    "Gather": frozenset({"axis"}),
    "GatherElements": frozenset({"axis"}),
    "GatherND": frozenset({"batch_dims"}),
    "ScatterElements": frozenset({"axis", "reduction"}),
    "Scatter": frozenset({"axis"}),
    "ScatterND": frozenset({"reduction"}),
    "TopK": frozenset({"k", "axis", "largest", "sorted"}),
    "NonZero": frozenset(),
    "OneHot": frozenset({"axis"}),
    "Trilu": frozenset({"upper"}),
    "Constant": frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"}),
    "ConstantOfShape": frozenset({"value"}),
    "Range": frozenset(),
}
