"""Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
BitShift.

Quantized values are carried as float tensors holding integers (float32, float64 for float64
inputs), so gradients pass (see `nodes`); real integer tensors are accepted too.
- QuantizeLinear: clamp(round_ste(x / scale) + zero_point, qmin, qmax), round half to even as
  ONNX; round_ste rounds forward and passes the gradient straight through, so x and scale
  (LSQ-style) both train. qmin/qmax come from the zero point's ONNX type: `node.input_type(2)`,
  else the zero point tensor's own integer dtype, else the `output_dtype` attribute (21), else
  uint8. uint8, int8, uint16, int16, uint4, int4, uint2, int2 ranges; float8 and float4 targets are
  declined. Per-axis scales and zero points (`axis`, opset 13); `block_size` other than 0
  (blocked quantization, 21) is declined; `saturate` only concerns float8.
- DequantizeLinear: (x - zero_point) * scale, per-axis too, int32 inputs without zero point;
  float8/4-bit inputs whose type says so are declined.
- DynamicQuantizeLinear: uint8 range from min(0, min x) .. max(0, max x), as ONNX.
- MatMulInteger: (A - a_zero_point) @ (B - b_zero_point) on the carried values, so gradients
  reach both sides (quant's dynamic pattern, `onnxopt/quantization/dynamic.py`, trains through
  it). b_zero_point per column (1-D of N) as ONNX Runtime; a per-row a_zero_point, which ONNX
  Runtime refuses too, is declined. Sums are exact in float32 up to 2^24 (K <= 514 at the
  extremes of uint8 x int8), within float32 rounding beyond.
- BitShift: direction LEFT/RIGHT on uint8 (and uint16/uint32 through int64), bits shifted
  out of the type are lost, as the codebook decoder (`onnxopt/ir/codebook.py`) expects.

CARRIED_INPUTS / CARRIED_OUTPUTS say which inputs and outputs of each op are the integer
values carried as float (for the graph module that converts initializers and feeds).
"""

from __future__ import annotations

import onnx
import torch

from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported, axis_of

_T = onnx.TensorProto
RANGES = {
    _T.UINT8: (0, 255),
    _T.INT8: (-128, 127),
    _T.UINT16: (0, 65535),
    _T.INT16: (-32768, 32767),
    _T.UINT4: (0, 15),
    _T.INT4: (-8, 7),
    **({_T.UINT2: (0, 3), _T.INT2: (-2, 1)} if hasattr(_T, "INT2") else {}),
}
_TORCH_INTEGER = {
    torch.uint8: _T.UINT8,
    torch.int8: _T.INT8,
    torch.int16: _T.INT16,
    torch.uint16: _T.UINT16,
    torch.int32: _T.INT32,
}
_SMALL_FLOATS = frozenset(
    getattr(_T, name)
    for name in (
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT4E2M1",
        "FLOAT8E8M0",
    )
    if hasattr(_T, name)
)
CARRIED_INPUTS = {
    "QuantizeLinear": (2,),
    "DequantizeLinear": (0, 2),
    "MatMulInteger": (0, 1, 2, 3),
}
CARRIED_OUTPUTS = {"QuantizeLinear": (0,), "DynamicQuantizeLinear": (0, 2), "MatMulInteger": (0,)}


def round_ste(v: Tensor) -> Tensor:
    """Round half to even forward, identity backward (straight-through)."""
    return v + (torch.round(v) - v).detach()


def _carrier(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _along(t: Tensor | None, node: NodeView, rank: int, carrier: torch.dtype) -> Tensor | None:
    """A scale or zero point shaped to broadcast along the quantization axis."""
    if t is None:
        return None
    t = t.to(carrier)
    if t.dim() == 1 and t.numel() > 1 and rank > 1:
        axis = axis_of(node.attr("axis", 1), rank)
        return t.reshape([-1 if d == axis else 1 for d in range(rank)])
    return t


def _blocked(node: NodeView) -> None:
    if node.attr("block_size", 0):
        raise Unsupported(f"{node.op_type} with block_size={node.attr('block_size')}")


def _zero_point_type(node: NodeView, zero_point: Tensor | None) -> int:
    declared = node.input_type(2)
    if declared:
        return declared
    if zero_point is not None and zero_point.dtype in _TORCH_INTEGER:
        return _TORCH_INTEGER[zero_point.dtype]
    return node.attr("output_dtype", 0) or _T.UINT8


def quantize_linear(node: NodeView, inputs: Inputs) -> list[Tensor]:
    _blocked(node)
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    kind = _zero_point_type(node, zero_point)
    if kind not in RANGES:
        raise Unsupported(f"QuantizeLinear to {_T.DataType.Name(kind)}")
    qmin, qmax = RANGES[kind]
    carrier = _carrier(x)
    q = round_ste(x.to(carrier) / _along(scale, node, x.dim(), carrier))
    if zero_point is not None:
        q = q + _along(zero_point, node, x.dim(), carrier)
    return [q.clamp(qmin, qmax)]


def dequantize_linear(node: NodeView, inputs: Inputs) -> list[Tensor]:
    _blocked(node)
    declared = node.input_type(0)
    if declared in _SMALL_FLOATS:
        raise Unsupported(f"DequantizeLinear from {_T.DataType.Name(declared)}")
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    if zero_point is not None and not x.is_floating_point() and not zero_point.is_floating_point():
        x, zero_point = x.long() - _along(zero_point, node, x.dim(), torch.int64), None
    carrier = torch.float64 if scale.dtype == torch.float64 else torch.float32
    shifted = x.to(carrier)
    if zero_point is not None:
        shifted = shifted - _along(zero_point, node, x.dim(), carrier)
    return [(shifted * _along(scale, node, x.dim(), carrier)).to(scale.dtype)]


def dynamic_quantize_linear(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (high - low) / 255
    zero_point = torch.round(-low / scale).clamp(0, 255)
    y = (round_ste(x / scale) + zero_point).clamp(0, 255)
    return [y, scale, zero_point]


def matmul_integer(node: NodeView, inputs: Inputs) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    a_zero = inputs[2] if len(inputs) > 2 else None
    b_zero = inputs[3] if len(inputs) > 3 else None
    carrier = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.to(carrier), b.to(carrier)
    if a_zero is not None:
        if a_zero.numel() != 1:
            raise Unsupported("MatMulInteger with a per-row a_zero_point")
        a = a - a_zero.to(carrier).reshape(())
    if b_zero is not None:
        if b_zero.dim() > 1:
            raise Unsupported("MatMulInteger with a b_zero_point of more than one axis")
        b = b - b_zero.to(carrier)  # scalar, or one per column: the last axis
    return [torch.matmul(a, b)]


def bit_shift(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, amount = inputs[0], inputs[1]
    direction = node.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise Unsupported(f"BitShift direction={direction}")
    if x.dtype == torch.uint64:
        raise Unsupported("BitShift on uint64 (torch has no shifts on it)")
    wide = x.dtype in (torch.uint16, torch.uint32)
    a, b = (x.long(), amount.long()) if wide else (x, amount)
    y = a << b if direction == "LEFT" else a >> b
    return [y.to(x.dtype)]


HANDLERS = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    "MatMulInteger": matmul_integer,
    "BitShift": bit_shift,
}

ATTRIBUTES = {
    "QuantizeLinear": frozenset({"axis", "saturate", "block_size", "output_dtype"}),
    "DequantizeLinear": frozenset({"axis", "block_size"}),
    "DynamicQuantizeLinear": frozenset(),
    "MatMulInteger": frozenset(),
    "BitShift": frozenset({"direction"}),
}
