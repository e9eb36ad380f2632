"""Resize and Upsample, computed one axis at a time from ONNX's coordinate formulas.

Each resized axis maps its output positions to source coordinates (float64, shape-only work)
with the node's coordinate_transformation_mode (half_pixel, half_pixel_symmetric,
pytorch_half_pixel, align_corners, asymmetric, tf_crop_and_resize with roi and
extrapolation_value), then gathers along the axis (index_select: differentiable):
- nearest: nearest_mode round_prefer_floor, round_prefer_ceil, floor, ceil;
- linear: two taps, weights 1 - r and r, edges clamped;
- cubic: four taps, cubic_coeff_a, exclude_outside (weights of taps outside renormalized).
Scales or sizes (one of them), `axes` (18) and keep_aspect_ratio_policy stretch / not_larger /
not_smaller (18, sizes rounded half up as the ONNX reference). Opset 10 Resize and Upsample
(opset 7 `scales` attribute, 9 input) use asymmetric coordinates and, for nearest, ONNX
Runtime's rule for them (floor when upsampling, ceil when downsampling).
Declined: antialias=1 (a scale-dependent filter), linear or cubic on integer inputs (the
rounding back to integers is not specified the same way by ONNX and ONNX Runtime).
"""

from __future__ import annotations

import torch

from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported, axis_of, ints


def _floats(t: Tensor | None) -> list[float]:
    return [] if t is None else [float(v) for v in t.reshape(-1).tolist()]


