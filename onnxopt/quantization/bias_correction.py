"""Empirical bias correction of weight quantization (Nagel et al., "Data-Free Quantization",
section 4.2, empirical variant).

Rounding a layer's weights shifts the mean of its output by (W - W_q) E[x] per output channel,
E[x] being the mean of the layer's input patches. That mean is measured on calibration data with
the layer's actual quantized inputs: the QDQ model runs as ONNX Runtime fuses it (int8 kernels),
with the int8 tensor each corrected Conv/Gemm reads exposed as an extra output (a float input is
exposed as is). A Conv's patch mean follows from its input summed over the batch and, along each
spatial axis, over the rows every kernel offset reads (zero padding adds nothing). Each layer's
own shift is measured with the input it sees, so one pass serves every layer at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.data.feeds import feeds_up_to
from onnxopt.data.sources import DataSource
from onnxopt.ir.graph import GraphIndex, node_attr
from onnxopt.ir.layers import conv_output_size, conv_pads
from onnxopt.runtime.probe import TensorProbe

log = logging.getLogger(__name__)

CORRECTED_OPS = ("Conv", "Gemm")


@dataclass
class Tap:
    """One corrected layer: the tensor read to get its input, its weight error, and the sums
    of its input over the samples seen (per input shape: maps may change size between feeds)."""

    node: onnx.NodeProto
    tensor: str  # exposed tensor: the int8 input before its DequantizeLinear, or the float input
    scale: float = 1.0
    zero_point: int = 0
    error: np.ndarray | None = None  # float weight minus the dequantized weight, weight-shaped
    sums: dict[tuple[int, ...], tuple[np.ndarray, int]] = field(default_factory=dict)

    def add(self, values: np.ndarray) -> None:
        """Add a batch of the exposed tensor: Conv inputs summed over samples, Gemm over rows."""
        if self.node.op_type == "Gemm" and node_attr(self.node, "transA", 0):
            values = values.T
        integer = np.issubdtype(values.dtype, np.integer)
        total = values.sum(axis=0, dtype=np.int32 if integer else np.float64)
        before, count = self.sums.get(total.shape, (0, 0))
        self.sums[total.shape] = (
            before + total.astype(np.int64 if integer else np.float64),
            count + values.shape[0],
        )

    def mean_input(self) -> np.ndarray | None:
        """The mean input row (Gemm) or patch (Conv, as (C, *kernel)), dequantized."""
        totals, positions = [], 0
        for total, count in self.sums.values():
            value = (total - count * self.zero_point) * self.scale
            if self.node.op_type == "Gemm":
                totals.append(value)
                positions += count
            else:
                patch_sum, outputs = conv_patch_sums(value, self.node, self.error.shape[2:])
                totals.append(patch_sum)
                positions += count * outputs
        return sum(totals) / positions if positions else None


def measure_shift(
    quantized: onnx.ModelProto,
    float_model: onnx.ModelProto,
    weights: dict[str, str],
    data: DataSource,
    max_samples: int,
    provider: str,
) -> dict[str, np.ndarray]:
    """Per layer (node name): mean over samples and positions of (float-weight output minus
    quantized-weight output) per output channel."""
    taps = layer_taps(quantized, float_model, weights)
    if not taps:
        return {}
    fetch, dtypes = exposed_types(quantized, taps)
    probe = TensorProbe(quantized, fetch, provider, dtypes=dtypes)
    for values in map(probe.read, feeds_up_to(data, max_samples)):
        for tap in taps:
            tap.add(values[tap.tensor])
    shifts = {}
    for tap in taps:
        mean = tap.mean_input()
        if mean is not None:
            shifts[tap.node.name] = output_shift(tap, mean)
    return shifts


def layer_taps(
    quantized: onnx.ModelProto, float_model: onnx.ModelProto, weights: dict[str, str]
) -> list[Tap]:
    """The layers of `weights` (node -> float weight name) whose weight error is known."""
    index = GraphIndex(quantized.graph)
    source = GraphIndex(float_model.graph)
    taps = []
    for node in quantized.graph.node:
        weight = weights.get(node.name)
        if weight is None or not node.output[0] or node.op_type not in CORRECTED_OPS:
            continue
        float_weight = source.constant(weight)
        used = dequantized_constant(index, node.input[1])
        if float_weight is None or used is None or float_weight.shape != used.shape:
            continue
        tap = Tap(node, node.input[0], error=float_weight.astype(np.float64) - used)
        producer = index.producer.get(node.input[0])
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale = index.constant(producer.input[1])
            zero = index.constant(producer.input[2]) if len(producer.input) > 2 else np.zeros(1)
            if scale is not None and zero is not None and scale.size == zero.size == 1:
                tap.tensor = producer.input[0]
                tap.scale, tap.zero_point = float(scale.reshape(())), int(zero.reshape(()))
        taps.append(tap)
    return taps


def dequantized_constant(index: GraphIndex, name: str) -> np.ndarray | None:
    """The float64 value of a constant, or of a DequantizeLinear of constants; else None."""
    value = index.constant(name)
    if value is not None:
        return value.astype(np.float64)
    node = index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    codes, scale = index.constant(node.input[0]), index.constant(node.input[1])
    zero = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
    if codes is None or scale is None or zero is None:
        return None
    shape = [1] * codes.ndim
    if np.ndim(scale) == 1 and codes.ndim:
        shape[int(node_attr(node, "axis", 1)) % codes.ndim] = -1
    offsets = np.asarray(zero, np.float64).reshape(shape if np.ndim(zero) else ())
    return (codes.astype(np.float64) - offsets) * np.asarray(scale, np.float64).reshape(shape)


def exposed_types(model: onnx.ModelProto, taps: list[Tap]) -> tuple[list[str], dict[str, int]]:
    """The tensors to read for `taps`, and their element types (a QuantizeLinear output: its
    zero point's type; an initializer: its own; else float)."""
    elem_types = {t.name: t.data_type for t in model.graph.initializer}
    index = GraphIndex(model.graph)
    fetch, dtypes = [], {}
    for tap in taps:
        if tap.tensor in fetch:
            continue
        fetch.append(tap.tensor)
        elem_type = elem_types.get(tap.tensor, onnx.TensorProto.FLOAT)
        producer = index.producer.get(tap.tensor)
        if producer is not None and producer.op_type == "QuantizeLinear":
            zero_point = producer.input[2] if len(producer.input) > 2 else ""
            elem_type = elem_types.get(zero_point, onnx.TensorProto.UINT8)
        dtypes[tap.tensor] = elem_type
    return fetch, dtypes


def conv_patch_sums(
    summed: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, ...]
) -> tuple[np.ndarray, int]:
    """(sum over output positions of each input patch, as (C, *kernel); output positions per
    sample) from a Conv's input summed over samples, `summed` (C, *spatial)."""
    sizes = summed.shape[1:]
    strides = node_attr(node, "strides", None) or [1] * len(kernel)
    dilations = node_attr(node, "dilations", None) or [1] * len(kernel)
    pads = conv_pads(node, sizes, kernel, strides, dilations)
    positions = 1
    for axis, size in enumerate(sizes):
        reads, outputs = offset_reads(
            size, kernel[axis], strides[axis], dilations[axis], pads[axis], pads[axis + len(sizes)]
        )
        summed = np.tensordot(summed, reads, axes=([1], [1]))  # this axis -> kernel axis, last
        positions *= outputs
    return summed, positions


def offset_reads(size, kernel, stride, dilation, before, after) -> tuple[np.ndarray, int]:
    """(matrix (kernel, size): how often kernel offset k reads input position i, output size)."""
    outputs = conv_output_size(size, before, after, kernel, stride, dilation)
    index = np.arange(outputs)[None] * stride + np.arange(kernel)[:, None] * dilation - before
    reads = np.zeros((kernel, size))
    for k in range(kernel):
        reads[k, index[k][(index[k] >= 0) & (index[k] < size)]] = 1.0  # distinct: stride >= 1
    return reads, outputs


def output_shift(tap: Tap, mean: np.ndarray) -> np.ndarray:
    """(W - W_q) applied to the mean input row/patch: the per-channel output shift."""
    node, error = tap.node, tap.error
    if node.op_type == "Gemm":
        matrix = error.T if node_attr(node, "transB", 0) else error
        return float(node_attr(node, "alpha", 1.0)) * (mean @ matrix)
    groups = int(node_attr(node, "group", 1))
    out_channels = error.shape[0]
    error = error.reshape(groups, out_channels // groups, -1)
    mean = mean.reshape(groups, -1)
    return np.einsum("gok,gk->go", error, mean).reshape(out_channels)
