"""Shape inference with symbolic dims: onnx's (with data propagation), then ORT's symbolic
inference when onnx's leaves tensors without a shape. The result says which tensors stay unknown.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from dataclasses import dataclass, field

import onnx

from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.ir.limits import check_stored_size, check_value_sizes
from onnxopt.ir.tensors import iter_stored_tensors

log = logging.getLogger(__name__)

Dim = int | str | None  # int: static, str: symbolic name, None: unknown


@dataclass
class ShapeInfo:
    """Inferred element types and shapes of every tensor in the main graph."""

    shapes: dict[str, tuple[Dim, ...] | None] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    engine: str = "onnx"
    errors: list[str] = field(default_factory=list)

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return shape  # type: ignore[return-value]


def infer_shapes(model: onnx.ModelProto) -> ShapeInfo:
    """Infer shapes without modifying `model`; errors of each engine are kept, not swallowed."""
    errors: list[str] = []
    best = _run_onnx(model, errors)
    if best is not None and not best.unknown:
        return best
    symbolic = _run_symbolic(model, errors)
    candidates = [c for c in (best, symbolic) if c is not None]
    if not candidates:
        info = ShapeInfo(errors=errors)
        info.unknown = _all_value_names(model)
        return info
    chosen = min(candidates, key=lambda info: len(info.unknown))
    chosen.errors = errors
    return chosen


def infer_shapes_at(model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]]) -> ShapeInfo:
    """`infer_shapes` with the graph inputs named in `inputs` set to those static shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in inputs and value.type.WhichOneof("value") == "tensor_type":
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in inputs[value.name]:
                shape.dim.add().dim_value = int(size)
    return infer_shapes(fixed)


def check_tensor_sizes(model: onnx.ModelProto, budget: int | None = None) -> None:
    """InputError when a stored tensor's bytes disagree with its dims, or a tensor with a static
    shape (a graph input or output, or what ConstantOfShape/Expand/Tile make from constants)
    cannot fit in memory. Models over 2 GB get their declared inputs and outputs checked only."""
    for tensor in iter_stored_tensors(model):
        check_stored_size(tensor)
    if stored_bytes(model) > PROTOBUF_SAFE_BYTES:
        info = _collect(model, "declared")
    else:
        info = infer_shapes(model)
    check_value_sizes(info.shapes, info.dtypes, budget)


def _run_onnx(model: onnx.ModelProto, errors: list[str]) -> ShapeInfo | None:
    if stored_bytes(model) > PROTOBUF_SAFE_BYTES:
        errors.append("onnx: model over 2 GB, in-memory inference skipped")
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several unrelated types here
        errors.append(f"onnx: {type(exc).__name__}: {exc}")
        return None
    return _collect(inferred, "onnx")


def _run_symbolic(model: onnx.ModelProto, errors: list[str]) -> ShapeInfo | None:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        # On incomplete inference the tool saves a model into the current directory before
        # raising; keep that out of the user's folder.
        with (
            tempfile.TemporaryDirectory(prefix="onnxopt-shapes-") as scratch,
            contextlib.chdir(scratch),
        ):
            inferred = SymbolicShapeInference.infer_shapes(copy.deepcopy(model), auto_merge=True)
    except Exception as exc:  # the tool raises bare Exceptions for unsupported ops
        errors.append(f"ort-symbolic: {type(exc).__name__}: {exc}")
        return None
    if inferred is None:
        errors.append("ort-symbolic: gave up")
        return None
    return _collect(inferred, "ort-symbolic")


def _collect(model: onnx.ModelProto, engine: str) -> ShapeInfo:
    info = ShapeInfo(engine=engine)
    graph = model.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type:
            info.dtypes[value.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            info.shapes[value.name] = tuple(declared_dim(d) for d in tensor_type.shape.dim)
    for init in graph.initializer:
        info.shapes[init.name] = tuple(init.dims)
        info.dtypes[init.name] = init.data_type
    info.unknown = [name for name in _all_value_names(model) if name not in info.shapes]
    return info


UNKNOWN_SYMBOLS = frozenset({"?"})
"""Symbols that exporters write for "unknown", not as a name: two dims of one such symbol are
not bound to one size (Paddle2ONNX gives a classifier's height and width both '?')."""


def declared_dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    """A declared dim: its size, its symbol, or None for unknown. A negative size (Paddle2ONNX
    writes -1 for a dynamic dim, and ONNX Runtime reads it so) and an unknown-marker symbol
    are None."""
    if dim.HasField("dim_value"):
        return dim.dim_value if dim.dim_value >= 0 else None
    if dim.HasField("dim_param") and dim.dim_param not in UNKNOWN_SYMBOLS:
        return dim.dim_param or None
    return None


def _all_value_names(model: onnx.ModelProto) -> list[str]:
    return [name for node in model.graph.node for name in node.output if name]
