"""What `onnxopt inspect` reports about a model. Read-only.

Inputs/outputs (dtype, shape with symbolic dims), IR version, opsets and the domains nodes use,
an op-type histogram (subgraph nodes included), parameters and their bytes, MACs per layer and
total (see `analyses.macs`), the subgraphs present, and the external-data files.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxopt.analyses.macs import MacsReport, count_macs
from onnxopt.analyses.stats import parameter_count
from onnxopt.ir.shapes import Dim, declared_dim
from onnxopt.ir.tensors import iter_graphs, iter_stored_tensors

log = logging.getLogger(__name__)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[Dim] | None
    """None when the model declares no shape; a str dim is symbolic, None unknown."""

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype}[?]"
        return f"{self.dtype}[{','.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass
class SubgraphInfo:
    node: str
    op_type: str
    attribute: str
    nodes: int


@dataclass
class ModelSummary:
    path: str | None
    file_bytes: int | None
    ir_version: int
    producer: str
    opsets: dict[str, int]
    domains: dict[str, int]
    """Nodes per domain ('' is the default ONNX domain)."""
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    """Nodes in the main graph."""
    op_histogram: dict[str, int]
    """Nodes per op type in all graphs ('domain:Op' outside the ONNX domain), most first."""
    params: int
    tensor_bytes: int
    """Bytes of every stored tensor (initializers and constants, parameters or not)."""
    macs: MacsReport
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    subgraphs: list[SubgraphInfo] = field(default_factory=list)
    external_data: dict[str, int] = field(default_factory=dict)
    """External-data file name -> size in bytes."""

    def to_dict(self) -> dict:
        values = asdict(self)
        values["macs"] = self.macs.to_dict()
        return values


def summarize(
    model: onnx.ModelProto,
    *,
    path: str | Path | None = None,
    external_files: list[Path] | tuple[Path, ...] = (),
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> ModelSummary:
    """Summarize `model` (not modified); `input_shapes` fixes dynamic input dims for the MACs."""
    graphs = list(iter_graphs(model.graph))
    histogram = Counter(_op_key(node) for graph in graphs for node in graph.node)
    domains = Counter(node.domain or "" for graph in graphs for node in graph.node)
    file_path = Path(path) if path else None
    return ModelSummary(
        path=str(file_path) if file_path else None,
        file_bytes=file_path.stat().st_size if file_path and file_path.is_file() else None,
        ir_version=model.ir_version,
        producer=" ".join(filter(None, (model.producer_name, model.producer_version))),
        opsets={entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        domains=dict(domains.most_common()),
        inputs=_value_infos(model.graph.input, {t.name for t in model.graph.initializer}),
        outputs=_value_infos(model.graph.output, set()),
        nodes=len(model.graph.node),
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        params=parameter_count(model),
        tensor_bytes=sum(_tensor_bytes(t) for t in iter_stored_tensors(model)),
        macs=count_macs(model, input_shapes),
        input_shapes={k: list(v) for k, v in (input_shapes or {}).items()},
        subgraphs=_subgraphs(model.graph),
        external_data={p.name: p.stat().st_size for p in external_files},
    )


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _value_infos(values, skip: set[str]) -> list[TensorInfo]:
    infos = []
    for value in values:
        if value.name in skip:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            infos.append(TensorInfo(value.name, kind or "unknown", None))
            continue
        tensor_type = value.type.tensor_type
        dtype = _dtype_name(tensor_type.elem_type)
        shape = None
        if tensor_type.HasField("shape"):
            shape = [declared_dim(d) for d in tensor_type.shape.dim]
        infos.append(TensorInfo(value.name, dtype, shape))
    return infos


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        return int(info.get("length", 0) or 0)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return tensor.ByteSize()
    elements = int(np.prod(tensor.dims)) if tensor.dims else 1
    return elements * itemsize if tensor.data_type != onnx.TensorProto.STRING else tensor.ByteSize()


def _subgraphs(graph: onnx.GraphProto) -> list[SubgraphInfo]:
    found = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                bodies = [attr.g]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                bodies = list(attr.graphs)
            else:
                continue
            for body in bodies:
                count = sum(len(g.node) for g in iter_graphs(body))
                found.append(
                    SubgraphInfo(node.name or node.op_type, node.op_type, attr.name, count)
                )
                found.extend(_subgraphs(body))
    return found
