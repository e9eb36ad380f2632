"""How much of a model's compute ONNX Runtime runs in int8 kernels.

ORT fuses QDQ groups while optimizing a session; the fused graph is saved through
`SessionOptions.optimized_model_filepath` (at the extended level: the QDQ fusions are done,
the CPU layout rewrites are not) and inspected here. Multiply-accumulates are counted per node
from the shapes inferred on the input model (symbolic dims count as 1):
Conv-like: output elements x weight elements per output channel; MatMul/Gemm-like: output
elements x the reduced dimension.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.ir.shapes import infer_shapes
from onnxopt.runtime.session import make_session, session_options

INT8_KERNELS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QGemm",
        "DynamicQuantizeMatMul",
    }
)
CONV_LIKE = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "ConvTranspose"})
MATMUL_LIKE = frozenset(
    {
        "MatMul",
        "FusedMatMul",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)
GEMM_LIKE = frozenset({"Gemm", "FusedGemm", "QGemm"})
_WEIGHT_SLOT = {"QLinearConv": 3}


@dataclass
class Int8Coverage:
    int8_macs: int
    total_macs: int
    kernels: dict[str, int]  # op type -> count, in ORT's optimized graph
    float_layers: list[str] = field(default_factory=list)  # compute nodes left in float
    dq_to_q: int = 0  # DequantizeLinear nodes feeding a QuantizeLinear (unfused round trips)
    activation_qdq: int = 0  # Q/DQ nodes left on activations (each one runs)
    unknown: list[str] = field(default_factory=list)  # compute nodes whose MACs are unknown

    @property
    def fraction(self) -> float:
        return self.int8_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self) -> dict:
        return {
            "int8_mac_fraction": round(self.fraction, 6),
            "int8_macs": self.int8_macs,
            "total_macs": self.total_macs,
            "kernels": self.kernels,
            "float_layers": self.float_layers,
            "dq_to_q": self.dq_to_q,
            "activation_qdq": self.activation_qdq,
        }


def optimized_graph(model: onnx.ModelProto, provider: str = "cpu") -> onnx.ModelProto:
    """The graph ORT runs after its extended-level fusions (QDQ groups become int8 kernels)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-coverage-") as workdir:
        path = Path(workdir) / "optimized.onnx"
        options = session_options(
            optimization=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            optimized_model_path=str(path),
        )
        make_session(model, provider, options=options)
        return onnx.load(str(path))


def int8_coverage(model: onnx.ModelProto, provider: str = "cpu") -> Int8Coverage:
    """Share of multiply-accumulates that run in int8 kernels once ORT has fused `model`."""
    shapes = infer_shapes(model)
    fused = optimized_graph(model, provider)
    constants = {t.name: tuple(t.dims) for t in fused.graph.initializer}
    coverage = Int8Coverage(
        0, 0, dict(sorted(Counter(n.op_type for n in fused.graph.node).items()))
    )
    for node in fused.graph.node:
        macs = _macs(node, shapes, constants)
        if macs is None:
            if node.op_type in CONV_LIKE | MATMUL_LIKE | GEMM_LIKE:
                coverage.unknown.append(node.name or node.output[0])
            continue
        coverage.total_macs += macs
        if node.op_type in INT8_KERNELS:
            coverage.int8_macs += macs
        else:
            coverage.float_layers.append(node.name or node.output[0])
    _count_qdq(fused.graph, coverage, set(constants))
    return coverage


def _macs(node: onnx.NodeProto, shapes, constants: dict[str, tuple]) -> int | None:
    op = node.op_type
    out = _numel(shapes.shape(node.output[0]))
    if op in CONV_LIKE:
        weight = constants.get(node.input[_WEIGHT_SLOT.get(op, 1)])
        if weight is None:
            return None
        if op == "ConvTranspose":
            source = _numel(shapes.shape(node.input[0]))
            return None if source is None else source * math.prod(weight[1:])
        return None if out is None else out * math.prod(weight[1:])
    if op in MATMUL_LIKE | GEMM_LIKE:
        a = shapes.shape(node.input[0])
        if out is None or not a:
            return None
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        k = a[0] if (op in GEMM_LIKE and trans_a) else a[-1]
        return out * (k if isinstance(k, int) else 1)
    return None


def _numel(shape) -> int | None:
    if shape is None:
        return None
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))


def _count_qdq(graph: onnx.GraphProto, coverage: Int8Coverage, constants: set[str]) -> None:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            coverage.activation_qdq += 1
        elif node.op_type == "DequantizeLinear" and node.input[0] not in constants:
            coverage.activation_qdq += 1
            if any(r.op_type == "QuantizeLinear" for r in readers.get(node.output[0], [])):
                coverage.dq_to_q += 1
