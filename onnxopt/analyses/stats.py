"""Size counters of a model: parameters, stored bytes, nodes."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analyses.macs import count_macs
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.ir.tensors import iter_stored_tensors
from onnxopt.runtime.bench import ModelFacts


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every stored floating-point or integer-quantized tensor larger than a scalar."""
    total = 0
    for tensor in iter_stored_tensors(model):
        elements = int(np.prod(tensor.dims)) if tensor.dims else 1
        if elements > 1 and tensor.data_type not in _NON_PARAM_TYPES:
            total += elements
    return total


_NON_PARAM_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.STRING, onnx.TensorProto.BOOL}


def model_stats(model: onnx.ModelProto) -> dict[str, int]:
    """Params, bytes, nodes and MACs per sample (dynamic dims taken as 1)."""
    return {
        "params": parameter_count(model),
        "bytes": _serialized_bytes(model),
        "nodes": len(model.graph.node),
        "macs": count_macs(model).total,
    }


def bench_facts(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> ModelFacts:
    """Params and MACs of `model` on inputs of `shapes`, for `benchmark_models`."""
    macs = count_macs(model, shapes)
    return ModelFacts(parameter_count(model), macs.total, macs.expression)


def _serialized_bytes(model: onnx.ModelProto) -> int:
    estimate = stored_bytes(model)
    return model.ByteSize() if estimate <= PROTOBUF_SAFE_BYTES else estimate
