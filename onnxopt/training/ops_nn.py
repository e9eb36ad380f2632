"""Weighted layers and normalizations: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization,
InstanceNormalization, LayerNormalization, GroupNormalization, LRN.

Covered attributes:
- Conv (1-D, 2-D, 3-D): group, dilations, strides, pads, kernel_shape (read from the weight),
  auto_pad NOTSET / SAME_UPPER / SAME_LOWER / VALID; asymmetric pads are applied with an
  explicit zero pad before the convolution.
- ConvTranspose: group, dilations, strides, pads (asymmetric too), output_padding,
  output_shape, auto_pad: computed as the full transposed convolution, then cropped or
  zero-extended to the ONNX output window, so every combination ONNX allows is exact.
- Gemm: alpha, beta, transA, transB, C omitted or broadcast. MatMul: numpy semantics.
- BatchNormalization: inference (running mean and variance); epsilon, momentum (unused in
  inference), spatial=1. Declined: training_mode=1 or its extra outputs (batch statistics).
- InstanceNormalization: epsilon. LayerNormalization: axis, epsilon, stash_type, optional
  bias, Mean and InvStdDev outputs. GroupNormalization: num_groups, epsilon, stash_type; scale
  and bias per group before opset 21, per channel from it. LRN: size, alpha, beta, bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onnxopt.ir.layers import conv_pads
from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported, axis_of

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def optional(inputs: Inputs, index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def spatial_attrs(node: NodeView, rank: int) -> tuple[list[int], list[int]]:
    """(strides, dilations) with their defaults of 1."""
    return list(node.attr("strides", [1] * rank)), list(node.attr("dilations", [1] * rank))


def window_pads(
    node: NodeView, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis, from `pads` or `auto_pad` (Conv and pools);
    the geometry is `ir.layers.conv_pads`, the one home of it."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad}")
    flat = conv_pads(node.node, sizes, kernel, strides, dilations)
    rank = len(sizes)
    return [(flat[i], flat[i + rank]) for i in range(rank)]


def torch_pads(pads: list[tuple[int, int]]) -> list[int]:
    """ONNX (begin, end) pairs per axis, first axis first, as F.pad's last-axis-first list."""
    return [p for pair in reversed(pads) for p in pair]


