"""Which constant tensors are layer weights, and along which axis their output channels run.

A tensor counts as a weight only when every reader uses it in a weight slot of an op in
`WEIGHT_SLOTS` (Conv filters, Gemm/MatMul matrices, embedding tables, RNN matrices): a tensor
that is also read as a shape, a scale, a Resize factor or by an op outside the table, that is a
graph output, shadowed by a graph input, or read inside a subgraph, is not touched. A Transpose
whose readers all use it as a weight (a deduplicated tied embedding) counts as a weight use.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.analyses.input_moments import LayerInput, layer_input
from onnxopt.ir.edit import subgraph_outer_reads
from onnxopt.ir.graph import GraphIndex, is_onnx_domain, node_attr
from onnxopt.ir.layers import node_output_channel_axis

WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "Gather": (0,),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
SHAREABLE_DTYPES = (np.float32, np.float16, np.float64)


@dataclass
class Weight:
    tensor: str
    value: np.ndarray
    readers: list[str]  # node names
    axis: int | None  # output-channel axis, None where no single one applies
    layer: LayerInput | None = None  # set when one Conv/Gemm/MatMul reads it as its weight
    trans_b: bool = False


@dataclass
class WeightScan:
    weights: list[Weight] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_weights(
    model: onnx.ModelProto, min_elements: int, exclude: tuple[str, ...] = ()
) -> WeightScan:
    """The shareable weights of the main graph with at least `min_elements` values."""
    graph = model.graph
    index = GraphIndex(graph)
    inner_reads = set().union(*(subgraph_outer_reads(n) for n in graph.node))
    scan = WeightScan()
    names = [t.name for t in graph.initializer]
    names += [n.output[0] for n in graph.node if n.op_type == "Constant" and is_onnx_domain(n)]
    for name in names:
        value = index.constant(name)
        if value is None or value.dtype.type not in SHAREABLE_DTYPES or value.size < min_elements:
            continue
        readers = index.consumers.get(name, [])
        reason = _refusal(name, readers, index, inner_reads, exclude)
        if reason is not None:
            scan.skipped.append(f"weight '{name}' {value.shape} not shared: {reason}")
            continue
        scan.weights.append(_describe(name, value, readers))
    return scan


def _refusal(name, readers, index: GraphIndex, inner_reads, exclude) -> str | None:
    if name in index.graph_outputs:
        return "it is a graph output"
    if name in inner_reads:
        return "a subgraph reads it"
    if not readers:
        return "nothing reads it"
    for node in readers:
        if _weight_view(node, index):
            continue
        slots = WEIGHT_SLOTS.get(node.op_type) if is_onnx_domain(node) else None
        used_at = [i for i, x in enumerate(node.input) if x == name]
        if slots is None or any(i not in slots for i in used_at):
            return f"{node.op_type} '{node.name}' reads it as a non-weight input"
        if any(fnmatch.fnmatchcase(node.name, p) or node.op_type == p for p in exclude):
            return f"reader '{node.name}' is excluded"
    if any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return "excluded"
    return None


def _weight_view(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A Transpose (left by deduplication) whose readers all use its output as a weight."""
    if node.op_type != "Transpose" or not is_onnx_domain(node):
        return False
    out = node.output[0]
    readers = index.consumers.get(out, [])
    return (
        bool(readers)
        and out not in index.graph_outputs
        and all(
            is_onnx_domain(r)
            and r.op_type in WEIGHT_SLOTS
            and all(i in WEIGHT_SLOTS[r.op_type] for i, x in enumerate(r.input) if x == out)
            for r in readers
        )
    )


def _describe(name: str, value: np.ndarray, readers: list[onnx.NodeProto]) -> Weight:
    axes = {_channel_axis(node, name, value) for node in readers}
    axis = axes.pop() if len(axes) == 1 else None
    weight = Weight(name, value, [n.name for n in readers], axis)
    if len(readers) == 1 and len(readers[0].input) > 1 and readers[0].input[1] == name:
        node = readers[0]
        if node.op_type in ("Conv", "Gemm", "MatMul") and value.ndim in (2, 4):
            weight.layer = layer_input(node, value)
            weight.trans_b = bool(node_attr(node, "transB", 0))
    return weight


def _channel_axis(node: onnx.NodeProto, name: str, value: np.ndarray) -> int | None:
    slot = list(node.input).index(name)
    if node.op_type == "Conv" or (
        slot == 1 and (node.op_type == "Gemm" or (node.op_type == "MatMul" and value.ndim == 2))
    ):
        return node_output_channel_axis(node, value.ndim)
    return None
