"""A weight stored as a codebook of shared values plus packed indices, and its in-graph decoder.

The decoder uses only standard ops (opset 11: BitShift, Reshape, Slice, Cast, Mul, Add, Gather,
GatherElements) on constant inputs, so any ONNX runtime runs it and ONNX Runtime folds it into
a plain initializer when the session loads: inference speed and memory match the unshared model
while the file holds the compressed form.

Layouts: one codebook for the whole tensor (Gather); one per channel along axis 0 (weights
viewed as (C, rest), GatherElements on axis 1) or along the last axis (viewed as (rest, C),
GatherElements on axis 0); or one book of normalized values times a per-channel scale
(Gather, then Mul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxopt.ir.graph import Names, make_tensor
from onnxopt.sharing.bitpack import Plane, left_shifts, pack, packed_bytes

DECODE_OVERHEAD_BYTES = 400
"""Approximate serialized size of one decoder's nodes, names and shape constants."""

MIN_OPSET = 11


@dataclass
class Codebook:
    """`centroids[channel, labels]` reproduces the weight; channel is 0 for a per-tensor book.
    With `scales`, one book (1, k) of channel-normalized values serves every channel along
    `axis`, each multiplied by its own scale (channels whose ranges differ by orders of
    magnitude, as in depthwise convolutions, then keep their relative precision)."""

    shape: tuple[int, ...]
    centroids: np.ndarray  # (channels, k), or (1, k) with scales
    labels: np.ndarray  # integer, (channels, per_channel) in the channel layout
    bits: int
    axis: int | None  # None: one codebook for the tensor
    scales: np.ndarray | None = None  # (channels,) along axis

    def row_books(self) -> np.ndarray:
        """Effective centroids per channel, (channels, k)."""
        if self.scales is None:
            return self.centroids
        return self.scales[:, None] * self.centroids

    def decoded(self) -> np.ndarray:
        books = np.broadcast_to(self.row_books(), (self.labels.shape[0], self.centroids.shape[1]))
        rows = np.take_along_axis(books, self.labels.astype(np.int64), axis=1)
        if self.axis is None or self.axis == 0:
            return rows.reshape(self.shape)
        return np.ascontiguousarray(rows.T).reshape(self.shape)

    @property
    def stored_bytes(self) -> int:
        return (
            packed_bytes(self.labels.size, self.bits)
            + self.centroids.nbytes
            + (0 if self.scales is None else self.scales.nbytes)
            + DECODE_OVERHEAD_BYTES
        )


def channel_view(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """The weight as (channels, values per channel): one row for per-tensor books."""
    if axis is None:
        return weight.reshape(1, -1)
    if axis == 0:
        return weight.reshape(weight.shape[0], -1)
    return weight.reshape(-1, weight.shape[-1]).T


def supported_axis(shape: tuple[int, ...], axis: int | None) -> bool:
    return axis is None or axis == 0 or (len(shape) >= 2 and axis == len(shape) - 1)


def emit_decoder(
    graph: onnx.GraphProto, names: Names, output: str, book: Codebook, dtype: np.dtype
) -> list[onnx.NodeProto]:
    """Nodes (and initializers, appended to `graph`) computing tensor `output` from `book`."""
    emitter = _Emitter(graph, names, output)
    in_gather_order = book.labels if book.axis in (None, 0) else book.labels.T
    labels = emitter.indices(pack(in_gather_order, book.bits), book.labels.size)
    centroids = book.centroids.astype(dtype)
    if book.axis is None:
        table = emitter.constant("codebook", centroids.reshape(-1))
        shaped = emitter.node("Reshape", [labels, emitter.shape(book.shape)])
        emitter.node("Gather", [table, shaped], output=output, axis=0)
        return emitter.nodes
    if book.scales is not None:
        grid = book.labels.shape if book.axis == 0 else book.labels.shape[::-1]
        table = emitter.constant("codebook", centroids.reshape(-1))
        shaped = emitter.node("Reshape", [labels, emitter.shape(grid)])
        normalized = emitter.node("Gather", [table, shaped], axis=0)
        scale_shape = (-1, 1) if book.axis == 0 else (1, -1)
        scales = emitter.constant("scale", book.scales.astype(dtype).reshape(scale_shape))
        rows = emitter.node("Mul", [normalized, scales])
        emitter.node("Reshape", [rows, emitter.shape(book.shape)], output=output)
        return emitter.nodes
    if book.axis == 0:
        table = emitter.constant("codebook", centroids)
        grid = (book.shape[0], book.labels.shape[1])
        gather_axis = 1
    else:
        table = emitter.constant("codebook", np.ascontiguousarray(centroids.T))
        grid = (book.labels.shape[1], book.shape[-1])
        gather_axis = 0
    shaped = emitter.node("Reshape", [labels, emitter.shape(grid)])
    rows = emitter.node("GatherElements", [table, shaped], axis=gather_axis)
    emitter.node("Reshape", [rows, emitter.shape(book.shape)], output=output)
    return emitter.nodes


class _Emitter:
    def __init__(self, graph: onnx.GraphProto, names: Names, output: str) -> None:
        self.graph, self.names, self.base = graph, names, output
        self.nodes: list[onnx.NodeProto] = []

    def constant(self, role: str, value: np.ndarray) -> str:
        name = self.names.fresh(f"{self.base}.share_{role}")
        self.graph.initializer.append(make_tensor(name, value))
        return name

    def shape(self, dims) -> str:
        return self.constant("shape", np.asarray(dims, dtype=np.int64))

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.names.fresh(f"{self.base}.share_{op_type.lower()}")
        name = self.names.fresh(f"{self.base}.share_{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def indices(self, planes: list[Plane], count: int) -> str:
        """int32 tensor (count,) of the unpacked indices."""
        total = None
        for plane in planes:
            values = self._plane(plane, count)
            if plane.offset:
                factor = self.constant("factor", np.array(1 << plane.offset, dtype=np.int32))
                values = self.node("Mul", [values, factor])
            total = values if total is None else self.node("Add", [total, values])
        return total

    def _plane(self, plane: Plane, count: int) -> str:
        packed = self.constant(f"idx{plane.width}", plane.packed)
        if plane.width == 8:
            return self.node("Cast", [packed], to=onnx.TensorProto.INT32)
        lefts = self.constant("shl", left_shifts(plane.width))
        right = self.constant("shr", np.array([8 - plane.width], dtype=np.uint8))
        fields = self.node("BitShift", [packed, lefts], direction="LEFT")
        fields = self.node("BitShift", [fields, right], direction="RIGHT")
        flat = self.node("Reshape", [fields, self.shape([-1])])
        if plane.packed.shape[0] * plane.per_byte != count:
            starts, ends = self.shape([0]), self.shape([count])
            flat = self.node("Slice", [flat, starts, ends])
        return self.node("Cast", [flat], to=onnx.TensorProto.INT32)
