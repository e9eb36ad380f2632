"""Elementwise arithmetic, activations, comparisons, logic, Cast, Clip, Identity, Dropout, Einsum.

Covered (numpy broadcasting everywhere, as ONNX from opset 7):
- Add, Sub, Mul, Div (integer division truncates toward zero, as ONNX Runtime), Pow (result
  in the base's type), Mod (fmod), Min, Max, Sum, Mean (variadic), BitwiseAnd/Or/Xor/Not.
  uint16/uint32 operands are computed in int64 and wrapped back (torch has no arithmetic on
  them); uint64 is declined.
- Unary: Abs, Neg, Sqrt, Exp, Log, Reciprocal, Floor, Ceil, Round (half to even), Sign, Erf,
  the trigonometric and hyperbolic functions, IsNaN, IsInf (detect_negative/positive).
- Activations: Relu, LeakyRelu, PRelu, Elu, Selu, Celu, ThresholdedRelu, Sigmoid, HardSigmoid,
  HardSwish, Tanh, Softplus, Softsign, Mish, Shrink, Gelu (approximate none/tanh). Branches
  use clamps, not where(), so no infinite branch poisons a gradient.
- Clip: min/max attributes before opset 11, optional inputs from it; min > max gives max.
- Equal, Less, LessOrEqual, Greater, GreaterOrEqual, Where, Not, And, Or, Xor.
- Cast, CastLike: to the types in `nodes.TORCH_DTYPES` (float to int truncates toward zero);
  string and float8 targets are declined; saturate (float8 only) is accepted and unused.
- Identity; Dropout in inference (identity, mask of ones if asked; training_mode=true
  declined); Einsum through torch.einsum.
Old-opset broadcasting attributes (`broadcast`, `axis`, opset < 7) and `consumed_inputs`
(opset 1) are not in ATTRIBUTES, so such nodes are declined.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from onnxopt.training.nodes import Inputs, NodeView, Tensor, Unsupported, ints, torch_dtype

_WIDE_UNSIGNED = (torch.uint16, torch.uint32)


def _computed(fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """fn(*tensors); uint16/uint32 go through int64 and wrap back, uint64 is declined."""
    dtype = tensors[0].dtype
    if dtype == torch.uint64:
        raise Unsupported("uint64 arithmetic (torch has none)")
    if dtype not in _WIDE_UNSIGNED:
        return fn(*tensors)
    result = fn(*(t.to(torch.int64) for t in tensors))
    return result if result.dtype == torch.bool else result.to(dtype)


def _binary(fn: Callable[[Tensor, Tensor], Tensor]):
    def handler(node: NodeView, inputs: Inputs) -> list[Tensor]:
        return [_computed(fn, inputs[0], inputs[1])]

    return handler


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]):
    def handler(node: NodeView, inputs: Inputs) -> list[Tensor]:
        present = [t for t in inputs if t is not None]
        return [_computed(lambda *ts: functools.reduce(fn, ts), *present)]

    return handler


def _unary(fn: Callable[[Tensor], Tensor]):
    def handler(node: NodeView, inputs: Inputs) -> list[Tensor]:
        return [_computed(fn, inputs[0])]

    return handler


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def pow_(node: NodeView, inputs: Inputs) -> list[Tensor]:
    base, exponent = inputs[0], inputs[1]
    return [torch.pow(base, exponent).to(base.dtype)]


def mod(node: NodeView, inputs: Inputs) -> list[Tensor]:
    fn = torch.fmod if node.attr("fmod", 0) else torch.remainder
    return [_computed(fn, inputs[0], inputs[1])]


def mean(node: NodeView, inputs: Inputs) -> list[Tensor]:
    present = [t for t in inputs if t is not None]
    return [functools.reduce(torch.add, present) / len(present)]


def _negative_part(x: Tensor) -> Tensor:
    return x.clamp(max=0)


def leaky_relu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [F.leaky_relu(inputs[0], node.attr("alpha", 0.01))]


def prelu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, slope = inputs[0], inputs[1]
    return [x.clamp(min=0) + slope * _negative_part(x)]


def elu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, alpha = inputs[0], node.attr("alpha", 1.0)
    return [x.clamp(min=0) + alpha * (torch.exp(_negative_part(x)) - 1)]


def selu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return [gamma * (x.clamp(min=0) + alpha * (torch.exp(_negative_part(x)) - 1))]


def celu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, alpha = inputs[0], node.attr("alpha", 1.0)
    return [x.clamp(min=0) + alpha * (torch.exp(_negative_part(x) / alpha) - 1)]


def thresholded_relu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [x * (x > node.attr("alpha", 1.0)).to(x.dtype)]


def hard_sigmoid(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [(x * node.attr("alpha", 0.2) + node.attr("beta", 0.5)).clamp(0, 1)]


def hard_swish(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    return [x * (x * (1 / 6) + 0.5).clamp(0, 1)]


def shrink(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x, bias, lambd = inputs[0], node.attr("bias", 0.0), node.attr("lambd", 0.5)
    low, high = (x < -lambd).to(x.dtype), (x > lambd).to(x.dtype)
    return [(low * (x + bias) + high * (x - bias)).to(x.dtype)]


def gelu(node: NodeView, inputs: Inputs) -> list[Tensor]:
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"Gelu approximate={approximate}")
    return [F.gelu(inputs[0], approximate=approximate)]


def is_inf(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    negative = torch.isneginf(x) if node.attr("detect_negative", 1) else torch.zeros_like(x) > 0
    positive = torch.isposinf(x) if node.attr("detect_positive", 1) else torch.zeros_like(x) > 0
    return [negative | positive]


def clip(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    if low is None and high is None:
        return [x]
    low, high = (
        None if v is None else torch.as_tensor(v, dtype=x.dtype, device=x.device)
        for v in (low, high)
    )
    return [torch.clamp(x, low, high)]


def where(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [torch.where(inputs[0], inputs[1], inputs[2])]


def cast(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].to(torch_dtype(node.attr("to")))]


def cast_like(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


def identity(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [inputs[0]]


def dropout(node: NodeView, inputs: Inputs) -> list[Tensor]:
    x = inputs[0]
    training = inputs[2] if len(inputs) > 2 else None
    if (training is not None and any(ints(training))) or node.attr("is_test", 1) == 0:
        raise Unsupported("Dropout in training mode (random mask)")
    if not node.wants_output(1):
        return [x]
    return [x, torch.ones_like(x, dtype=torch.bool if node.opset >= 10 else x.dtype)]


def einsum(node: NodeView, inputs: Inputs) -> list[Tensor]:
    return [torch.einsum(node.attr("equation").replace(" ", ""), *inputs)]


_UNARY = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Erf": torch.erf,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "IsNaN": torch.isnan,
    "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not,
}
_BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _divide,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}
_VARIADIC = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum}

HANDLERS = {
    **{op: _unary(fn) for op, fn in _UNARY.items()},
    **{op: _binary(fn) for op, fn in _BINARY.items()},
    **{op: _variadic(fn) for op, fn in _VARIADIC.items()},
    "Pow": pow_,
    "Mod": mod,
    "Mean": mean,
    "LeakyRelu": leaky_relu,
    "PRelu": prelu,
    "Elu": elu,
    "Selu": selu,
    "Celu": celu,
    "ThresholdedRelu": thresholded_relu,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Shrink": shrink,
    "Gelu": gelu,
    "IsInf": is_inf,
    "Clip": clip,
    "Where": where,
    "Cast": cast,
    "CastLike": cast_like,
    "Identity": identity,
    "Dropout": dropout,
    "Einsum": einsum,
}

ATTRIBUTES = {
    **{op: frozenset() for op in HANDLERS},
    "Mod": frozenset({"fmod"}),
    "LeakyRelu": frozenset({"alpha"}),
    "Elu": frozenset({"alpha"}),
    "Selu": frozenset({"alpha", "gamma"}),
    "Celu": frozenset({"alpha"}),
    "ThresholdedRelu": frozenset({"alpha"}),
    "HardSigmoid": frozenset({"alpha", "beta"}),
    "Shrink": frozenset({"bias", "lambd"}),
    "Gelu": frozenset({"approximate"}),
    "IsInf": frozenset({"detect_negative", "detect_positive"}),
    "Clip": frozenset({"min", "max"}),
    "Cast": frozenset({"to", "saturate"}),
    "CastLike": frozenset({"saturate"}),
    "Dropout": frozenset({"ratio", "seed", "is_test"}),
    "Einsum": frozenset({"equation"}),
}
