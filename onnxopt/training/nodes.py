"""One ONNX node as the torch view sees it: its decoded attributes, its opset, its handler type.

A handler computes a node's outputs from its inputs in torch, differentiably where the op is:
`handler(node, inputs) -> list of outputs`, one per node output (trailing optional outputs
that the graph does not use may be omitted; a handler may also return optional outputs the
node does not declare, e.g. LayerNormalization's statistics: callers pair outputs with
`node.output` by position). `inputs` holds one tensor per node input, None for
an omitted optional input. Conventions shared by every handler:

- Tensors keep their ONNX element type, except quantized values: uint8/int8/int32 values that
  flow into or out of QuantizeLinear/DequantizeLinear are carried as float32 holding integers,
  so that gradients pass through them (straight-through rounding, see `ops_quant`).
- Inputs that ONNX defines as shapes, axes, pads, starts... arrive as int64 tensors; a handler
  reads them with `ints(tensor)`.
- Attributes that moved to inputs across opsets (Split's `split`, Reduce*'s `axes`, Pad's
  `pads`, Clip's `min`/`max`, Squeeze/Unsqueeze `axes`, Resize's `scales`...) are read from
  wherever `node.opset` puts them.
- `NodeView.input_types` holds the ONNX element type (`onnx.TensorProto.UINT8`...) of each input,
  0 where unknown: a handler reads it with `node.input_type(i)` when the carried tensor does not
  say it (QuantizeLinear's range comes from its zero point's ONNX type, which arrives as float32).
- A handler that meets a dtype, attribute value or input it cannot run exactly raises
  `Unsupported`; tensors it creates live on its inputs' device (Constant, which has no inputs,
  makes CPU tensors: the caller moves or folds them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from onnx import helper, numpy_helper

Tensor = torch.Tensor
Inputs = Sequence[Tensor | None]


@dataclass(frozen=True)
class NodeView:
    """`node` with its attributes decoded and the opset of its domain."""

    node: onnx.NodeProto
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    input_types: tuple[int, ...] = ()
    """ONNX element type (TensorProto.FLOAT, UINT8...) of each input; 0 or missing: unknown."""

    @classmethod
    def of(cls, node: onnx.NodeProto, opset: int, input_types: Sequence[int] = ()) -> NodeView:
        attrs = {}
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            if isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
            elif isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            attrs[attribute.name] = value
        return cls(node, opset, attrs, tuple(int(t) for t in input_types))

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def input_type(self, index: int) -> int:
        """The ONNX element type of input `index`, 0 when unknown."""
        return self.input_types[index] if index < len(self.input_types) else 0

    @property
    def name(self) -> str:
        return self.node.name or (self.node.output[0] if self.node.output else "")

    def wants_output(self, index: int) -> bool:
        """Whether the node declares output `index` with a name (optional outputs)."""
        return index < len(self.node.output) and bool(self.node.output[index])


Handler = Callable[[NodeView, Inputs], list[Tensor]]


class Unsupported(Exception):
    """A node the torch view cannot run exactly as ONNX defines it; the message names it."""


TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}
"""The ONNX element types a handler computes in (torch lacks arithmetic on uint16/32/64)."""


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of ONNX element type `onnx_type`; Unsupported for the others."""
    if onnx_type not in TORCH_DTYPES:
        known = onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in known else f"#{onnx_type}"
        raise Unsupported(f"element type {name} has no exact torch counterpart")
    return TORCH_DTYPES[onnx_type]


def ints(tensor: Tensor | None) -> list[int]:
    """An int64 shape/axes/pads input as a Python list ([] for an omitted input)."""
    if tensor is None:
        return []
    return [int(v) for v in tensor.reshape(-1).tolist()]


def ints_moved(
    node: NodeView, inputs: Inputs, name: str, index: int, since: int
) -> list[int] | None:
    """Ints of attribute `name` before opset `since`, of input `index` from it on; None when
    the node omits them (attributes that moved to inputs: Squeeze's axes, Split's split...)."""
    if node.opset < since:
        value = node.attr(name)
        return None if value is None else [int(v) for v in value]
    tensor = inputs[index] if index < len(inputs) else None
    return None if tensor is None else ints(tensor)


def axis_of(axis: int, rank: int) -> int:
    """A possibly negative ONNX axis as an index in [0, rank)."""
    return axis + rank if axis < 0 else axis
