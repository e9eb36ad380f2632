"""Second moments of each weighted layer's input patches on calibration data.

For a layer y = W x, the output error of a weight perturbation D is E||D x||^2 = tr(D H D^T)
with H = E[x x^T] over the layer's input patches: GPTQ rounding and data-aware weight sharing
both minimize it. Depthwise convolutions have one small H (k*k x k*k) per channel; other Conv
layers use im2col patches (group 1 only), Gemm/MatMul their input rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.data.sources import DataSource
from onnxopt.ir.graph import GraphIndex, node_attr
from onnxopt.ir.layers import conv_output_size, conv_windows
from onnxopt.runtime.probe import TensorProbe


@dataclass
class LayerInput:
    """How to turn a layer's input tensor into the patches its weight columns multiply."""

    node: str
    op_type: str
    tensor: str
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    depthwise: bool = False


def layer_input(node: onnx.NodeProto, weight: np.ndarray) -> LayerInput | None:
    """The patch geometry of a Conv (group 1 or depthwise, 2-D), Gemm or MatMul; else None."""
    if node.op_type in ("Gemm", "MatMul"):
        if node.op_type == "Gemm" and node_attr(node, "transA", 0):
            return None
        return LayerInput(node.name, node.op_type, node.input[0])
    if node.op_type != "Conv" or weight.ndim != 4:
        return None
    group = int(node_attr(node, "group", 1))
    depthwise = group > 1 and weight.shape[1] == 1
    if group > 1 and not depthwise:
        return None
    if node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kernel = tuple(weight.shape[2:])
    return LayerInput(
        node.name,
        "Conv",
        node.input[0],
        kernel,
        tuple(node_attr(node, "strides", [1, 1])),
        tuple(node_attr(node, "pads", [0, 0, 0, 0])),
        tuple(node_attr(node, "dilations", [1, 1])),
        depthwise,
    )


MAX_POSITIONS = 8192
"""Input positions per batch that enter H: larger maps are subsampled with a fixed stride."""
CHANNEL_CHUNK = 64
"""Depthwise patches are built this many channels at a time (bounds their memory)."""


@dataclass(frozen=True)
class RowBudget:
    """How many input rows (patches) of a layer enter H: `rows_per_column` times the layer's
    columns (inputs of one output), at least `min_rows`, spread evenly over `samples` samples.
    A layer with fewer rows per sample uses them all."""

    samples: int
    rows_per_column: int = 128
    min_rows: int = 2048

    def per_sample(self, columns: int) -> int:
        wanted = max(self.min_rows, self.rows_per_column * columns)
        return max(1, -(-wanted // max(self.samples, 1)))


def layer_columns(layer: LayerInput, shape: tuple[int, ...]) -> int:
    """Columns of the layer's weight matrix (the length of one input row) for an input `shape`."""
    if layer.op_type != "Conv":
        return shape[-1]
    kernel = int(np.prod(layer.kernel))
    return kernel if layer.depthwise else shape[1] * kernel


def patches(x: np.ndarray, layer: LayerInput, step: int = 1) -> np.ndarray:
    """Conv input (N, C, H, W) -> (C, k*k, positions) float32; columns ordered as the weight's.
    Every `step`-th output row and column is taken."""
    _, left, _, right = layer.pads
    (kh, kw), (sh, sw), dw = layer.kernel, layer.strides, layer.dilations[1]
    n, c = x.shape[:2]
    taps = _row_taps(x.shape, layer, step)
    if taps.size < x.shape[2]:
        # Few rows read (sparse sampling of a large map): copy only those, one per kernel row;
        # padding the whole map first cost 18 ms per batch on MobileNetV2's 112x112 depthwise
        # input, of which 16 positions per sample were kept.
        rows = np.take(x, np.clip(taps, 0, x.shape[2] - 1), axis=2)
        rows[:, :, (taps < 0) | (taps >= x.shape[2])] = 0
        windows = conv_windows(rows, (0, left, 0, right), (1, kw), (1, dw))
        windows = windows[:, :, :, :: sw * step, 0]  # N, C, sampled rows * kh, Wo, kw
        windows = windows.reshape(n, c, -1, kh, *windows.shape[3:]).transpose(0, 1, 2, 4, 3, 5)
    else:
        windows = conv_windows(x, layer.pads, layer.kernel, layer.dilations)
        windows = windows[:, :, :: sh * step, :: sw * step]
    # windows: N, C, Ho, Wo, kh, kw
    return np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3), np.float32).reshape(
        c, kh * kw, -1
    )


def _row_taps(shape: tuple[int, ...], layer: LayerInput, step: int) -> np.ndarray:
    """Input row (before padding is applied: may be < 0 or >= H) read by each kernel row of every
    `step`-th output row, output row major."""
    height, _ = _output_grid(shape, layer)
    first = np.arange(0, height, step)[:, None] * layer.strides[0] - layer.pads[0]
    return (first + np.arange(layer.kernel[0])[None] * layer.dilations[0]).reshape(-1)


