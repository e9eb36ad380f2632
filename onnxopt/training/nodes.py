"""One ONNX node as the torch view sees it: its decoded attributes, its opset, its handler type.

A handler computes a node's outputs from its inputs in torch, differentiably where the op is:
`handler(node, inputs) -> list of outputs`, one per node output (trailing optional outputs
that the graph does not use may be omitted). `inputs` holds one tensor per node input, None for
an omitted optional input. Conventions shared by every handler:

- Tensors keep their ONNX element type, except quantized values: uint8/int8/int32 values that
  flow into or out of QuantizeLinear/DequantizeLinear are carried as float32 holding integers,
  so that gradients pass through them (straight-through rounding, see `ops_quant`).
- Inputs that ONNX defines as shapes, axes, pads, starts... arrive as int64 tensors; a handler
  reads them with `ints(tensor)`.
- Attributes that moved to inputs across opsets (Split's `split`, Reduce*'s `axes`, Pad's
  `pads`, Clip's `min`/`max`, Squeeze/Unsqueeze `axes`, Resize's `scales`...) are read from
  wherever `node.opset` puts them.
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

    @classmethod
    def of(cls, node: onnx.NodeProto, opset: int) -> NodeView:
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
        return cls(node, opset, attrs)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


Handler = Callable[[NodeView, Inputs], list[Tensor]]


class Unsupported(Exception):
    """A node the torch view cannot run exactly as ONNX defines it; the message names it."""


def ints(tensor: Tensor | None) -> list[int]:
    """An int64 shape/axes/pads input as a Python list ([] for an omitted input)."""
    if tensor is None:
        return []
    return [int(v) for v in tensor.reshape(-1).tolist()]
