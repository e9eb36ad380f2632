"""Graph mutations shared by passes: bypassing pass-through nodes, constant folding, dead code.

Renames reach into subgraphs, which may read outer-scope tensors by name.
"""

from __future__ import annotations

import heapq
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


def remove_dead_code(model: onnx.ModelProto) -> int:
    """Drop nodes and initializers no graph output depends on, in place; sort nodes stably.

    Works on protos (no serialization), so it also serves models over 2 GB. Returns the number
    of nodes removed.
    """
    graph = model.graph
    needed = {o.name for o in graph.output}
    ordered = stable_toposort(list(graph.node))
    if any(a is not b for a, b in zip(ordered, graph.node, strict=True)):
        _reorder(graph.node, ordered)
    dead = []
    for position in range(len(graph.node) - 1, -1, -1):
        node = graph.node[position]
        if any(name in needed for name in node.output):
            needed.update(name for name in node.input if name)
            needed.update(subgraph_outer_reads(node))
        else:
            dead.append(position)
    graph_inputs = {i.name for i in graph.input}
    unused = [
        position
        for position, tensor in enumerate(graph.initializer)
        if tensor.name not in needed and tensor.name not in graph_inputs
    ]
    # Deleting by index, never re-adding: a copy of a tensor over 2 GB cannot be made.
    for position in dead:
        del graph.node[position]
    for position in reversed(unused):
        del graph.initializer[position]
    return len(dead)


def _reorder(field, ordered) -> None:
    copies = []
    for item in ordered:
        copy_ = type(item)()
        copy_.CopyFrom(item)
        copies.append(copy_)
    del field[:]
    field.extend(copies)


def subgraph_outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from enclosing scopes."""
    reads: set[str] = set()
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subgraphs:
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                defined.update(inner.output)
            for inner in sub.node:
                reads.update(n for n in inner.input if n and n not in defined)
                reads.update(n for n in subgraph_outer_reads(inner) if n not in defined)
            reads.update(o.name for o in sub.output if o.name not in defined)
    return reads


def stable_toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Topological order; among ready nodes the earliest in the given order goes first."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waiting = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        reads = {n for n in node.input if n} | subgraph_outer_reads(node)
        deps = {producer[n] for n in reads if n in producer and producer[n] != i}
        waiting[i] = len(deps)
        for dep in deps:
            readers[dep].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for reader in readers[i]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(ordered) != len(nodes):
        raise ValueError("the graph has a cycle")
    return ordered