def _position_step(positions: int, grid: tuple[int, int] = (1, 1), per_sample: int | None = None):
    """Spatial stride: the smallest one keeping a batch's `positions` under MAX_POSITIONS, raised
    while every sample's output `grid` still gives at least `per_sample` positions."""
    step = 1
    while positions // (step * step) > MAX_POSITIONS:
        step += 1
    if per_sample is not None:
        height, width = grid
        while -(-height // (step + 1)) * -(-width // (step + 1)) >= per_sample:
            step += 1
    return step


def accumulate(
    h: np.ndarray | None, x: np.ndarray, layer: LayerInput, budget: RowBudget | None = None
) -> np.ndarray:
    """Add one batch's input second moments (sum of x x^T over positions) to `h` (float64, added
    in place). `budget` subsamples positions (rows) evenly; without it, only large maps are."""
    x = np.asarray(x, dtype=np.float32)
    per_sample = None if budget is None else budget.per_sample(layer_columns(layer, x.shape))
    if layer.op_type != "Conv":
        rows = x.reshape(-1, x.shape[-1])
        rows = rows[:: _row_step(rows.shape[0], max(x.shape[0], 1), per_sample)]
        update = rows.T @ rows
    elif layer.depthwise:
        step = _conv_step(x.shape, layer, per_sample)
        parts = []
        for start in range(0, x.shape[1], CHANNEL_CHUNK):
            p = patches(x[:, start : start + CHANNEL_CHUNK], layer, step)
            parts.append(np.matmul(p, p.transpose(0, 2, 1)))
        update = np.concatenate(parts)
    elif layer.kernel == (1, 1) and layer.strides == (1, 1) and not any(layer.pads):
        step = _conv_step(x.shape, layer, per_sample)
        rows = np.moveaxis(x[:, :, ::step, ::step], 1, -1).reshape(-1, x.shape[1])
        update = rows.T @ rows
    else:
        p = patches(x, layer, _conv_step(x.shape, layer, per_sample))
        rows = p.reshape(-1, p.shape[-1])
        update = rows @ rows.T
    if h is None:
        return update.astype(np.float64)
    h += update
    return h


def _conv_step(shape: tuple[int, ...], layer: LayerInput, per_sample: int | None) -> int:
    grid = _output_grid(shape, layer)
    return _position_step(shape[0] * grid[0] * grid[1], grid, per_sample)


def _output_grid(shape: tuple[int, ...], layer: LayerInput) -> tuple[int, int]:
    top, left, bottom, right = layer.pads or (0, 0, 0, 0)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    return (
        conv_output_size(shape[2], top, bottom, kh, sh, dh),
        conv_output_size(shape[3], left, right, kw, sw, dw),
    )


def _row_step(rows: int, samples: int, per_sample: int | None) -> int:
    if per_sample is None:
        return 1
    return max(1, rows // samples // per_sample)


@dataclass
class Moments:
    h: np.ndarray  # sum of x x^T over the rows seen
    rows: int  # input rows (patches) that entered h


def input_hessians(
    model: onnx.ModelProto,
    layers: list[LayerInput],
    data: DataSource,
    max_samples: int,
    provider: str,
) -> dict[str, Moments]:
    """Per layer (node name): the sum over calibration samples of its input patches' x x^T."""
    tensors = sorted({layer.tensor for layer in layers})
    moments: dict[str, Moments] = {}
    probe = TensorProbe(model, tensors, provider)
    for batch, _ in probe.stream(data, max_samples):
        for layer in (entry for entry in layers if entry.tensor in batch):
            x = batch[layer.tensor]
            seen = moments.get(layer.node)
            h = accumulate(None if seen is None else seen.h, x, layer)
            rows = (0 if seen is None else seen.rows) + patch_rows(x.shape, layer)
            moments[layer.node] = Moments(h, rows)
    return moments


def patch_rows(shape: tuple[int, ...], layer: LayerInput, budget: RowBudget | None = None) -> int:
    """How many input rows (patches) `accumulate` takes from a batch of this shape."""
    per_sample = None if budget is None else budget.per_sample(layer_columns(layer, shape))
    if layer.op_type != "Conv":
        rows = int(np.prod(shape[:-1]))
        return -(-rows // _row_step(rows, max(shape[0], 1), per_sample))
    height, width = _output_grid(shape, layer)
    step = _conv_step(shape, layer, per_sample)
    return shape[0] * -(-height // step) * -(-width // step)


def layer_matrix(weight: np.ndarray, op_type: str, trans_b: bool) -> np.ndarray:
    """The weight as (output channels, input columns) in the order of `accumulate`'s x."""
    if op_type == "Conv":
        return weight.reshape(weight.shape[0], -1)
    if op_type == "Gemm" and trans_b:
        return weight
    return weight.T


def from_layer_matrix(q: np.ndarray, op_type: str, trans_b: bool, shape) -> np.ndarray:
    if op_type == "Conv":
        return q.reshape(shape)
    if op_type == "Gemm" and trans_b:
        return q
    return np.ascontiguousarray(q.T)


def collect_layers(model: onnx.ModelProto, names: list[str]) -> list[LayerInput]:
    index = GraphIndex(model.graph)
    wanted = set(names)
    layers = []
    for node in model.graph.node:
        if node.name in wanted:
            weight = index.constant(node.input[1])
            layer = None if weight is None else layer_input(node, weight)
            if layer is not None:
                layers.append(layer)
    return layers
