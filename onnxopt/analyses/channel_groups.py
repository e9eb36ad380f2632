"""Channel dependency groups: which channels of which tensors must be removed together.

Removing output channel c of a Conv forces the same removal wherever that channel flows:
through BatchNorm and activations, across a residual Add (both producers), into a Concat (at an
offset), and finally into the consumers (the next Conv's input channels, the Gemm's features
after a Flatten). This analysis walks the main graph once in topological order and, per op
type (the table in `channel_rules`), records

- a *layout* per tensor that carries channels: its channel axis and which range of which
  group each channel is (`Layout.segments`; a Concat output has several segments, a Flatten
  output has `block` features per channel);
- *groups* (union-find over coupled channel sets), each with the layers that create its
  channels (`sources`) and the reasons it must not be pruned;
- per node, the constants to slice and the attributes to fix when channels go (`NodeRole`).

An op type not in the table is opaque: every group it reads is blocked and the reason names
the op. Graph outputs are never pruned. The analysis only reads the model.
"""

from __future__ import annotations

import onnx

from onnxopt.analyses.channel_model import (
    Builder,
    ChannelGroup,
    ChannelGroups,
    Consumer,
    Fixup,
    Layout,
    NodeRole,
    ParamSlice,
    Segment,
    Source,
    kept_entries,
)
from onnxopt.analyses.channel_rules import RULES
from onnxopt.ir.graph import is_onnx_domain
from onnxopt.ir.shapes import ShapeInfo, infer_shapes

__all__ = [
    "Builder",
    "ChannelGroup",
    "ChannelGroups",
    "Consumer",
    "Fixup",
    "Layout",
    "NodeRole",
    "ParamSlice",
    "Segment",
    "Source",
    "analyze_channel_groups",
    "kept_entries",
]


def analyze_channel_groups(
    model: onnx.ModelProto, shapes: ShapeInfo | None = None
) -> ChannelGroups:
    """Compute the channel groups of `model`'s main graph (read-only)."""
    builder = Builder(model, shapes if shapes is not None else infer_shapes(model))
    for position, node in enumerate(model.graph.node):
        rule = RULES.get(node.op_type) if is_onnx_domain(node) else None
        name = builder.node_name(node)
        if builder.implicit_inputs(node):
            builder.opaque(node, f"{node.op_type} '{name}' reads it inside a subgraph")
        elif rule is None:
            reason = f"read by {node.op_type} '{name}', which the channel table does not cover"
            builder.opaque(node, reason)
        else:
            rule(builder, position, node)
    for output in model.graph.output:
        builder.block_tensor(output.name, f"it reaches graph output '{output.name}'")
    return builder.finish()
