"""Pooling: MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool, GlobalLpPool.

Windows follow ONNX exactly: kernel_shape, strides, dilations, pads or auto_pad (NOTSET,
SAME_UPPER, SAME_LOWER, VALID), ceil_mode (a last window must start inside the input or its
leading pad, as ONNX Runtime and PyTorch agree). The input is padded explicitly and cropped or
extended to exactly the windows ONNX defines, then pooled without implicit padding, so any pad
size works (torch's own padding is limited to half a kernel).
- MaxPool: 1-D to 3-D, float and int8/uint8 (pooled in float, exact); storage_order is only
  about the Indices output, which is declined (PyTorch's indices follow another layout).
- AveragePool and LpPool (p): window sums are a convolution with a ones kernel (dilations
  allowed), divided by the count of input positions (count_include_pad=0) or of input and pad
  positions (count_include_pad=1) under each window; AveragePool windows that all hold
  kernel-many positions (no dilation, no ceil extension, pads counted or absent) use torch's
  average pooling directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported
from onnxopt.training.ops_nn import spatial_attrs, torch_pads, window_pads

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _windows(node: NodeView, x: Tensor) -> tuple[list[int], list[int], list[int], list]:
    """kernel, strides, dilations, and per axis (begin pad, end pad, end extension) where the
    extension (negative: crop) makes the padded length hold exactly the ONNX windows."""
    rank = x.dim() - 2
    if rank not in _CONV:
        raise Unsupported(f"{node.op_type} on {rank} spatial axes")
    kernel = list(node.attr("kernel_shape"))
    strides, dilations = spatial_attrs(node, rank)
    pads = window_pads(node, list(x.shape[2:]), kernel, strides, dilations)
    ceil_mode = node.attr("ceil_mode", 0)
    layout = []
    geometry = zip(x.shape[2:], pads, kernel, strides, dilations, strict=True)
    for size, (begin, end), k, s, d in geometry:
        span, length = (k - 1) * d + 1, size + begin + end
        out = (length - span) // s + 1
        if ceil_mode:
            out = -(-(length - span) // s) + 1
            if (out - 1) * s >= size + begin:
                out -= 1
        layout.append((begin, end, (out - 1) * s + span - length))
    return kernel, strides, dilations, layout


def _padded(x: Tensor, layout: list, pad_value: float, extend_value: float) -> Tensor:
    x = F.pad(x, torch_pads([(b, e) for b, e, _ in layout]), value=pad_value)
    return F.pad(x, torch_pads([(0, extra) for _, _, extra in layout]), value=extend_value)


def max_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    if node.wants_output(1):
        raise Unsupported("MaxPool's Indices output")
    x = inputs[0]
    kernel, strides, dilations, layout = _windows(node, x)
    work = x if x.is_floating_point() else x.float()
    low = float("-inf")
    y = _MAX_POOL[len(kernel)](_padded(work, layout, low, low), kernel, strides, 0, dilations)
    return [y.to(x.dtype)]


def _window_sums(x: Tensor, node: NodeView, include_pad: bool) -> tuple[Tensor, Tensor]:
    """(sum over each window, count of positions it averages over)."""
    kernel, strides, dilations, layout = _windows(node, x)
    conv = _CONV[len(kernel)]
    ones = torch.ones([1, 1, *kernel], dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, 1, *x.shape[2:])
    sums = conv(_padded(flat, layout, 0.0, 0.0), ones, None, strides, 0, dilations)
    mask = torch.ones([1, 1, *x.shape[2:]], dtype=x.dtype, device=x.device)
    mask = _padded(mask, layout, 1.0 if include_pad else 0.0, 0.0)
    counts = conv(mask, ones, None, strides, 0, dilations)
    return sums.reshape(*x.shape[:2], *sums.shape[2:]), counts.reshape(counts.shape[2:])


def average_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, include_pad = inputs[0], bool(node.attr("count_include_pad", 0))
    kernel, strides, dilations, layout = _windows(node, x)
    padded = any(b or e for b, e, _ in layout)
    if (
        set(dilations) == {1}
        and not any(extra for *_, extra in layout)
        and (include_pad or not padded)
    ):  # every window holds kernel-many positions: torch's own pooling
        return [_AVG_POOL[len(kernel)](_padded(x, layout, 0.0, 0.0), kernel, strides)]
    sums, counts = _window_sums(x, node, include_pad)
    return [sums / counts]


def lp_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, p = inputs[0], node.attr("p", 2)
    sums, _ = _window_sums(x.abs() ** p, node, True)
    return [sums ** (1.0 / p)]


def _spatial(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def global_average_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].mean(_spatial(inputs[0]), keepdim=True)]


def global_max_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].amax(_spatial(inputs[0]), keepdim=True)]


def global_lp_pool(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, p = inputs[0], node.attr("p", 2)
    return [(x.abs() ** p).sum(_spatial(x), keepdim=True) ** (1.0 / p)]


HANDLERS = {
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "LpPool": lp_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "GlobalLpPool": global_lp_pool,
}

_WINDOW = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
ATTRIBUTES = {
    "MaxPool": frozenset(_WINDOW | {"storage_order"}),
    "AveragePool": frozenset(_WINDOW | {"count_include_pad"}),
    "LpPool": frozenset(_WINDOW | {"p"}),
    "GlobalAveragePool": frozenset(),
    "GlobalMaxPool": frozenset(),
    "GlobalLpPool": frozenset({"p"}),
}
