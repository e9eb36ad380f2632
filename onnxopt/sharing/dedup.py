"""Exact deduplication of constant tensors: each distinct value stored once.

Tensors are grouped by (dtype, shape, SHA-256 of their bytes) and their bytes compared on a
digest match, so the scan is O(n). A 2-D tensor that is the exact transpose of another (a tied
embedding that the exporter wrote out again as the output projection's MatMul weight) becomes a
Transpose of the kept tensor; ONNX Runtime folds it when the session loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxopt.ir.edit import rename_uses
from onnxopt.ir.graph import GraphIndex, Names, is_onnx_domain


@dataclass
class DedupResult:
    merged: list[tuple[str, str]] = field(default_factory=list)  # (removed, kept)
    transposed: list[tuple[str, str]] = field(default_factory=list)  # (removed, kept)
    bytes_saved: int = 0


def deduplicate(graph: onnx.GraphProto, transposes: bool = True) -> DedupResult:
    """Merge identical constants of `graph` in place (initializers and Constant nodes)."""
    index = GraphIndex(graph)
    result = DedupResult()
    kept: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for name, value in _constants(graph, index):
        key = _key(value)
        match = next((k for k, v in kept.get(key, []) if np.array_equal(v, value)), None)
        if match is None:
            kept.setdefault(key, []).append((name, value))
            continue
        _drop(graph, index, name)
        rename_uses(graph, name, match)
        result.merged.append((name, match))
        result.bytes_saved += value.nbytes
    if transposes:
        _transposed_copies(graph, index, kept, result)
    return result


def _constants(graph: onnx.GraphProto, index: GraphIndex):
    """(name, value) of every constant that may be merged away, initializers first."""
    fixed = index.graph_outputs | index.graph_inputs
    for tensor in list(graph.initializer):
        if tensor.name not in fixed:
            yield tensor.name, onnx.numpy_helper.to_array(tensor)
    for node in list(graph.node):
        if node.op_type == "Constant" and is_onnx_domain(node) and node.output[0] not in fixed:
            value = index.constant(node.output[0])
            if value is not None:
                yield node.output[0], value


def _key(value: np.ndarray) -> tuple:
    digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    return (value.dtype.str, value.shape, digest)


def _drop(graph: onnx.GraphProto, index: GraphIndex, name: str) -> None:
    if name in index.initializers:
        graph.initializer.remove(index.initializers.pop(name))
    else:
        graph.node.remove(index.producer[name])


def _transposed_copies(graph, index: GraphIndex, kept: dict, result: DedupResult) -> None:
    matrices = [
        (name, value) for entries in kept.values() for name, value in entries if value.ndim == 2
    ]
    by_transpose = {_key(np.ascontiguousarray(value.T)): name for name, value in matrices}
    names = Names(graph)
    values = dict(matrices)
    removed: set[str] = set()
    for name, value in matrices:
        source = by_transpose.get(_key(value))
        if source is None or source == name or source in removed or name in removed:
            continue
        if not np.array_equal(values[source].T, value):
            continue
        _drop(graph, index, name)
        removed.add(name)
        node = helper.make_node(
            "Transpose", [source], [name], name=names.fresh(f"{name}.dedup_Transpose"), perm=[1, 0]
        )
        graph.node.insert(0, node)
        result.transposed.append((name, source))
        result.bytes_saved += value.nbytes