def conv(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, w, bias = inputs[0], inputs[1], optional(inputs, 2)
    rank = x.dim() - 2
    if rank not in _CONV:
        raise Unsupported(f"Conv on {rank} spatial axes")
    strides, dilations = spatial_attrs(node, rank)
    kernel = list(w.shape[2:])
    pads = window_pads(node, list(x.shape[2:]), kernel, strides, dilations)
    if all(b == e for b, e in pads):
        padding = [b for b, _ in pads]
    else:
        x, padding = F.pad(x, torch_pads(pads)), [0] * rank
    group = node.attr("group", 1)
    return [_CONV[rank](x, w, bias, strides, padding, dilations, group)]


def conv_transpose(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, w, bias = inputs[0], inputs[1], optional(inputs, 2)
    rank = x.dim() - 2
    if rank not in _CONV_T:
        raise Unsupported(f"ConvTranspose on {rank} spatial axes")
    strides, dilations = spatial_attrs(node, rank)
    group = node.attr("group", 1)
    full = _CONV_T[rank](x, w, None, strides, 0, 0, group, dilations)
    crops = _transpose_crops(node, list(x.shape[2:]), list(w.shape[2:]), strides, dilations)
    y = F.pad(full, torch_pads([(-b, -e) for b, e in crops]))
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * rank)
    return [y]


def _transpose_crops(
    node: NodeView, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[tuple[int, int]]:
    """(begin, end) to remove from the full transposed convolution (negative: zeros to add)."""
    rank = len(sizes)
    extra = list(node.attr("output_padding", [0] * rank))
    geometry = zip(sizes, kernel, strides, dilations, strict=True)
    full = [s * (n - 1) + (k - 1) * d + 1 for n, k, s, d in geometry]
    auto_pad = node.attr("auto_pad", "NOTSET")
    wanted = node.attr("output_shape")
    if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [n * s for n, s in zip(sizes, strides, strict=True)]
    if wanted is None:
        if auto_pad == "VALID":
            return [(0, -e) for e in extra]
        if auto_pad != "NOTSET":
            raise Unsupported(f"auto_pad={auto_pad}")
        pads = list(node.attr("pads", [0] * 2 * rank))
        return [(pads[i], pads[i + rank] - extra[i]) for i in range(rank)]
    wanted = list(wanted)[-rank:]
    crops = []
    for i in range(rank):
        total = full[i] + extra[i] - wanted[i]
        small, large = total // 2, total - total // 2
        begin = small if auto_pad == "SAME_UPPER" else large
        crops.append((begin, total - begin - extra[i]))
    return crops


def gemm(node: NodeView, inputs: Inputs) -> list[Tensor]:
    a, b, c = inputs[0], inputs[1], optional(inputs, 2)
    if node.attr("transA", 0):
        a = a.transpose(0, 1)
    if node.attr("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta)
    return [y.to(a.dtype)]


def matmul(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [torch.matmul(inputs[0], inputs[1])]


def _channel_view(t: Tensor, rank: int) -> Tensor:
    return t.reshape([1, -1] + [1] * (rank - 2))


def batch_norm_problem(node: NodeView) -> str | None:
    """Why this BatchNormalization is not the inference form the view runs, or None."""
    if node.attr("training_mode", 0) or any(node.wants_output(i) for i in (1, 2, 3, 4)):
        return "BatchNormalization in training mode (batch statistics)"
    if node.attr("spatial", 1) != 1:
        return "BatchNormalization with spatial=0"
    return None


def batch_norm_factor(node: NodeView, scale: Tensor, var: Tensor) -> Tensor:
    """scale / sqrt(var + epsilon): what the inference form multiplies x - mean by."""
    return scale * torch.rsqrt(var + node.attr("epsilon", 1e-5))


def batch_norm(node: NodeView, inputs: Inputs) -> list[Tensor]:
    problem = batch_norm_problem(node)
    if problem:
        raise Unsupported(problem)
    x, scale, bias, mean, var = inputs[:5]
    factor = batch_norm_factor(node, scale, var)
    rank = x.dim()
    shifted = x - _channel_view(mean, rank)
    return [shifted * _channel_view(factor, rank) + _channel_view(bias, rank)]


def _normalized(x: Tensor, dims: tuple[int, ...], epsilon: float) -> tuple[Tensor, ...]:
    """(x - mean) / sqrt(var + epsilon) over `dims`, with mean and 1 / sqrt(var + epsilon)."""
    mean = x.mean(dims, keepdim=True)
    centered = x - mean
    inv_std = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + epsilon)
    return centered * inv_std, mean, inv_std


def _stashed(node: NodeView, x: Tensor) -> Tensor:
    """x in the stash type the statistics are computed in (float32 unless stash_type says)."""
    stash = node.attr("stash_type", 1)
    if stash != 1:
        raise Unsupported(f"stash_type={stash}")
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def instance_norm(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, scale, bias = inputs[:3]
    dims = tuple(range(2, x.dim()))
    y, _, _ = _normalized(x, dims, node.attr("epsilon", 1e-5))
    return [y * _channel_view(scale, x.dim()) + _channel_view(bias, x.dim())]


def layer_norm(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, scale, bias = inputs[0], inputs[1], optional(inputs, 2)
    axis = axis_of(node.attr("axis", -1), x.dim())
    dims = tuple(range(axis, x.dim()))
    y, mean, inv_std = _normalized(_stashed(node, x), dims, node.attr("epsilon", 1e-5))
    y = y.to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


def group_norm(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, scale, bias = inputs[:3]
    groups = node.attr("num_groups")
    n, channels = x.shape[0], x.shape[1]
    grouped = _stashed(node, x).reshape(n, groups, -1)
    y, _, _ = _normalized(grouped, (2,), node.attr("epsilon", 1e-5))
    y = y.reshape(x.shape).to(x.dtype)
    if scale.numel() != channels:  # opset 18: one scale and bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return [y * _channel_view(scale, x.dim()) + _channel_view(bias, x.dim())]


def lrn(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = F.pad(x * x, torch_pads([(0, 0), (before, after)] + [(0, 0)] * (x.dim() - 2)))
    channels = x.shape[1]
    total = sum(squares[:, i : i + channels] for i in range(size))
    return [x / (bias + alpha / size * total) ** beta]


HANDLERS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm,
    "LRN": lrn,
}

_CONV_ATTRS = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}
ATTRIBUTES = {
    "Conv": frozenset(_CONV_ATTRS),
    "ConvTranspose": frozenset(_CONV_ATTRS | {"output_padding", "output_shape"}),
    "Gemm": frozenset({"alpha", "beta", "transA", "transB"}),
    "MatMul": frozenset(),
    "BatchNormalization": frozenset({"epsilon", "momentum", "training_mode", "spatial"}),
    "InstanceNormalization": frozenset({"epsilon"}),
    "LayerNormalization": frozenset({"axis", "epsilon", "stash_type"}),
    "GroupNormalization": frozenset({"num_groups", "epsilon", "stash_type"}),
    "LRN": frozenset({"size", "alpha", "beta", "bias"}),
}
