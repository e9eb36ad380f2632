"""Empirical bias correction of weight quantization (Nagel et al., "Data-Free Quantization",
section 4.2, empirical variant).

Rounding a layer's weights shifts the mean of its output: E[(W - W_q) x] per output channel.
The shift is measured on calibration data with the layer's actual quantized inputs: each
corrected Conv/Gemm of the (unfused) QDQ model gets a twin that reads the same dequantized input
with the float weights, and the mean difference of the two outputs per channel (axis 1) is the
correction added to the layer's bias. Each layer's own shift is measured, not the shift
accumulated from earlier layers, so one pass serves every layer at once.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.data import DataSource
from onnxopt.ir.graph import GraphIndex, Names
from onnxopt.runtime import make_session, session_options

log = logging.getLogger(__name__)

CORRECTED_OPS = ("Conv", "Gemm")


def with_float_twins(
    quantized: onnx.ModelProto, float_model: onnx.ModelProto, weights: dict[str, str]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """A copy of `quantized` where each layer in `weights` (node -> float weight name) has a twin
    using the float weight; returns it and node -> (quantized output, twin output)."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    names = Names(graph)
    source = GraphIndex(float_model.graph)
    present = {t.name for t in graph.initializer}
    pairs = {}
    for node in list(graph.node):
        weight = weights.get(node.name)
        if weight is None or not node.output[0]:
            continue
        if weight not in present:
            graph.initializer.append(onnx.numpy_helper.from_array(source.constant(weight), weight))
            present.add(weight)
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        twin.name = names.fresh(f"{node.name}_float_twin")
        twin.input[1] = weight
        twin.output[0] = names.fresh(f"{node.output[0]}_float_twin")
        graph.node.append(twin)
        pairs[node.name] = (node.output[0], twin.output[0])
        for name in pairs[node.name]:
            graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return model, pairs


def measure_shift(
    quantized: onnx.ModelProto,
    float_model: onnx.ModelProto,
    weights: dict[str, str],
    data: DataSource,
    max_samples: int,
) -> dict[str, np.ndarray]:
    """Per layer (node name): mean over samples and positions of (float-weight output minus
    quantized-weight output) per output channel."""
    model, pairs = with_float_twins(quantized, float_model, weights)
    if not pairs:
        return {}
    options = session_options(optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = make_session(model, options=options)
    layers = sorted(pairs)
    fetch = [name for layer in layers for name in pairs[layer]]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    samples = 0
    for feed in data:
        values = session.run(fetch, feed)
        for i, layer in enumerate(layers):
            got, reference = values[2 * i], values[2 * i + 1]
            diff = np.asarray(reference, np.float64) - np.asarray(got, np.float64)
            axes = tuple(a for a in range(diff.ndim) if a != 1)
            sums[layer] = sums.get(layer, 0.0) + diff.sum(axis=axes)
            counts[layer] = counts.get(layer, 0) + diff.size // diff.shape[1]
        del values
        samples += int(next(iter(feed.values())).shape[0])
        if samples >= max_samples:
            break
    return {layer: sums[layer] / max(counts[layer], 1) for layer in sums}
