"""Quantizing weights that `share` stored as codebooks, without losing the compression.

Before planning, each codebook decoder is evaluated and its weight becomes a plain float
initializer (the planner, equalization and calibration need constant weights); the indices are
remembered. After the QDQ rewrite, every such weight is stored compressed again: the int8 codes
of a shared weight take one value per (channel, index) when the weight scales are per channel,
so an int8 codebook with the same indices reproduces them exactly, decoded in the graph before
the DequantizeLinear (ONNX Runtime folds the decoder at load and still fuses the int8 kernels).
The re-encoding is checked value for value; a weight whose codes no longer fit a codebook (a
rewrite changed it) stays plain int8 and the report says so.

GPTQ rounding and input-channel equalization would give one channel's equal codebook values
different int8 codes, so `quant` leaves shared weights out of both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.analyses.codebooks import Decoder, find_decoders
from onnxopt.ir.graph import GraphIndex, Names, default_opset, make_tensor, node_attr
from onnxopt.runtime import make_session, session_options
from onnxopt.sharing.codebook import Codebook, channel_view, emit_decoder, supported_axis


@dataclass
class SharedWeight:
    tensor: str
    labels: np.ndarray  # in the weight's shape
    bits: int
    readers: list[tuple[str, int]]  # (node name, input slot) reading the weight


def materialize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[SharedWeight]]:
    """A copy of `model` whose codebook decoders are replaced by their float weights (nodes
    must be named: the weights are found again through their readers)."""
    decoders = find_decoders(model.graph)
    if not decoders:
        return model, []
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    graph = plain.graph
    shared = []
    for decoder in decoders.values():
        weight, indices, table = _evaluate(plain, decoder)
        bits = _bits(table, decoder)
        for node in decoder.nodes:
            graph.node.remove(node)
        graph.initializer.append(make_tensor(decoder.output, weight))
        readers = [
            (node.name, slot)
            for node in graph.node
            for slot, name in enumerate(node.input)
            if name == decoder.output
        ]
        shared.append(SharedWeight(decoder.output, indices.reshape(weight.shape), bits, readers))
    return plain, shared


def restore(model: onnx.ModelProto, shared: list[SharedWeight]) -> list[str]:
    """Store each shared weight of the quantized `model` as a codebook again, in place.
    Returns the reasons for those left plain."""
    graph = model.graph
    index = GraphIndex(graph)
    names = Names(graph)
    nodes = {node.name: node for node in graph.node}
    opset, constants = default_opset(model), {}
    decoders, reasons, done = [], [], set()
    for weight in shared:
        for reader, slot in weight.readers:
            stored, axis = _stored_form(index, nodes.get(reader), slot)
            if stored is None:
                reasons.append(f"codebook '{weight.tensor}': '{reader}' no longer reads a constant")
                continue
            if stored in done:
                continue
            done.add(stored)
            values = onnx.numpy_helper.to_array(index.initializers[stored])
            book = exact_codebook(values, weight.labels, axis, weight.bits)
            if book is None:
                reasons.append(
                    f"codebook '{weight.tensor}' stored plain: its codes differ per index"
                )
                continue
            graph.initializer.remove(index.initializers[stored])
            decoders.extend(
                emit_decoder(
                    graph, names, stored, book, values.dtype, opset=opset, shared=constants
                )
            )
    for position, node in enumerate(decoders):
        graph.node.insert(position, node)
    return reasons


def exact_codebook(
    values: np.ndarray, labels: np.ndarray, axis: int | None, bits: int
) -> Codebook | None:
    """The codebook (per tensor, or per channel along `axis`) that `labels` index to give
    exactly `values`, or None when no such book exists or it is not smaller."""
    if not supported_axis(values.shape, axis):
        return None
    rows = channel_view(values, axis)
    row_labels = channel_view(labels, axis).astype(np.int64)
    book = np.zeros((rows.shape[0], 1 << bits), dtype=values.dtype)
    np.put_along_axis(book, row_labels, rows, axis=1)
    if not np.array_equal(np.take_along_axis(book, row_labels, axis=1), rows):
        return None
    codebook = Codebook(values.shape, book, row_labels.astype(np.uint8), bits, axis)
    return codebook if codebook.stored_bytes < values.nbytes else None


def _stored_form(
    index: GraphIndex, reader: onnx.NodeProto | None, slot: int
) -> tuple[str | None, int | None]:
    """(initializer now holding the values the reader's `slot` reads, their channel axis):
    the float weight itself, or the int8 initializer behind the DequantizeLinear feeding it."""
    if reader is None or slot >= len(reader.input):
        return None, None
    name = reader.input[slot]
    if name in index.initializers:
        return name, None
    dq = index.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in index.initializers:
        return None, None
    scale = index.constant(dq.input[1])
    per_tensor = scale is None or scale.size == 1
    return dq.input[0], None if per_tensor else int(node_attr(dq, "axis", 1))


def _evaluate(
    model: onnx.ModelProto, decoder: Decoder
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decoded weight, gather indices, table) computed by ONNX Runtime, unoptimized (the ONNX
    reference evaluator's GatherElements fails on a table wider than its indices)."""
    index = GraphIndex(model.graph)
    needed = {x for node in decoder.nodes for x in node.input if x}
    produced = {x for node in decoder.nodes for x in node.output}
    constants = [make_tensor(name, index.constant(name)) for name in sorted(needed - produced)]
    computed = (decoder.output, decoder.indices, decoder.table)
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in computed]
    graph = onnx.helper.make_graph(list(decoder.nodes), "decoder", [], outputs, constants)
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    options = session_options(optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    weight, indices, table = make_session(sub, options=options).run(list(computed), {})
    return np.asarray(weight), np.asarray(indices), np.asarray(table)


def _bits(table: np.ndarray, decoder: Decoder) -> int:
    """Index width of a decoder: a 1-D table for Gather, else entries along the gather axis."""
    entries = table.shape[decoder.gather_axis] if table.ndim > 1 else table.shape[0]
    return max(1, int(np.ceil(np.log2(max(entries, 2)))))
