"""Quantization parameters: affine 8-bit activations, symmetric int8 weights, int32 biases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.numerics.rounding import INT8_WEIGHT_MAX

__all__ = ["INT8_WEIGHT_MAX"]
INT32_MAX = 2**31 - 1
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class ActivationParams:
    scale: float
    zero_point: int
    dtype: np.dtype

    def fake_quantize(self, values: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        q = np.clip(np.round(values / self.scale) + self.zero_point, info.min, info.max)
        return ((q - self.zero_point) * self.scale).astype(np.float32)


def activation_params(
    lo: float, hi: float, dtype: np.dtype, *, symmetric: bool = False
) -> ActivationParams:
    """Scale and zero point covering [lo, hi] (widened to contain 0) with `dtype` (u8 or i8)."""
    dtype = np.dtype(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    info = np.iinfo(dtype)
    if symmetric:
        bound = max(-lo, hi)
        if dtype == np.int8:
            scale = bound / INT8_WEIGHT_MAX
            return ActivationParams(_safe(scale), 0, dtype)
        scale = 2 * bound / (info.max - info.min)
        return ActivationParams(_safe(scale), (info.max + info.min + 1) // 2, dtype)
    scale = _safe((hi - lo) / (info.max - info.min))
    zero_point = int(np.clip(round(info.min - lo / scale), info.min, info.max))
    return ActivationParams(scale, zero_point, dtype)


def _safe(scale: float) -> float:
    scale = float(np.float32(scale))
    return scale if scale > MIN_SCALE else 1.0


def weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales: one per slice along `axis`, or a single one (axis None)."""
    w = np.abs(weight.astype(np.float64))
    if axis is None:
        peak = np.array(w.max() if w.size else 0.0)
    else:
        peak = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(axis=1)
    scales = peak / INT8_WEIGHT_MAX
    return np.where(scales > MIN_SCALE, scales, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.round(weight.astype(np.float64) / scales.astype(np.float64).reshape(shape))
    return np.clip(q, -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)


def bias_safe_scales(bias: np.ndarray, x_scale: float, scales: np.ndarray) -> np.ndarray:
    """Weight scales raised where the int32 bias (scale x_scale * w_scale) would overflow."""
    needed = np.abs(bias.astype(np.float64)) / (np.float64(x_scale) * (INT32_MAX // 2))
    if scales.size == 1:
        needed = needed.max(initial=0.0)
    return np.maximum(scales, needed.astype(np.float32)).astype(np.float32)


def quantize_bias(
    bias: np.ndarray, x_scale: float, w_scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, its float32 scales x_scale * w_scale) as QLinearConv/QGemm expect."""
    scales = (np.float32(x_scale) * w_scales.astype(np.float32)).astype(np.float32)
    scales = np.broadcast_to(scales, bias.shape).astype(np.float32)
    q = np.round(bias.astype(np.float64) / scales.astype(np.float64))
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32), scales
