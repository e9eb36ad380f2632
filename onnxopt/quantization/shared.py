"""Quantizing weights that `share` stored as codebooks, without losing the compression.

Before planning, each codebook decoder is evaluated and its weight becomes a plain float
initializer (the planner, equalization and calibration need constant weights); the indices are
remembered. After the QDQ rewrite, every such weight is stored compressed again: the int8 codes
of a shared weight take one value per (channel, index) when the weight scales are per channel,
so an int8 codebook with the same indices reproduces them exactly, decoded in the graph before
the DequantizeLinear (ONNX Runtime folds the decoder at load and still fuses the int8 kernels).
Each channel's scale is set by its book's largest entry, not by the values it uses: a book for
the whole tensor, or one book times channel scales, then gives every channel the same codes,
and one int8 book of 2**bits entries serves the tensor (`weight_peaks`). The re-encoding is
checked value for value; a weight whose codes no longer fit a codebook (a rewrite changed it),
or whose int8 book is not smaller than its plain codes (8-bit indices), stays plain int8 and the
report says so.

GPTQ rounding and input-channel equalization would give one channel's equal codebook values
different int8 codes, so `quant` leaves shared weights out of both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.analyses.codebooks import Decoder, find_decoders
from onnxopt.ir.codebook import Codebook, channel_view, emit_decoder, supported_axis
from onnxopt.ir.graph import GraphIndex, Names, default_opset, make_tensor, node_attr
from onnxopt.runtime.session import make_session, session_options


@dataclass
class SharedWeight:
    tensor: str
    labels: np.ndarray  # in the weight's shape
    bits: int
    readers: list[tuple[str, int]]  # (node name, input slot) reading the weight
    decoded: np.ndarray  # the weight as `share` stored it
    entry_peaks: np.ndarray  # per value: the largest magnitude in the book row it comes from


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
        weight, indices, table = evaluate_decoder(plain, decoder)
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
        labels = indices.reshape(weight.shape)
        peaks = _row_peaks(table, decoder, indices, weight)
        shared.append(SharedWeight(decoder.output, labels, bits, readers, weight, peaks))
    return plain, shared


def weights_read(model: onnx.ModelProto, shared: list[SharedWeight]) -> dict[str, SharedWeight]:
    """The constants the readers of the shared weights read now, by name: `prepare` may have
    replaced a weight by a renamed one (BatchNorm folded in scales its channels, which a
    per-channel codebook still represents)."""
    nodes = {node.name: node for node in model.graph.node}
    return {
        nodes[reader].input[slot]: weight
        for weight in shared
        for reader, slot in weight.readers
        if reader in nodes and slot < len(nodes[reader].input)
    }


def weight_peaks(model: onnx.ModelProto, read: dict[str, SharedWeight]) -> dict[str, np.ndarray]:
    """Per weight of `read` (see `weights_read`), per value: the magnitude whose channel maximum
    sets the int8 scale. The largest entry of the value's book row rather than the value
    itself: a per-tensor book, or one book times per-channel scales, then gives every output
    channel the same int8 codes, stored as one small int8 book. Only for weights that are the
    stored ones scaled per output channel (BatchNorm folded in); others keep their own maxima."""
    index = GraphIndex(model.graph)
    peaks = {}
    for name, weight in read.items():
        scale = _channel_scale(weight.decoded, index.constant(name))
        if scale is not None:
            peaks[name] = np.abs(scale) * weight.entry_peaks
    return peaks


def _channel_scale(stored: np.ndarray, current: np.ndarray | None) -> np.ndarray | None:
    """g (broadcastable along axis 0) with current == g * stored, or None."""
    if current is None or current.shape != stored.shape or stored.ndim == 0:
        return None
    rows, now = stored.reshape(len(stored), -1), current.reshape(len(stored), -1)
    norms = np.einsum("ij,ij->i", rows, rows)
    g = np.einsum("ij,ij->i", rows, now) / np.where(norms > 0, norms, 1)
    if not np.allclose(g[:, None] * rows, now, rtol=1e-5, atol=1e-7):
        return None
    return g.reshape((-1,) + (1,) * (stored.ndim - 1)).astype(np.float32)


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
            book, why = smallest_exact_codebook(values, weight.labels, axis, weight.bits)
            if book is None:
                reasons.append(f"codebook '{weight.tensor}' stored plain: {why}")
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


def smallest_exact_codebook(
    values: np.ndarray, labels: np.ndarray, axis: int | None, bits: int
) -> tuple[Codebook | None, str]:
    """The smallest codebook that `labels` index to give exactly `values`: one for the whole
    tensor when every channel's codes agree, else one per channel along `axis`; or None and
    why not."""
    books = [exact_codebook(values, labels, a, bits) for a in dict.fromkeys((None, axis))]
    exact = [book for book in books if book is not None]
    if not exact:
        return None, "its codes differ per index"
    book = min(exact, key=lambda b: b.stored_bytes)
    if book.stored_bytes >= values.nbytes:
        return None, f"a codebook of its int8 codes ({book.stored_bytes} bytes) is not smaller"
    return book, ""


def exact_codebook(
    values: np.ndarray, labels: np.ndarray, axis: int | None, bits: int
) -> Codebook | None:
    """The codebook (per tensor, or per channel along `axis`) that `labels` index to give
    exactly `values`, or None when there is none."""
    if not supported_axis(values.shape, axis):
        return None
    rows = channel_view(values, axis)
    row_labels = channel_view(labels, axis).astype(np.int64)
    book = np.zeros((rows.shape[0], 1 << bits), dtype=values.dtype)
    np.put_along_axis(book, row_labels, rows, axis=1)
    if not np.array_equal(np.take_along_axis(book, row_labels, axis=1), rows):
        return None
    return Codebook(values.shape, book, row_labels.astype(np.uint8), bits, axis)


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


def evaluate_decoder(
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


def _row_peaks(
    table: np.ndarray, decoder: Decoder, indices: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Per value of `weight`, the largest magnitude in the table row its index selects from;
    the value's own magnitude for decoder forms where that row is not the table's (a Gather
    along a wider table, scales multiplied after the gather)."""
    magnitude = np.abs(table.astype(np.float64))
    gather = next(i for i, n in enumerate(decoder.nodes) if n.output[0] == decoder.gathered)
    after = {node.op_type for node in decoder.nodes[gather + 1 :]}
    if decoder.op_type == "GatherElements" and table.ndim == indices.ndim and after <= {"Reshape"}:
        peaks = magnitude.max(axis=decoder.gather_axis, keepdims=True)
        peaks = np.broadcast_to(peaks, indices.shape).reshape(weight.shape)
        if np.all(peaks >= np.abs(weight)):
            return peaks.astype(np.float32)
    return np.abs(weight)


def _bits(table: np.ndarray, decoder: Decoder) -> int:
    """Index width of a decoder: a 1-D table for Gather, else entries along the gather axis."""
    entries = table.shape[decoder.gather_axis] if table.ndim > 1 else table.shape[0]
    return max(1, int(np.ceil(np.log2(max(entries, 2)))))
