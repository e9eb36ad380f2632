"""Which ops get int8 kernels from ONNX Runtime's QDQ fusion, keyed by op type.

ORT's `QDQSelectorActionTransformer` turns `DQ -> op -> Q` groups into int8 kernels:
- weighted: Conv -> QLinearConv (Q output required), Gemm -> QGemm and MatMul -> QLinearMatMul
  or MatMulIntegerToFloat (Q output optional: without it the kernel writes float);
- unary (one DQ, one Q): AveragePool, GlobalAveragePool, LeakyRelu, Sigmoid, Softmax
  (QLinearSigmoid and QLinearLeakyRelu are 256-entry table lookups);
- binary (two DQ, one Q, same int type): Add, Mul; variadic: Concat;
- data movement ("drop" rules: DQ -> op -> Q with equal scale/zero point becomes the op on int8
  data): Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Gather, Slice, Expand, Tile, Resize,
  MaxPool (opset >= 12);
- Relu/Clip right after a weighted or QLinear op are made redundant by the Q's saturation.
Every other op type is opaque: it runs in float and the rewrite stops at it.
A group fuses only when the target's outputs feed nothing but its Q node and are no graph output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["weighted", "unary", "binary", "variadic", "move"]


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized.

    `activations`: input indices that carry activations (None: every input).
    `q_output`: the fused kernel needs a Q on the output ("always") or may write float ("optional").
    `cpu`: whether the CPU execution provider has the int8 kernel.
    `table`: the int8 kernel is a lookup table over the 256 input codes: from an int8 input,
    table + a DQ of its output costs less than a DQ + the float op (no exp per element), so an
    int8 input alone earns it int8, float readers or not.
    """

    kind: Kind
    activations: tuple[int, ...] | None = (0,)
    q_output: Literal["always", "optional", "shared"] = "always"
    cpu: bool = True
    min_opset: int = 1
    table: bool = False


RULES: dict[str, OpRule] = {
    "Conv": OpRule("weighted"),
    "ConvTranspose": OpRule("weighted", cpu=False),
    "Gemm": OpRule("weighted", q_output="optional"),
    "MatMul": OpRule("weighted", activations=(0, 1), q_output="optional"),
    "AveragePool": OpRule("unary"),
    "GlobalAveragePool": OpRule("unary"),
    "LeakyRelu": OpRule("unary", table=True),
    "Sigmoid": OpRule("unary", table=True),
    "Add": OpRule("binary", activations=(0, 1)),
    "Mul": OpRule("binary", activations=(0, 1)),
    "Concat": OpRule("variadic", activations=None),
    "Reshape": OpRule("move", q_output="shared"),
    "Flatten": OpRule("move", q_output="shared"),
    "Transpose": OpRule("move", q_output="shared"),
    "Squeeze": OpRule("move", q_output="shared"),
    "Unsqueeze": OpRule("move", q_output="shared"),
    "Gather": OpRule("move", q_output="shared"),
    "Slice": OpRule("move", q_output="shared"),
    "Expand": OpRule("move", q_output="shared"),
    "Tile": OpRule("move", q_output="shared"),
    "Resize": OpRule("move", q_output="shared"),
    "MaxPool": OpRule("move", q_output="shared", min_opset=12),
}
"""Op types with int8 kernels. Softmax has one (QLinearSoftmax) but stays float: its [0, 1]
output in 8 bits costs more accuracy than it saves time."""

ACTIVATION_OPS = ("Relu", "Clip")
"""Ops absorbed into the preceding Q when its range lies inside theirs."""

QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QGemm",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QAttention",
        "QOrderedMatMul",
        "MatMulNBits",
    }
)
"""Op types (any domain) whose presence means the model is already quantized."""
