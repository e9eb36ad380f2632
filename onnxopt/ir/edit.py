"""Graph mutations shared by passes: bypassing pass-through nodes, constant folding, dead code.

Renames reach into subgraphs, which may read outer-scope tensors by name.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.ir.graph import (
    from_graphsurgeon,
    is_onnx_domain,
    make_tensor,
    node_attr,
    subgraph_outer_reads,
    to_graphsurgeon,
)
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


def fold_constants(
    model: onnx.ModelProto, size_limit_bytes: int, keep: frozenset[str] = frozenset()
) -> onnx.ModelProto:
    """Evaluate constant subgraphs with graphsurgeon (errors raised, not swallowed); nodes that
    produce a tensor in `keep` are not evaluated.

    An initializer that is also a graph input is only a default the caller may override:
    graphsurgeon would take it for a constant (fold through it, drop the input), so it is
    handed over as a plain graph input and put back afterwards.

    graphsurgeon's own shape folding is off: it trusts the value_info written in the file and
    ignores Shape's start/end (opset 15); `_fold_shapes` replaces it.
    """
    inputs = {v.name for v in model.graph.input}
    shadowed = [t for t in model.graph.initializer if t.name in inputs]
    if shadowed:
        original, model = model, onnx.ModelProto()
        model.CopyFrom(original)
        kept = [t for t in model.graph.initializer if t.name not in inputs]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    # A Shape of an input with a default value is left alone: which shape it has is the caller's.
    model = _fold_shapes(model, keep | {t.name for t in shadowed})
    graph = to_graphsurgeon(model)
    graph.toposort()
    # graphsurgeon evaluates in ORT sessions of its own, on ORT's default logger: keep ORT's
    # warnings (fp16 kernels missing, ...) off the user's stderr; errors are raised anyway.
    ort.set_default_logger_severity(3)
    graph.fold_constants(
        error_ok=False,
        fold_shapes=False,
        size_threshold=size_limit_bytes,
        flatten_subgraphs=False,
        should_exclude_node=lambda node: any(t.name in keep for t in node.outputs),
    )
    graph.cleanup(remove_unused_graph_inputs=False)
    folded = from_graphsurgeon(graph, like=model)
    folded.graph.initializer.extend(shadowed)
    return folded


def _fold_shapes(model: onnx.ModelProto, keep: frozenset[str]) -> onnx.ModelProto:
    """A copy of `model` where each Shape node whose input has a static shape is a Constant
    (start/end honoured); `model` itself when there is none. Shapes of and into `keep` stay.

    Shapes are inferred from the graph inputs and initializers alone: value_info and output
    shapes written in the file are dropped first, as an untrusted file may declare them wrong.
    """
    shape_nodes = [
        i
        for i, node in enumerate(model.graph.node)
        if node.op_type == "Shape"
        and is_onnx_domain(node)
        and not {node.input[0], node.output[0]} & keep
    ]
    if not shape_nodes:
        return model
    static = _static_shapes(model)
    folded = [i for i in shape_nodes if model.graph.node[i].input[0] in static]
    if not folded:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for i in folded:
        node = result.graph.node[i]
        dims = static[node.input[0]]
        value = np.array(dims[node_attr(node, "start", 0) : node_attr(node, "end", None)], np.int64)
        node.op_type, node.domain = "Constant", ""
        del node.input[:]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", make_tensor("", value)))
    return result


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for output in probe.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several unrelated types; then nothing is folded
        log.info("shape folding skipped: %s: %s", type(exc).__name__, exc)
        return {}
    static = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            static.setdefault(value.name, [d.dim_value for d in dims])
    return static


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
