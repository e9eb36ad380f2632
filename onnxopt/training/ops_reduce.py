"""Reductions along axes: Softmax, LogSoftmax, Hardmax, Reduce*, ArgMax, ArgMin, CumSum.

- Softmax, LogSoftmax, Hardmax: `axis`; before opset 13 the input is coerced to 2-D at `axis`
  (default 1) and normalized over the flattened trailing part, from 13 along `axis` (default
  -1). Hardmax marks the first maximum.
- ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
  ReduceSumSquare, ReduceLogSum, ReduceLogSumExp: `axes` as an attribute before the opset
  that moved it to an input (13 for ReduceSum, 18 for the others), keepdims,
  noop_with_empty_axes (empty axes then apply only the elementwise part, as the ONNX
  reference does: |x| for L1, x² for SumSquare...). Reducing an empty set gives the identity
  of the reduction (0, 1, -inf / the type's lowest for Max...). Integer ReduceMean
  truncates, as ONNX Runtime.
- ArgMax, ArgMin: axis, keepdims, select_last_index.
- CumSum: axis input, exclusive, reverse.
"""

from __future__ import annotations

import torch

from onnxopt.training.nodes import Inputs, NodeView, Tensor, axis_of, ints, ints_moved


def _coerced(node: NodeView, x: Tensor, fn) -> Tensor:
    """fn(x, axis) with ONNX's per-opset axis semantics."""
    if node.opset >= 13:
        return fn(x, axis_of(node.attr("axis", -1), x.dim()))
    axis = axis_of(node.attr("axis", 1), x.dim())
    flat = x.reshape(int(torch.Size(x.shape[:axis]).numel()), -1)
    return fn(flat, 1).reshape(x.shape)


def _hardmax(x: Tensor, axis: int) -> Tensor:
    hot = torch.nn.functional.one_hot(x.argmax(axis), x.shape[axis]).to(x.dtype)
    return hot.movedim(-1, axis)


def softmax(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [_coerced(node, inputs[0], lambda x, axis: torch.softmax(x, axis))]


def log_softmax(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [_coerced(node, inputs[0], lambda x, axis: torch.log_softmax(x, axis))]


def hardmax(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [_coerced(node, inputs[0], _hardmax)]


def _prod(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    for dim in sorted(dims, reverse=True):
        x = x.prod(dim, keepdim=keepdim)
    return x


def _mean(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    if x.is_floating_point():
        return x.mean(dims, keepdim=keepdim)
    count = int(torch.Size([x.shape[d] for d in dims]).numel())
    return torch.div(x.sum(dims, keepdim=keepdim), count, rounding_mode="trunc").to(x.dtype)


def _lowest(x: Tensor) -> float:
    return float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min


def _highest(x: Tensor) -> float:
    return float("inf") if x.is_floating_point() else torch.iinfo(x.dtype).max


_SUM = torch.sum
_REDUCTIONS = {
    # op: (elementwise part, reduction, after the reduction, value of an empty reduction)
    "ReduceSum": (None, _SUM, None, lambda x: 0),
    "ReduceMean": (None, _mean, None, lambda x: float("nan")),
    "ReduceMax": (None, torch.amax, None, _lowest),
    "ReduceMin": (None, torch.amin, None, _highest),
    "ReduceProd": (None, _prod, None, lambda x: 1),
    "ReduceL1": (torch.abs, _SUM, None, lambda x: 0),
    "ReduceL2": (torch.square, _SUM, torch.sqrt, lambda x: 0),
    "ReduceSumSquare": (torch.square, _SUM, None, lambda x: 0),
    "ReduceLogSum": (None, _SUM, torch.log, lambda x: float("-inf")),
    "ReduceLogSumExp": (None, torch.logsumexp, None, lambda x: float("-inf")),
}


def _reduce_axes(node: NodeView, inputs: Inputs, rank: int) -> tuple[int, ...] | None:
    """The reduced axes; None for a no-op (empty axes with noop_with_empty_axes)."""
    since = 13 if node.op_type == "ReduceSum" else 18
    axes = ints_moved(node, inputs, "axes", 1, since)
    if axes:
        return tuple(sorted({axis_of(a, rank) for a in axes}))
    if node.attr("noop_with_empty_axes", 0):
        return None
    return tuple(range(rank))


def reduce(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    before, fn, after, empty = _REDUCTIONS[node.op_type]
    if before is not None:
        x = before(x)
    dims = _reduce_axes(node, inputs, x.dim())
    if dims is None:
        return [x if after is None else after(x)]
    keepdim = bool(node.attr("keepdims", 1))
    if any(x.shape[d] == 0 for d in dims):
        shape = [1 if d in dims else n for d, n in enumerate(x.shape) if keepdim or d not in dims]
        return [torch.full(shape, empty(x), dtype=x.dtype, device=x.device)]
    y = fn(x, dims, keepdim=keepdim).to(x.dtype) if dims else x
    return [y if after is None else after(y)]


def _arg(node: NodeView, inputs: Inputs, fn) -> list[Tensor]:
    x = inputs[0]
    axis = axis_of(node.attr("axis", 0), x.dim())
    keepdim = bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        last = fn(x.flip(axis), axis, keepdim=keepdim)
        return [x.shape[axis] - 1 - last]
    return [fn(x, axis, keepdim=keepdim)]


def arg_max(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return _arg(node, inputs, torch.argmax)


def arg_min(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return _arg(node, inputs, torch.argmin)


def cumsum(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    axis = axis_of(ints(inputs[1])[0], x.dim())
    reverse = bool(node.attr("reverse", 0))
    y = x.flip(axis) if reverse else x
    total = y.cumsum(axis).to(x.dtype)
    if node.attr("exclusive", 0):
        zeros = torch.zeros_like(y.narrow(axis, 0, 1))
        total = torch.cat([zeros, total.narrow(axis, 0, x.shape[axis] - 1)], axis)
    return [total.flip(axis) if reverse else total]


HANDLERS = {
    "Softmax": softmax,
    "LogSoftmax": log_softmax,
    "Hardmax": hardmax,
    **{op: reduce for op in _REDUCTIONS},
    "ArgMax": arg_max,
    "ArgMin": arg_min,
    "CumSum": cumsum,
}

ATTRIBUTES = {
    "Softmax": frozenset({"axis"}),
    "LogSoftmax": frozenset({"axis"}),
    "Hardmax": frozenset({"axis"}),
    **{op: frozenset({"axes", "keepdims", "noop_with_empty_axes"}) for op in _REDUCTIONS},
    "ArgMax": frozenset({"axis", "keepdims", "select_last_index"}),
    "ArgMin": frozenset({"axis", "keepdims", "select_last_index"}),
    "CumSum": frozenset({"exclusive", "reverse"}),
}
