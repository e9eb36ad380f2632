"""Weighted-layer geometry, one copy for every engine: which axis of a weight indexes the
layer's output channels (and values shaped along it), how many output channels it has, a
convolution's explicit padding (`auto_pad` resolved), its output size along one axis, and the
input windows its kernel reads (im2col, as a view)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.ir.graph import node_attr


def output_channel_axis(op_type: str, trans_b: bool, weight_rank: int) -> int | None:
    """The axis of a layer's weight that indexes its output channels: Conv 0, ConvTranspose 1
    (C_in x C_out/group x k...), Gemm 0 with transB else 1, MatMul (B: ..., K, N) the last;
    None for other ops."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    if op_type == "Gemm":
        return 0 if trans_b else 1
    if op_type == "MatMul":
        return weight_rank - 1
    return None


def node_output_channel_axis(node: onnx.NodeProto, weight_rank: int) -> int | None:
    """`output_channel_axis` of `node`'s weight (its transB read from the node)."""
    return output_channel_axis(node.op_type, bool(node_attr(node, "transB", 0)), weight_rank)


def along_output_channels(values: np.ndarray, node: onnx.NodeProto, weight_rank: int):
    """`values` (one per output channel) shaped to broadcast along `node`'s weight's output
    channel axis (Conv, Gemm, MatMul; a ConvTranspose's axis holds channels per group)."""
    shape = [1] * weight_rank
    shape[node_output_channel_axis(node, weight_rank)] = -1
    return values.reshape(shape)


def output_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """Output channels of a Conv, ConvTranspose (times its groups), Gemm or MatMul."""
    axis = node_output_channel_axis(node, weight.ndim)
    if axis is None:
        raise ValueError(f"{node.op_type} is not a weighted layer")
    channels = weight.shape[axis]
    if node.op_type == "ConvTranspose":
        channels *= int(node_attr(node, "group", 1))
    return channels


def conv_pads(node: onnx.NodeProto, sizes, kernel, strides, dilations) -> list[int]:
    """Explicit begin and end pads of a Conv (`[b1, b2, ..., e1, e2, ...]`), `auto_pad`
    resolved for input sizes `sizes`."""
    auto_pad = node_attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in node_attr(node, "pads", None) or [0] * (2 * len(kernel))]
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(large if auto_pad == "SAME_LOWER" else small)
        ends.append(small if auto_pad == "SAME_LOWER" else large)
    return begins + ends


def conv_output_size(size: int, before: int, after: int, kernel: int, stride: int, dilation: int):
    """Output length of a convolution along one spatial axis."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def conv_windows(x: np.ndarray, pads, kernel, dilations) -> np.ndarray:
    """The windows a 2-D convolution's kernel reads from its input `x` (N, C, H, W), padded by
    `pads` (top, left, bottom, right): a read-only view (N, C, H', W', kh, kw) whose
    [n, c, y, x] is the window starting at padded row y, column x, every start taken (a conv of
    stride s reads every s-th one)."""
    top, left, bottom, right = pads
    (kh, kw), (dh, dw) = kernel, dilations
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    return np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))[..., ::dh, ::dw]
