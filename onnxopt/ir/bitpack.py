"""Codebook indices packed into bytes, decodable with standard ONNX ops.

An index of `bits` bits is split into planes of 4, 2 or 1 bits (8 bits: one plain byte), e.g.
7 = 4 + 2 + 1, so every index costs exactly `bits` bits on disk. A plane of width w holds
8 / w values per byte in planar order: with n bytes, field j of byte i (fields counted from the
most significant bits) is value j * n + i. The decoder unpacks a whole plane with two
BitShifts, (1, n) << (8 / w, 1) then >> 8 - w, whose shift amounts broadcast along the leading
axis: ONNX Runtime folds them as long loops over the bytes (an interleaved order broadcasts over
runs of 8 / w values and folds several times slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANE_WIDTHS = {8: (8,), 7: (4, 2, 1), 6: (4, 2), 5: (4, 1), 4: (4,), 3: (2, 1), 2: (2,), 1: (1,)}


@dataclass(frozen=True)
class Plane:
    width: int  # bits per value in this plane
    offset: int  # the plane holds bits [offset, offset + width) of each index
    packed: np.ndarray  # uint8 (bytes,)

    @property
    def per_byte(self) -> int:
        return 8 // self.width


def pack(indices: np.ndarray, bits: int) -> list[Plane]:
    """Planes holding the flattened `indices` (each in [0, 2**bits))."""
    flat = np.asarray(indices).reshape(-1).astype(np.uint16)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"index {int(flat.max())} does not fit in {bits} bits")
    planes, offset = [], 0
    for width in PLANE_WIDTHS[bits]:
        values = ((flat >> offset) & ((1 << width) - 1)).astype(np.uint8)
        planes.append(Plane(width, offset, _pack_plane(values, width)))
        offset += width
    return planes


def unpack(planes: list[Plane], count: int) -> np.ndarray:
    """The first `count` indices (int64), as the ONNX decoder computes them."""
    total = np.zeros(count, dtype=np.int64)
    for plane in planes:
        total += _unpack_plane(plane, count).astype(np.int64) << plane.offset
    return total


def packed_bytes(count: int, bits: int) -> int:
    return sum(-(-count // (8 // width)) for width in PLANE_WIDTHS[bits])


def left_shifts(width: int) -> np.ndarray:
    """uint8 (8 / width,): the left shift that brings each field of a byte to its top bits."""
    return (np.arange(8 // width) * width).astype(np.uint8)


def _pack_plane(values: np.ndarray, width: int) -> np.ndarray:
    if width == 8:
        return values
    per = 8 // width
    fields = np.zeros(per * -(-values.size // per), dtype=np.uint8)
    fields[: values.size] = values
    rows = fields.reshape(per, -1).astype(np.uint16)
    top = (8 - width - left_shifts(width)).astype(np.uint16)
    return (rows << top[:, None]).sum(axis=0).astype(np.uint8)


def _unpack_plane(plane: Plane, count: int) -> np.ndarray:
    if plane.width == 8:
        return plane.packed[:count]
    shifted = (plane.packed[None, :] << left_shifts(plane.width)[:, None]).astype(np.uint8)
    return (shifted >> (8 - plane.width)).reshape(-1)[:count]
