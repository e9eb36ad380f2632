"""Find codebook decoders: a constant table gathered by indices computed from constants only.

Also the views of a shared constant (see `compressed_tensors`).

This is the form `share` writes (see `onnxopt.ir.codebook`), recognized by structure, not
by name: Gather(table, f(constants)) or GatherElements(table, f(constants)), the table a
constant or a Mul of two constants (a book times per-channel scales), optionally followed by a
Mul by constant scales and a Reshape to the weight's shape. Constant folding must leave these
alone (folding would undo the compression), and `quant` needs the decoded values and the
indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, has_subgraph_attribute, is_onnx_domain, node_attr

MAX_DECODER_NODES = 64


@dataclass
class Decoder:
    output: str  # the decoded weight
    nodes: list[onnx.NodeProto]  # every node of the decoder, in graph order
    table: str  # the codebook: a constant, or computed by the first of `nodes`
    indices: str  # the gather's index tensor
    gathered: str  # the gather's output
    op_type: str  # Gather or GatherElements
    gather_axis: int


def find_decoders(graph: onnx.GraphProto) -> dict[str, Decoder]:
    """Decoders of `graph` by decoded tensor name."""
    index = GraphIndex(graph)
    order = {id(node): i for i, node in enumerate(graph.node)}
    decoders: dict[str, Decoder] = {}
    for node in graph.node:
        if node.op_type not in ("Gather", "GatherElements") or not is_onnx_domain(node):
            continue
        table_nodes = _table_nodes(index, node.input[0])
        if table_nodes is None or index.is_constant(node.input[1]):
            continue
        closure = _constant_closure(index, node.input[1])
        if closure is None:
            continue
        members = [*table_nodes, *closure, node]
        output = node.output[0]
        for op_type in ("Mul", "Reshape"):  # per-channel scales, then the weight's shape
            after = index.single_consumer(output)
            if after is None or after.op_type != op_type or not is_onnx_domain(after):
                continue
            other = [x for x in after.input if x != output]
            if len(other) == 1 and index.is_constant(other[0]):
                members.append(after)
                output = after.output[0]
        members.sort(key=lambda n: order[id(n)])
        axis = int(node_attr(node, "axis", 0))
        decoders[output] = Decoder(
            output, members, node.input[0], node.input[1], node.output[0], node.op_type, axis
        )
    return decoders


VIEW_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
MIN_VIEW_ELEMENTS = 1024


def compressed_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors that folding would store again: what decoders compute, and views (a Transpose
    left by deduplication) of a large constant that other nodes read too."""
    kept = {name for d in find_decoders(graph).values() for n in d.nodes for name in n.output}
    index = GraphIndex(graph)
    for node in graph.node:
        if node.op_type not in VIEW_OPS or not is_onnx_domain(node) or not node.input:
            continue
        source = node.input[0]
        value = index.constant(source)
        if value is None or value.size < MIN_VIEW_ELEMENTS:
            continue
        if len(index.consumers.get(source, [])) > 1 or source in index.graph_outputs:
            kept.update(node.output)
    return kept


def _table_nodes(index: GraphIndex, tensor: str) -> list[onnx.NodeProto] | None:
    """[] for a constant codebook table, [the Mul] for per-channel scales times a book, None
    for anything else."""
    if _is_book(index.constant(tensor)):
        return []
    node = index.producer.get(tensor)
    if node is None or node.op_type != "Mul" or not is_onnx_domain(node):
        return None
    if all(_is_book(index.constant(name)) for name in node.input):
        return [node]
    return None


def _is_book(value: np.ndarray | None) -> bool:
    return value is not None and (value.dtype.kind == "f" or value.dtype == np.int8)


def _constant_closure(index: GraphIndex, tensor: str) -> list[onnx.NodeProto] | None:
    """The nodes computing `tensor` from constants alone, or None if an input reaches in."""
    seen: dict[int, onnx.NodeProto] = {}
    pending = [tensor]
    while pending:
        name = pending.pop()
        if index.is_constant(name):
            continue
        node = index.producer.get(name)
        if node is None or not is_onnx_domain(node) or has_subgraph_attribute(node):
            return None
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if len(seen) > MAX_DECODER_NODES:
            return None
        pending.extend(x for x in node.input if x)
    return list(seen.values())
