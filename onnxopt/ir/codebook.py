"""A weight stored as a codebook of shared values plus packed indices, and its in-graph decoder.

The decoder uses only standard ops (opset 11: BitShift, Add, Reshape, Slice, Cast, Mul,
GatherElements) on constant inputs, so any ONNX runtime runs it and ONNX Runtime folds it into
a plain initializer when the session loads: inference speed and memory match the unshared model
while the file holds the compressed form.

Layouts: one codebook for the whole tensor (a (1, k) table gathered along axis 1); one per
channel along axis 0 ((C, k) table, weight viewed as (C, rest)) or along the last axis ((k, C)
table, weight viewed as (rest, C), gathered along axis 0); or one book of normalized values
times a per-channel scale, multiplied into a per-channel table before the gather.

Folding cost, not file size, shapes the graph: at session creation ONNX Runtime pays about
20 microseconds per node (and several per initializer) and, for each weight-sized op, 0.2 to
1 ns per element; so the indices are unpacked in uint8 and cast to int32 once, just before
the gather, and small constants are shared between decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxopt.ir.bitpack import Plane, left_shifts, pack, packed_bytes
from onnxopt.ir.graph import Names, make_tensor

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
    graph: onnx.GraphProto,
    names: Names,
    output: str,
    book: Codebook,
    dtype: np.dtype,
    *,
    opset: int = MIN_OPSET,
    shared: dict | None = None,
) -> list[onnx.NodeProto]:
    """Nodes (and initializers, appended to `graph`) computing tensor `output` from `book`.

    `shared`, one dict per graph, lets the decoders of that graph share their small constants
    (shift amounts, shapes): ONNX Runtime parses and folds each initializer and node at session
    creation, at a cost per item that dwarfs their bytes. With `opset` >= 14 the index planes
    are combined in uint8 (Add on uint8 needs opset 14), else in int32."""
    layout = gather_layout(book)
    emitter = _Emitter(graph, names, output, {} if shared is None else shared)
    indices = emitter.indices(pack(layout.labels, book.bits), layout.grid, opset >= 14)
    table = emitter.table(book, layout, dtype)
    if layout.grid == tuple(book.shape):
        emitter.node("GatherElements", [table, indices], output=output, axis=layout.axis)
    else:
        rows = emitter.node("GatherElements", [table, indices], axis=layout.axis)
        emitter.node("Reshape", [rows, emitter.shape(book.shape)], output=output)
    return emitter.nodes


@dataclass(frozen=True)
class GatherLayout:
    """GatherElements(table, indices, axis) on 2-D tensors gives the weight viewed as `grid`,
    then reshaped to the weight's shape. Measured folding ONNX Runtime 1.31: the same gather
    in a 1x1 convolution's 4-D shape (axis 1, not innermost) is about eight times slower than
    2-D plus the Reshape, and Gather (a generic block copy per index) three times slower."""

    grid: tuple[int, int]
    axis: int
    labels: np.ndarray  # in grid order


def gather_layout(book: Codebook) -> GatherLayout:
    size = int(np.prod(book.shape))
    if book.axis is None:
        return GatherLayout((1, size), 1, book.labels.reshape(1, size))
    if book.axis == 0:
        channels = book.shape[0]
        grid = (channels, size // channels)
        return GatherLayout(grid, 1, book.labels.reshape(grid))
    channels = book.shape[-1]
    return GatherLayout((size // channels, channels), 0, book.labels.T)


class _Emitter:
    def __init__(self, graph: onnx.GraphProto, names: Names, output: str, shared: dict) -> None:
        self.graph, self.names, self.base, self.shared = graph, names, output, shared
        self.nodes: list[onnx.NodeProto] = []

    def constant(self, role: str, value: np.ndarray) -> str:
        name = self.names.fresh(f"{self.base}.share_{role}")
        self.graph.initializer.append(make_tensor(name, value))
        return name

    def small(self, role: str, value: np.ndarray) -> str:
        """A constant shared by every decoder of the graph that needs the same value."""
        key = (role, value.dtype.str, value.shape, value.tobytes())
        if key not in self.shared:
            self.shared[key] = self.names.fresh(f"share_{role}")
            self.graph.initializer.append(make_tensor(self.shared[key], value))
        return self.shared[key]

    def shape(self, dims) -> str:
        return self.small("shape", np.asarray(dims, dtype=np.int64))

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.names.fresh(f"{self.base}.share_{op_type.lower()}")
        name = self.names.fresh(f"{self.base}.share_{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def table(self, book: Codebook, layout: GatherLayout, dtype: np.dtype) -> str:
        """The gathered table; a channel-scaled book is expanded to one row per channel here
        (channels x entries values), so the weight-sized tensor is gathered once, not also
        multiplied."""
        centroids = book.centroids.astype(dtype)
        if book.scales is None:
            rows = centroids if layout.axis == 1 else np.ascontiguousarray(centroids.T)
            return self.constant("codebook", rows)
        scales = book.scales.astype(dtype)
        if layout.axis == 1:
            scale, entries = scales.reshape(-1, 1), centroids.reshape(1, -1)
        else:
            scale, entries = scales.reshape(1, -1), centroids.reshape(-1, 1)
        return self.node("Mul", [self.constant("scale", scale), self.constant("codebook", entries)])

    def indices(self, planes: list[Plane], grid: tuple[int, int], uint8_add: bool) -> str:
        """int32 tensor of the unpacked indices, in the shape `grid`."""
        if planes[0].width == 8:
            return self.cast(self.constant("idx8", planes[0].packed.reshape(grid)))
        count = int(np.prod(grid))
        common = _common_shape(planes, count)
        fields = [self._fields(plane, count, common) for plane in planes]
        if not uint8_add:
            fields = [self.cast(f) for f in fields]
        total = fields[0]
        for more in fields[1:]:
            total = self.node("Add", [total, more])
        total = self.node("Reshape", [total, self.shape(grid)])
        return self.cast(total) if uint8_add else total

    def cast(self, tensor: str) -> str:
        return self.node("Cast", [tensor], to=onnx.TensorProto.INT32)

    def _fields(self, plane: Plane, count: int, common: tuple[int, ...] | None) -> str:
        """uint8 values of one plane at bits [offset, offset + width): in `common` (the shape
        every plane of the index unpacks to), or flat (count,) when the planes need padding."""
        per = plane.per_byte
        if common is None:
            packed_shape, shift_shape = (1, -1), (per, 1)
        else:
            fanout = per.bit_length() - 1  # leading axes of 2 taken by the fields of a byte
            packed_shape = (1,) * fanout + common[fanout:]
            shift_shape = common[:fanout] + (1,) * (len(common) - fanout)
        packed = self.constant(f"idx{plane.width}", plane.packed.reshape(packed_shape))
        shifts = self.small("shl", left_shifts(plane.width).reshape(shift_shape))
        fields = self.node("BitShift", [packed, shifts], direction="LEFT")
        down = self.small("shr", np.array(8 - plane.width, dtype=np.uint8))
        fields = self.node("BitShift", [fields, down], direction="RIGHT")
        if plane.offset:
            up = self.small("pos", np.array(plane.offset, dtype=np.uint8))
            fields = self.node("BitShift", [fields, up], direction="LEFT")
        if common is not None:
            return fields
        fields = self.node("Reshape", [fields, self.shape([-1])])
        if plane.packed.size * per != count:
            fields = self.node("Slice", [fields, self.shape([0]), self.shape([count])])
        return fields


def _common_shape(planes: list[Plane], count: int) -> tuple[int, ...] | None:
    """(2, ..., 2, count / P), P the most values any plane puts in a byte: every plane unpacks
    to it in value order with no Reshape of its own (a plane with 2**f values per byte fans out
    over the first f axes, its bytes fill the rest). None when a plane is padded."""
    most = max(plane.per_byte for plane in planes)
    if count % most:
        return None
    return (2,) * (most.bit_length() - 1) + (count // most,)
