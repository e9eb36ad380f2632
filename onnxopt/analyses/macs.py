"""Multiply-accumulate counts (MACs) per layer, from static or inferred shapes. Read-only.

Counted (one MAC = one multiply and one add; biases and activations are not counted):
- Conv, ConvInteger, QLinearConv, FusedConv: output elements x (C_in / group) x kernel size;
  grouped and depthwise convolutions follow from the weight's shape [C_out, C_in/group, k...].
- ConvTranspose: input elements x (C_out / group) x kernel size (weight [C_in, C_out/group, k...]).
- Gemm, FusedGemm: M x N x K. MatMul, MatMulInteger, QLinearMatMul, FusedMatMul: output elements
  x K (batch dims broadcast).
Other ops are not counted. A dynamic dim makes a count symbolic (e.g. `300.8M*batch`); `total`
and each layer's `macs` bind every symbol to 1 unless `input_shapes` fixes the inputs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxopt.errors import InputError
from onnxopt.ir.graph import GraphIndex, node_attr
from onnxopt.ir.shapes import Dim, ShapeInfo, declared_dim, infer_shapes
from onnxopt.ir.tensors import iter_graphs

log = logging.getLogger(__name__)

Shape = tuple[Dim, ...]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NON_PARAM_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.STRING, onnx.TensorProto.BOOL}
_WEIGHT_PRODUCERS = {"DequantizeLinear", "Cast", "Identity"}


class Poly:
    """A sum of integer-coefficient monomials in symbolic dims: {sorted symbols: coefficient}."""

    def __init__(self, terms: dict[tuple[str, ...], int] | None = None) -> None:
        self.terms = {k: v for k, v in (terms or {}).items() if v}

    @classmethod
    def product(cls, dims: Shape) -> Poly:
        coefficient, symbols = 1, []
        for dim in dims:
            if isinstance(dim, int):
                coefficient *= dim
            else:
                symbols.append(dim or "?")
        return cls({tuple(sorted(symbols)): coefficient})

    def __add__(self, other: Poly) -> Poly:
        terms = dict(self.terms)
        for key, value in other.terms.items():
            terms[key] = terms.get(key, 0) + value
        return Poly(terms)

    def __mul__(self, other: Poly) -> Poly:
        terms: dict[tuple[str, ...], int] = {}
        for k1, v1 in self.terms.items():
            for k2, v2 in other.terms.items():
                key = tuple(sorted(k1 + k2))
                terms[key] = terms.get(key, 0) + v1 * v2
        return Poly(terms)

    @property
    def symbols(self) -> list[str]:
        return sorted({s for key in self.terms for s in key})

    def value(self, bindings: dict[str, int] | None = None) -> int:
        """The count with each symbol bound (unbound symbols count as 1)."""
        bindings = bindings or {}
        return sum(v * math.prod(bindings.get(s, 1) for s in k) for k, v in self.terms.items())

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for key, value in sorted(self.terms.items(), key=lambda kv: (len(kv[0]), kv[0])):
            factors = [_short(value)]
            for symbol in dict.fromkeys(key):
                name = symbol if _IDENTIFIER.match(symbol) else f"({symbol})"
                power = key.count(symbol)
                factors.append(name if power == 1 else f"{name}^{power}")
            parts.append("*".join(factors))
        return " + ".join(parts)


def _short(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return str(value)


@dataclass
class LayerMacs:
    name: str
    op_type: str
    macs: int
    """Symbols bound to 1 (or to the given input shapes)."""
    expression: str
    """The count with dynamic dims left symbolic, e.g. '1.2M*batch'."""
    params: int
    output_shape: list[Dim] = field(default_factory=list)


@dataclass
class MacsReport:
    total: int
    per_layer: list[LayerMacs]
    expression: str
    symbols: list[str]
    skipped: list[str]
    """Layers of counted op types whose shapes are unknown, and subgraphs not counted."""

    def top(self, count: int = 10) -> list[LayerMacs]:
        return sorted(self.per_layer, key=lambda layer: layer.macs, reverse=True)[:count]

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "expression": self.expression,
            "symbols": self.symbols,
            "per_layer": [asdict(layer) for layer in self.per_layer],
            "skipped": self.skipped,
        }


class _Unknown(Exception):
    """A shape the count needs is not known; the message says which."""


Counter = Callable[[onnx.NodeProto, "_Shapes"], Poly]


class _Shapes:
    def __init__(self, info: ShapeInfo) -> None:
        self.info = info

    def get(self, node: onnx.NodeProto, index: int, *, output: bool = False) -> Shape:
        names = node.output if output else node.input
        name = names[index] if index < len(names) else ""
        shape = self.info.shape(name) if name else None
        if shape is None:
            raise _Unknown(f"shape of '{name or '?'}' unknown")
        return shape


def _conv(weight_index: int) -> Counter:
    def count(node: onnx.NodeProto, shapes: _Shapes) -> Poly:
        weight = shapes.get(node, weight_index)
        return Poly.product(shapes.get(node, 0, output=True)) * Poly.product(weight[1:])

    return count


def _conv_transpose(node: onnx.NodeProto, shapes: _Shapes) -> Poly:
    return Poly.product(shapes.get(node, 0)) * Poly.product(shapes.get(node, 1)[1:])


def _gemm(node: onnx.NodeProto, shapes: _Shapes) -> Poly:
    a, b = shapes.get(node, 0), shapes.get(node, 1)
    if len(a) != 2 or len(b) != 2:
        raise _Unknown("Gemm inputs are not 2-D")
    m, k = (a[1], a[0]) if node_attr(node, "transA", 0) else (a[0], a[1])
    n = b[0] if node_attr(node, "transB", 0) else b[1]
    return Poly.product((m, n, k))


def _matmul(b_index: int) -> Counter:
    def count(node: onnx.NodeProto, shapes: _Shapes) -> Poly:
        a, b = shapes.get(node, 0), shapes.get(node, b_index)
        if not a or not b:
            raise _Unknown("MatMul of a scalar")
        try:
            out = shapes.get(node, 0, output=True)
        except _Unknown:
            out = _matmul_shape(a, b)
        return Poly.product(out) * Poly.product((a[-1],))

    return count


def _matmul_shape(a: Shape, b: Shape) -> Shape:
    batch_a, batch_b = a[:-2], b[:-2] if len(b) > 1 else ()
    width = max(len(batch_a), len(batch_b))
    padded_a = (1,) * (width - len(batch_a)) + tuple(batch_a)
    padded_b = (1,) * (width - len(batch_b)) + tuple(batch_b)
    batch = tuple(y if x == 1 else x for x, y in zip(padded_a, padded_b, strict=True))
    rows = (a[-2],) if len(a) > 1 else ()
    cols = (b[-1],) if len(b) > 1 else ()
    return batch + rows + cols


_COUNTERS: dict[tuple[str, str], Counter] = {
    ("", "Conv"): _conv(1),
    ("", "ConvInteger"): _conv(1),
    ("", "QLinearConv"): _conv(3),
    ("com.microsoft", "FusedConv"): _conv(1),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "Gemm"): _gemm,
    ("com.microsoft", "FusedGemm"): _gemm,
    ("", "MatMul"): _matmul(1),
    ("", "MatMulInteger"): _matmul(1),
    ("", "QLinearMatMul"): _matmul(3),
    ("com.microsoft", "FusedMatMul"): _matmul(1),
}


def _counter(node: onnx.NodeProto) -> Counter | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return _COUNTERS.get((domain, node.op_type))


def count_macs(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> MacsReport:
    """MACs of every Conv/ConvTranspose/Gemm/MatMul-like layer of the main graph, and the total.

    `input_shapes` fixes the inputs' dynamic dims (inference runs on a copy; `model` is not
    modified). Layers whose shapes cannot be inferred are listed in `skipped`.
    """
    work = with_input_shapes(model, input_shapes) if input_shapes else model
    shapes = _Shapes(infer_shapes(work))
    index = GraphIndex(model.graph)
    layers, skipped, total = [], [], Poly()
    for position, node in enumerate(model.graph.node):
        counter = _counter(node)
        if counter is None:
            continue
        name = node.name or f"{node.op_type}_{position}"
        try:
            macs = counter(node, shapes)
        except _Unknown as exc:
            skipped.append(f"{name} ({node.op_type}): {exc}")
            continue
        total = total + macs
        out = shapes.info.shape(node.output[0]) or ()
        params = sum(_param_elements(index, name) for name in node.input if name)
        layers.append(LayerMacs(name, node.op_type, macs.value(), str(macs), params, list(out)))
    skipped.extend(_subgraph_notes(model))
    return MacsReport(total.value(), layers, str(total), total.symbols, skipped)


def with_input_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> onnx.ModelProto:
    """A copy of `model` whose graph inputs have the given static shapes (checked against it)."""
    inputs = {value.name: value for value in model.graph.input}
    initializers = {t.name for t in model.graph.initializer}
    for name, shape in input_shapes.items():
        if name not in inputs or name in initializers:
            feedable = ", ".join(n for n in inputs if n not in initializers)
            raise InputError(f"--shape names '{name}', which is not a model input ({feedable})")
        declared = inputs[name].type.tensor_type.shape.dim
        if declared and (
            len(declared) != len(shape)
            or any(
                isinstance(declared_dim(d), int) and d.dim_value != s
                for d, s in zip(declared, shape, strict=True)
            )
        ):
            sizes = [declared_dim(d) for d in declared]
            dims = "x".join(str(d) if isinstance(d, int) else "?" for d in sizes)
            raise InputError(f"--shape {name}:{'x'.join(map(str, shape))} does not fit [{dims}]")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for value in copy.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in input_shapes[value.name]:
                dims.add().dim_value = size
    for value in copy.graph.output:
        value.type.tensor_type.ClearField("shape")
    return copy


def _param_elements(index: GraphIndex, name: str) -> int:
    """Elements of a constant input (through a DequantizeLinear/Cast/Identity of a constant)."""
    producer = index.producer.get(name)
    if (
        not index.is_constant(name)
        and producer is not None
        and producer.op_type in _WEIGHT_PRODUCERS
        and producer.input
    ):
        name = producer.input[0]
    if not index.is_constant(name):
        return 0
    if name in index.initializers:
        tensor = index.initializers[name]
        return 0 if tensor.data_type in _NON_PARAM_TYPES else math.prod(tensor.dims)
    value = index.constant(name)
    if value is None or value.dtype in (np.int64, np.bool_) or value.dtype.kind in "OSU":
        return 0
    return int(value.size)


def _subgraph_notes(model: onnx.ModelProto) -> list[str]:
    notes = []
    for node in model.graph.node:
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            inner = [n for g in graphs for sub in iter_graphs(g) for n in sub.node if _counter(n)]
            if inner:
                label = node.name or node.op_type
                notes.append(
                    f"{label} ({node.op_type}).{attr.name}: {len(inner)} countable layers "
                    "inside a subgraph are not counted"
                )
    return notes