def _optional(inputs: Inputs, index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def _plan(node: NodeView, x: Tensor, inputs: Inputs) -> tuple[list[int], list[float], list]:
    """Output size, scale and roi (start, end) of every axis."""
    rank = x.dim()
    if node.op_type == "Upsample" or node.opset < 11:
        given = node.attr("scales") if node.opset < 9 else _floats(inputs[1])
        scales, sizes, roi = list(given), [], []
    else:
        roi, scales = _floats(_optional(inputs, 1)), _floats(_optional(inputs, 2))
        sizes = ints(_optional(inputs, 3))
    axes = [axis_of(a, rank) for a in node.attr("axes", range(rank))]
    full_roi = [(0.0, 1.0)] * rank
    for i, axis in enumerate(axes[: len(roi) // 2]):
        full_roi[axis] = (roi[i], roi[i + len(axes)])
    out, factors = list(x.shape), [1.0] * rank
    if sizes:
        ratios = [sizes[i] / x.shape[a] for i, a in enumerate(axes)]
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            kept = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [kept] * len(axes)
            sizes = [int(kept * x.shape[a] + 0.5) for a in axes]
        for i, axis in enumerate(axes):
            out[axis], factors[axis] = sizes[i], ratios[i]
    else:
        for i, axis in enumerate(axes):
            out[axis], factors[axis] = int(scales[i] * x.shape[axis]), scales[i]
    return out, factors, full_roi


def _source(node: NodeView, out: int, length: int, scale: float, roi, device) -> Tensor:
    """Source coordinate (float64) of each output position along one axis."""
    y = torch.arange(out, dtype=torch.float64, device=device)
    mode = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.op_type == "Upsample" or node.opset < 11:
        mode = "asymmetric"
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = length / 2 * (1 - out / (scale * length))
        return offset + (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if out > 1 else torch.full_like(y, -0.5)
    if mode == "align_corners":
        return y * (length - 1) / (out - 1) if out > 1 else torch.zeros_like(y)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out == 1:
            return torch.full_like(y, (end - start) * (length - 1) / 2 + start * (length - 1))
        return y * (end - start) * (length - 1) / (out - 1) + start * (length - 1)
    raise Unsupported(f"Resize coordinate_transformation_mode={mode}")


def _nearest(node: NodeView, source: Tensor, scale: float) -> Tensor:
    if node.op_type == "Upsample" or node.opset < 11:
        return torch.ceil(source) if scale < 1 else torch.floor(source)
    mode = node.attr("nearest_mode", "round_prefer_floor")
    if mode == "round_prefer_floor":
        return torch.ceil(source - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(source + 0.5)
    if mode in ("floor", "ceil"):
        return torch.floor(source) if mode == "floor" else torch.ceil(source)
    raise Unsupported(f"Resize nearest_mode={mode}")


def _cubic_weights(ratio: Tensor, a: float) -> list[Tensor]:
    """Weights of the taps at floor - 1, floor, floor + 1, floor + 2 for fractions `ratio`."""

    def near(d: Tensor) -> Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: Tensor) -> Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(ratio + 1), near(ratio), near(1 - ratio), far(2 - ratio)]


def _taps(node: NodeView, source: Tensor, length: int) -> tuple[Tensor, list[Tensor]]:
    """(tap indices before clamping, (out, taps)) and their weights for linear and cubic."""
    low = torch.floor(source)
    ratio = source - low
    if node.attr("mode", "nearest") == "linear":
        return low.long().unsqueeze(1) + torch.arange(2, device=source.device), [1 - ratio, ratio]
    indices = low.long().unsqueeze(1) + torch.arange(-1, 3, device=source.device)
    weights = torch.stack(_cubic_weights(ratio, node.attr("cubic_coeff_a", -0.75)), 1)
    if node.attr("exclude_outside", 0):
        weights = weights * ((indices >= 0) & (indices < length))
        weights = weights / weights.sum(1, keepdim=True)
    return indices, list(weights.unbind(1))


def _resize_axis(node: NodeView, x: Tensor, axis: int, out: int, scale: float, roi) -> Tensor:
    length = x.shape[axis]
    source = _source(node, out, length, scale, roi, x.device)
    mode = node.attr("mode", "nearest")
    view = [out if d == axis else 1 for d in range(x.dim())]
    if mode == "nearest":
        picked = _nearest(node, source, scale).long().clamp(0, length - 1)
        y = x.index_select(axis, picked)
    else:
        indices, weights = _taps(node, source, length)
        indices = indices.clamp(0, length - 1)
        y = sum(
            x.index_select(axis, indices[:, i]) * w.to(x.dtype).reshape(view)
            for i, w in enumerate(weights)
        )
    if node.attr("coordinate_transformation_mode") == "tf_crop_and_resize" and node.opset >= 11:
        outside = ((source < 0) | (source > length - 1)).reshape(view)
        fill = torch.tensor(node.attr("extrapolation_value", 0.0), dtype=x.dtype, device=x.device)
        y = torch.where(outside, fill, y)
    return y


def resize(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
        raise Unsupported(f"{node.op_type} mode={mode}")
    if node.attr("antialias", 0):
        raise Unsupported(f"{node.op_type} antialias=1")
    if mode != "nearest" and not x.is_floating_point():
        raise Unsupported(f"{node.op_type} mode={mode} on integer input")
    if mode in ("bilinear", "trilinear"):  # Upsample-7's names of linear
        node = NodeView(node.node, node.opset, {**node.attrs, "mode": "linear"}, node.input_types)
    out, scales, roi = _plan(node, x, inputs)
    for axis in range(x.dim()):
        if out[axis] != x.shape[axis] or scales[axis] != 1.0 or roi[axis] != (0.0, 1.0):
            x = _resize_axis(node, x, axis, out[axis], scales[axis], roi[axis])
    return [x]


HANDLERS = {"Resize": resize, "Upsample": resize}

ATTRIBUTES = {
    "Resize": frozenset(
        {
            "mode",
            "coordinate_transformation_mode",
            "nearest_mode",
            "cubic_coeff_a",
            "exclude_outside",
            "extrapolation_value",
            "antialias",
            "axes",
            "keep_aspect_ratio_policy",
        }
    ),
    "Upsample": frozenset({"mode", "scales"}),
}
