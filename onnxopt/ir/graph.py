"""Topology and constant lookup on ONNX protos; conversion to and from onnx-graphsurgeon.

This package is the only one that imports onnx_graphsurgeon.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

# graphsurgeon's logger prints to stdout; our stdout belongs to the CLI.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

log = logging.getLogger(__name__)

ONNX_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (0 when it imports none)."""
    for entry in model.opset_import:
        if entry.domain in ONNX_DOMAINS:
            return entry.version
    return 0


def is_onnx_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ONNX_DOMAINS


class GraphIndex:
    """Producers, consumers and constants of one GraphProto. Rebuild it after edits, or tell it
    of each edited node (`forget` before the edit, `learn` after) and new initializer (`add`).

    Constants are initializers and outputs of Constant nodes: many exports (Paddle, older
    PyTorch) keep weights in Constant nodes.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input}
        self.graph_outputs = {v.name for v in graph.output}
        # Tensors read by name inside If/Loop/Scan bodies: such a reader holds the tensor's
        # name, so the tensor can be neither renamed nor given another producer.
        self.subgraph_reads: set[str] = set()
        for node in graph.node:
            self.learn(node)

    def forget(self, node: onnx.NodeProto) -> None:
        """Drop `node` as producer and consumer (before it is edited or removed)."""
        for name in node.output:
            if self.producer.get(name) is node:
                del self.producer[name]
        for name in set(node.input):
            if name in self.consumers:  # by identity: protos compare equal by content
                self.consumers[name] = [u for u in self.consumers[name] if u is not node]

    def learn(self, node: onnx.NodeProto) -> None:
        """Record `node` as producer and consumer (after it is added or edited)."""
        for name in node.output:
            if name:
                self.producer[name] = node
        for name in set(node.input):
            if name:
                self.consumers[name].append(node)
        self.subgraph_reads |= subgraph_outer_reads(node)

    def add(self, tensor: onnx.TensorProto) -> None:
        """Record a new initializer."""
        self.initializers[tensor.name] = tensor

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return name not in self.graph_inputs
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant" and is_onnx_domain(node)

    def overridable(self, name: str) -> bool:
        """Whether `name` is an initializer that is also a graph input: a default a caller may
        override, so not a constant (exports of the opset-9 era list every weight so)."""
        return name in self.initializers and name in self.graph_inputs

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None if `name` is not a constant."""
        if name in self.initializers:
            if name in self.graph_inputs:
                return None  # an input with a default value can be overridden at run time
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant" or not is_onnx_domain(node):
            return None
        return constant_node_value(node)

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs or name in self.subgraph_reads:
            return None
        return users[0]


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


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, whichever attribute holds it."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def node_attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def has_subgraph_attribute(node: onnx.NodeProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for attr in node.attribute
    )


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(has_subgraph_attribute(node) for node in model.graph.node)


def to_graphsurgeon(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def from_graphsurgeon(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph` keeping every model-level field of `like` (IR version, opsets, metadata)."""
    model = gs.export_onnx(graph, do_type_check=False, opset_imports=list(like.opset_import))
    model.ir_version = like.ir_version
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.domain = like.domain
    model.model_version = like.model_version
    model.doc_string = like.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return model


def make_tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    # not np.ascontiguousarray: it turns a 0-d array (a scalar scale) into shape (1,)
    value = np.asarray(value)
    return numpy_helper.from_array(value if value.flags.c_contiguous else value.copy(), name)


def tensor_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    return {name for node in nodes for name in (*node.input, *node.output) if name}


class Names:
    """Hands out tensor/node names not yet used in a graph, deterministically."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = {t.name for t in graph.initializer}
        self.taken |= {v.name for v in (*graph.input, *graph.output)}
        for node in graph.node:
            self.taken.add(node.name)
            self.taken.update(n for n in (*node.input, *node.output) if n)

    def fresh(self, base: str) -> str:
        name, counter = base, 1
        while name in self.taken:
            name, counter = f"{base}_{counter}", counter + 1
        self.taken.add(name)
        return name


def replace_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Give constant `name` (an initializer or a Constant node's output) a new value."""
    for tensor in graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(make_tensor(name, value))
            return
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", make_tensor(name, value)))
            return
    raise KeyError(f"no constant named '{name}'")


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or replace) one attribute of a node."""
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))
