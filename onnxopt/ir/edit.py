"""Graph mutations shared by passes: bypassing pass-through nodes, constant folding, dead code.

Renames reach into subgraphs, which may read outer-scope tensors by name.
"""

from __future__ import annotations

import logging

import onnx

from onnxopt.ir.graph import from_graphsurgeon, to_graphsurgeon
from onnxopt.ir.tensors import iter_graphs

log = logging.getLogger(__name__)


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of tensor `old` (in `graph` and its subgraphs) read `new` instead."""
    for sub in iter_graphs(graph):
        for node in sub.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        if sub is graph:
            continue
        for output in sub.output:
            if output.name == old:
                output.name = new


def bypass_node(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Remove a node whose first output equals its first input; False when names forbid it.

    When the output is a graph output its name must survive, so the input's producer is
    renamed to produce it instead; that needs a node-produced input that is not itself a
    graph input, initializer or graph output.
    """
    source, result = node.input[0], node.output[0]
    graph_outputs = {o.name for o in graph.output}
    if result in graph_outputs:
        producer = next((n for n in graph.node if source in n.output), None)
        if producer is None or source in graph_outputs:
            return False
        producer.output[list(producer.output).index(source)] = result
        graph.node.remove(node)
        rename_uses(graph, source, result)
        return True
    graph.node.remove(node)
    rename_uses(graph, result, source)
    return True


def fold_constants(model: onnx.ModelProto, size_limit_bytes: int) -> onnx.ModelProto:
    """Evaluate constant subgraphs with graphsurgeon (errors raised, not swallowed)."""
    graph = to_graphsurgeon(model)
    graph.toposort()
    graph.fold_constants(
        error_ok=False,
        size_threshold=size_limit_bytes,
        flatten_subgraphs=False,
    )
    graph.cleanup(remove_unused_graph_inputs=False)
    return from_graphsurgeon(graph, like=model)


def remove_dead_code(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers no graph output depends on; sort nodes topologically."""
    graph = to_graphsurgeon(model)
    graph.cleanup(remove_unused_graph_inputs=False)
    graph.toposort()
    return from_graphsurgeon(graph, like=model)
