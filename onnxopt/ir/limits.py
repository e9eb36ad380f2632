"""Sizes an untrusted model declares, checked before anything of that size is allocated.

A model is a few bytes of protobuf that can declare a tensor of 2^40 elements: an initializer
whose dims disagree with its bytes, external data in a sparse file, a graph input, or a node
output whose shape follows from constants (ConstantOfShape, Expand, Tile). Every check raises
one InputError line naming the tensor; nothing is read or allocated first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxopt.errors import InputError
from onnxopt.units import human_bytes

# Element widths of the sub-byte types, which pack several elements into one byte.
_SUB_BYTE_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, name)
}


def memory_budget() -> int:
    """Bytes this process can hold at most: physical memory, lowered by an address-space limit."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        import resource
    except ImportError:  # not on POSIX
        return budget
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return budget if soft == resource.RLIM_INFINITY else min(budget, soft)


def tensor_bytes(data_type: int, dims: Iterable[int]) -> int | None:
    """Bytes of a tensor of `data_type` and shape `dims`; None for strings or an unknown type."""
    elements = math.prod(int(d) for d in dims)
    if data_type in _SUB_BYTE_BITS:
        return (elements * _SUB_BYTE_BITS[data_type] + 7) // 8
    if data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return elements * itemsize


def check_fits(name: str, what: str, dims: Iterable[int], data_type: int, budget: int) -> None:
    """InputError when a tensor of these dims and type cannot be held in `budget` bytes."""
    dims = [int(d) for d in dims]
    if any(d < 0 for d in dims):
        return  # not a size: shape inference left a marker, or the checker reports it
    size = tensor_bytes(data_type, dims)
    if size is not None and size > budget:
        raise InputError(
            f"{what} '{name}' of shape {dims} needs {human_bytes(size)}, more than the "
            f"{human_bytes(budget)} of memory available: refusing to run it"
        )


def check_stored_size(tensor: onnx.TensorProto) -> None:
    """InputError when an inline tensor's bytes disagree with its dims (a dims bomb)."""
    if tensor.data_location == TensorProto.EXTERNAL or not tensor.raw_data:
        return
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"tensor '{tensor.name}' has a negative dim: {list(tensor.dims)}")
    needed = tensor_bytes(tensor.data_type, tensor.dims)
    if needed is not None and needed != len(tensor.raw_data):
        raise InputError(
            f"tensor '{tensor.name}' of shape {list(tensor.dims)} needs "
            f"{human_bytes(needed)} but stores {human_bytes(len(tensor.raw_data))}"
        )


def check_value_sizes(
    shapes: dict[str, tuple], dtypes: dict[str, int], budget: int | None = None
) -> None:
    """InputError when an inferred static shape (input, output, intermediate) cannot fit."""
    budget = memory_budget() if budget is None else budget
    for name, shape in shapes.items():
        if shape is None or not all(isinstance(d, int) for d in shape):
            continue
        # An unknown element type counts as one byte per element: a lower bound.
        check_fits(name, "tensor", shape, dtypes.get(name, TensorProto.UINT8), budget)
