"""Builders for QuantizeLinear/DequantizeLinear nodes and unique names (no graph logic)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper


def quantize_node(
    name: str, source: str, scale: str, zero_point: str, output: str
) -> onnx.NodeProto:
    return onnx.helper.make_node("QuantizeLinear", [source, scale, zero_point], [output], name=name)


def dequantize_node(
    name: str, source: str, scale: str, zero_point: str, output: str, axis: int | None = None
) -> onnx.NodeProto:
    kwargs = {} if axis is None else {"axis": axis}
    return onnx.helper.make_node(
        "DequantizeLinear", [source, scale, zero_point], [output], name=name, **kwargs
    )


def add_initializers(graph: onnx.GraphProto, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
    """Append initializers; 0-d arrays stay scalars (QLinear kernels require scalar scales)."""
    for name, value in tensors:
        array = np.asarray(value)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        graph.initializer.append(numpy_helper.from_array(array, name))


def ensure_node_names(graph: onnx.GraphProto) -> int:
    """Give every unnamed or duplicate-named node a unique name; return how many were renamed."""
    seen: set[str] = set()
    taken = {node.name for node in graph.node if node.name}
    renamed = 0
    for position, node in enumerate(graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{position}"
        name, counter = base, 1
        while name in taken or name in seen:
            name, counter = f"{base}_{counter}", counter + 1
        node.name = name
        seen.add(name)
        taken.add(name)
        renamed += 1
    return renamed
